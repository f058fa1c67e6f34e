"""Signed audit checkpoints in the store, on SQLite, PostgreSQL and MariaDB (fixtures from test_store.py): one head
per (stream, seq), retries harmless, and the checkpoints from a time on that the verifier reads."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from appliance.store import CheckpointConflict, Store, StoredCheckpoint, StoreError
from appliance.store.migrate import head_revision
from tests.integration import test_store as base
from tests.integration.test_store import Server
from tests.integration.test_store_intermediates import _alembic, _diff

server = base.server
T = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
SIG = {"key": "ab" * 32, "algorithm": "ecdsa-p256-sha256", "signature": "MEUCIQ=="}


@pytest.fixture
def store(server: Server) -> Iterator[Store]:
    """A migrated database per test: the queries read the whole table."""
    with Store(server.new_url()) as s:
        s.migrate()
        yield s


def head(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cp(stream: str, seq: int, minutes: int = 0, line: str | None = None, reason: str = "interval") -> StoredCheckpoint:
    h = head(line if line is not None else f"{stream}:{seq}")
    at = T + timedelta(minutes=minutes)
    statement = f"hsmca-audit-checkpoint/1 stream={stream} seq={seq} head={h} time={at.isoformat()}"
    return StoredCheckpoint(stream, seq, h, at, reason, statement, [dict(SIG)])


def test_added_checkpoints_read_back_in_stream_and_seq_order(store: Store) -> None:
    cps = [cp("b", 10, 1), cp("a", 7, 2), cp("a", 3, 0), cp("b", 2, 3, reason="shutdown")]
    for c in cps:
        store.audit_checkpoints.add(c)
    got = store.audit_checkpoints.since(None)
    assert got == sorted(cps, key=lambda c: (c.stream, c.seq))
    assert all(c.time.tzinfo is not None for c in got)
    assert got[0].signatures == [SIG] and got[2].reason == "shutdown"  # ("b", 2)


def test_since_keeps_checkpoints_at_or_after_the_time(store: Store) -> None:
    for c in (cp("a", 1, 0), cp("a", 2, 10), cp("b", 1, 20)):
        store.audit_checkpoints.add(c)
    at = T + timedelta(minutes=10)
    assert [(c.stream, c.seq) for c in store.audit_checkpoints.since(at)] == [("a", 2), ("b", 1)]
    # Any zone is accepted and compared as UTC.
    assert len(store.audit_checkpoints.since(at.astimezone(timezone(timedelta(hours=5))))) == 2
    assert store.audit_checkpoints.since(T + timedelta(hours=1)) == []
    with pytest.raises(ValueError):
        store.audit_checkpoints.since(datetime(2026, 1, 1))


def test_adding_the_same_checkpoint_again_is_a_no_op(store: Store) -> None:
    c = cp("a", 1)
    store.audit_checkpoints.add(c)
    store.audit_checkpoints.add(c)  # a retry after a lost answer
    # Same head, other signatures (a retry signed again): still the first row.
    store.audit_checkpoints.add(StoredCheckpoint(c.stream, c.seq, c.head, c.time, "shutdown", c.statement,
                                                 [dict(SIG, signature="other==")]))
    assert store.audit_checkpoints.since(None) == [c]


def test_a_different_head_for_a_recorded_seq_is_refused(store: Store) -> None:
    store.audit_checkpoints.add(cp("audit-1", 42))
    with pytest.raises(CheckpointConflict, match=r"'audit-1' .* seq 42") as err:
        store.audit_checkpoints.add(cp("audit-1", 42, line="forged"))
    assert isinstance(err.value, StoreError)
    assert [c.head for c in store.audit_checkpoints.since(None)] == [cp("audit-1", 42).head]


def test_racing_writers_record_one_head_per_seq(store: Store) -> None:
    """Replicas adding the same checkpoint all succeed; of conflicting heads exactly one is kept."""
    n = 6
    barrier = threading.Barrier(n)
    errors: list[BaseException] = []
    conflicts: list[int] = []
    lock = threading.Lock()

    def go(i: int) -> None:
        barrier.wait()
        try:
            store.audit_checkpoints.add(cp("same", 1))
            store.audit_checkpoints.add(cp("race", 1, line=f"line-{i}"))
        except CheckpointConflict:
            with lock:
                conflicts.append(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(conflicts) == n - 1
    assert [(c.stream, c.seq) for c in store.audit_checkpoints.since(None)] == [("race", 1), ("same", 1)]


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("stream", "", ValueError),
        ("stream", "s" * 129, ValueError),
        ("seq", 0, ValueError),
        ("seq", 2**63, ValueError),
        ("seq", True, TypeError),
        ("head", "AB" * 32, ValueError),
        ("head", "ab" * 31, ValueError),
        ("time", datetime(2026, 1, 1), ValueError),
        ("reason", "r" * 33, ValueError),
        ("statement", "x" * 513, ValueError),
        ("signatures", [], ValueError),
        ("signatures", [{"key": "k", "algorithm": "a"}], ValueError),
        ("signatures", [{"key": "k", "algorithm": "a", "signature": 1}], ValueError),
    ],
)
def test_bad_checkpoints_are_refused_before_the_database(field: str, value: object, error: type[Exception]) -> None:
    fields = {f: getattr(cp("a", 1), f) for f in StoredCheckpoint.__slots__}
    fields[field] = value
    # A Store that would fail on any database access: validation must come first.
    with Store("sqlite:////nonexistent-dir/never.db") as s, pytest.raises(error):
        s.audit_checkpoints.add(StoredCheckpoint(**fields))


def test_migration_0005_upgrades_from_0004_and_downgrades(server: Server) -> None:
    url = server.new_url()
    _alembic(url, "upgrade", "0004")
    with Store(url) as s:
        s.migrate()
        assert s.schema_revision() == head_revision()
        s.check_schema()
        s.audit_checkpoints.add(cp("a", 1))
    assert _diff(url) == []
    _alembic(url, "downgrade", "0004")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        assert "audit_checkpoints" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    _alembic(url, "upgrade", "head")
    assert _diff(url) == []
