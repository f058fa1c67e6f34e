"""Group commit: the issuance path's writes from every request thread of a process share one commit.

Each certificate costs two durable commits (its reservation before the KMS signs, its issued mark before the
answer). A durable commit is an fsync: on the machine this was measured on, 160 µs of CPU and 560 µs of wall
time on SQLite, whatever it carries. So one writer thread per process takes every write queued while the
previous commit ran, applies each in its own savepoint (one write's failure, e.g. a replayed token, is that
write's alone), commits once, and only then releases each waiter with its own result. Durability is what it
was: nobody is answered before the commit that holds their write. Nothing waits for company either: a write
that arrives while the writer is idle is committed at once.

Hand-written: SQLAlchemy has no group commit, and the databases' own (PostgreSQL's commit_delay) add latency
instead of sharing work that is already waiting.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy.engine import Connection

from .errors import StoreError, StoreUnavailable

log = logging.getLogger(__name__)

T = TypeVar("T")
MAX_BATCH = 64


@dataclass
class _Write(Generic[T]):
    what: str
    apply: Callable[[Connection], T]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


class GroupCommit:
    """`run(what, apply)` from any thread: `apply(conn)` inside a shared transaction, returned once committed."""

    def __init__(self, write: Callable[[str], AbstractContextManager[Connection]],
                 translate: Callable[[BaseException, str], BaseException], timeout: float):
        self._write, self._translate, self._timeout = write, translate, timeout
        self._queue: deque[_Write[Any]] = deque()
        self._ready = threading.Condition(threading.Lock())
        self._pid = 0  # the writer thread belongs to one process (not inherited across fork)

    def run(self, what: str, apply: Callable[[Connection], T]) -> T:
        item: _Write[T] = _Write(what, apply)
        with self._ready:
            if self._pid != os.getpid():
                self._pid = os.getpid()
                self._queue.clear()
                threading.Thread(target=self._writer, name="group-commit", daemon=True).start()
            self._queue.append(item)
            self._ready.notify()
        # The writer answers every item; the bound is for a writer stuck in a database that stopped answering
        # (the write may still commit later: a reservation is then swept, an issued mark was never promised).
        if not item.done.wait(self._timeout * 2 + 5):
            raise StoreUnavailable(f"database unavailable while {what}: no commit within {self._timeout * 2 + 5:g} s")
        if item.error is not None:
            raise item.error
        return item.result

    def _writer(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
            self._commit(batch)

    def _commit(self, batch: list[_Write[Any]]) -> None:
        what = batch[0].what if len(batch) == 1 else f"committing {len(batch)} writes"
        try:
            with self._write(what) as conn:
                for item in batch:
                    savepoint = conn.begin_nested() if len(batch) > 1 else None
                    try:
                        item.result = item.apply(conn)
                        if savepoint is not None:
                            savepoint.commit()
                    except Exception as exc:  # noqa: BLE001 (the item's own failure, handed to its waiter)
                        if savepoint is None:
                            raise
                        savepoint.rollback()
                        item.error = exc if isinstance(exc, StoreError) else self._translate(exc, item.what)
        except Exception as exc:  # noqa: BLE001 (the commit failed: no write of the batch is durable)
            for item in batch:
                if item.error is None or len(batch) == 1:
                    item.error = exc if isinstance(exc, StoreError) else self._translate(exc, item.what)
        except BaseException:  # pragma: no cover (interpreter shutdown): nobody may wait for ever
            for item in batch:
                item.error = StoreUnavailable(f"database unavailable while {item.what}: the writer stopped")
                item.done.set()
            raise
        for item in batch:
            item.done.set()
