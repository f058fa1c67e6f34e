"""One SQLite writer at a time across this host's processes, queued by the kernel, not by sleeps.

SQLite admits one writer; a second one that finds the database locked sleeps in its busy handler in
growing steps (1, 2, 5, 10 … 100 ms), and the lock is likely taken again before it wakes. With two
worker processes issuing at once, most threads then sat in that handler (measured with py-spy:
78 of 100 samples). So each process first queues its own threads on a thread lock, then the
processes take an advisory `flock` on a file beside the database, which hands over as soon as
the holder's transaction ends. Server databases lock rows themselves and need none of this.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from pathlib import Path
from types import TracebackType

from .errors import StoreUnavailable


class SQLiteWriteLock:
    def __init__(self, database: Path | None, timeout: float) -> None:
        self._path = None if database is None else database.with_name(database.name + ".write-lock")
        self._timeout = timeout
        self._thread_lock = threading.Lock()
        self._fd: int | None = None
        self._pid = os.getpid()

    def __enter__(self) -> None:
        deadline = time.monotonic() + self._timeout
        if not self._thread_lock.acquire(timeout=self._timeout):
            raise StoreUnavailable(f"database busy: no write slot within {self._timeout:g} s")
        try:
            self._lock_file(deadline)
        except BaseException:
            self._thread_lock.release()
            raise

    def __exit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                 _tb: TracebackType | None) -> None:
        try:
            if self._fd is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._thread_lock.release()

    def _lock_file(self, deadline: float) -> None:
        if self._path is None:
            return
        if self._fd is None:
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        # A blocking flock cannot be given a timeout from a thread, so poll briefly instead: the
        # holder keeps it for one short transaction, and a stopped holder must not hang us.
        pause = 0.0001
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(f"database busy: another process held the write lock for "
                                           f"{self._timeout:g} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.002)
