"""Group commit's hand-over between request threads (store/group_commit.py), on a real SQLite database.

The sharing itself is tested on every backend in tests/integration/test_store.py; here: a stuck leader, the
followers that give up on it, and that the lead still passes on afterwards (no thread left waiting for ever).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from appliance.store.errors import StoreUnavailable
from appliance.store.group_commit import GroupCommit


class Database:
    def __init__(self, path: Path) -> None:
        self.engine = sa.create_engine(f"sqlite:///{path}")
        with self.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE t (v INTEGER PRIMARY KEY)")
        self.commits = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    @contextmanager
    def write(self, _what: str) -> Iterator[Connection]:
        self.entered.set()
        self.gate.wait()
        with self.engine.begin() as conn:
            yield conn
        self.commits += 1

    def values(self) -> set[int]:
        with self.engine.connect() as conn:
            return {v for (v,) in conn.exec_driver_sql("SELECT v FROM t")}


def insert(v: int) -> Any:
    return lambda conn: conn.execute(sa.text("INSERT INTO t (v) VALUES (:v)"), {"v": v}).rowcount


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "t.db")
    yield d
    d.engine.dispose()


def group(db: Database) -> GroupCommit:
    return GroupCommit(db.write, lambda exc, what: StoreUnavailable(f"{what}: {exc}"), timeout=1)


def test_a_lone_write_commits_in_its_own_thread(db: Database) -> None:
    gc = group(db)
    seen: list[str] = []
    original = db.write

    @contextmanager
    def write(what: str) -> Iterator[Connection]:
        seen.append(threading.current_thread().name)
        with original(what) as conn:
            yield conn

    gc._write = write  # type: ignore[method-assign]
    assert gc.run("one", insert(1)) == 1
    assert seen == [threading.current_thread().name] and db.values() == {1}


def test_writes_queued_behind_a_commit_share_the_next_one(db: Database) -> None:
    gc = group(db)
    db.gate.clear()
    first = threading.Thread(target=gc.run, args=("first", insert(0)))
    first.start()
    assert db.entered.wait(5)
    results: dict[int, object] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, gc.run("w", insert(i))))
               for i in range(1, 9)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while len(gc._queue) < 8 and time.monotonic() < deadline:
        time.sleep(0.005)
    db.gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert results == {i: 1 for i in range(1, 9)} and db.values() == set(range(9))
    assert db.commits == 2  # the leader's own, then one for the eight that queued behind it


def test_a_failing_write_fails_alone_in_a_shared_commit(db: Database) -> None:
    gc = group(db)
    gc.run("seed", insert(5))
    db.gate.clear()
    first = threading.Thread(target=gc.run, args=("first", insert(100)))
    first.start()
    assert db.entered.wait(5)
    outcomes: dict[int, str] = {}

    def go(v: int) -> None:
        try:
            gc.run("w", insert(v))
            outcomes[v] = "ok"
        except StoreUnavailable as exc:
            outcomes[v] = str(exc)

    threads = [threading.Thread(target=go, args=(v,)) for v in (4, 5, 6)]  # 5 is taken
    for t in threads:
        t.start()
    while len(gc._queue) < 3:
        time.sleep(0.005)
    db.gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert outcomes[4] == outcomes[6] == "ok" and "UNIQUE constraint failed" in outcomes[5]
    assert db.values() == {4, 5, 6, 100}


def test_followers_of_a_stuck_leader_give_up_and_the_lead_passes_on_afterwards(db: Database) -> None:
    gc = group(db)
    gc.wait_limit = 0.3
    db.gate.clear()
    leader = threading.Thread(target=gc.run, args=("stuck", insert(1)))
    leader.start()
    assert db.entered.wait(5)
    errors: list[str] = []

    def follow(v: int) -> None:
        try:
            gc.run("waiting", insert(v))
        except StoreUnavailable as exc:
            errors.append(str(exc))

    followers = [threading.Thread(target=follow, args=(v,)) for v in (2, 3)]
    t0 = time.monotonic()
    for t in followers:
        t.start()
    for t in followers:
        t.join(5)
    assert time.monotonic() - t0 < 2
    assert errors == ["database unavailable while waiting: no commit within 0.3 s"] * 2
    assert not gc._queue  # they left the queue: nobody will commit them, nobody is handed the lead
    db.gate.set()
    leader.join(5)
    assert gc.run("after", insert(4)) == 1  # the stuck leader let go of the lead once it was done
    assert db.values() == {1, 4}
