"""A per-host signal that a revocation happened: 8 bytes in `$HSMCA_PATH/run/revocations.stamp`.

The plain-HTTP listener answers OCSP from memory (ocsp_memo.py) and must stop serving "good" for a serial the
moment it is revoked. Asking the database on every request would cost what the memory saves, so the process
that revokes overwrites the stamp with fresh random bytes after its transaction commits, and readers compare
the stamp (a memory-mapped read, a fraction of a microsecond) with the value they saw when they filled their
memory. Any change means "drop everything". A revocation made on another host (replicas sharing PostgreSQL)
cannot touch this file: `EpochPoller` polls the database's revocation revisions for that and rewrites the
stamp when they move.
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import threading
from pathlib import Path

from appliance.store import Store, StoreError

log = logging.getLogger(__name__)

SIZE = 8
POLL_SECONDS = 1.0


def stamp_path(base_dir: Path) -> Path:
    return base_dir / "run" / "revocations.stamp"


def _open(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    if os.fstat(fd).st_size < SIZE:
        os.ftruncate(fd, SIZE)  # zero-filled: a fresh file reads as "never revoked here"
    return fd


def bump(path: Path) -> None:
    """Tell this host's OCSP memories that a revocation committed (best effort: a failure is logged, and the
    readers' database poll still catches the revocation within its interval)."""
    try:
        fd = _open(path)
        try:
            os.pwrite(fd, secrets.token_bytes(SIZE), 0)
        finally:
            os.close(fd)
    except OSError as exc:
        log.warning("could not write the revocation stamp %s: %s", path, exc)


class StampReader:
    """The stamp's current bytes through a shared mapping (no system call per read)."""

    def __init__(self, path: Path):
        fd = _open(path)
        try:
            self._map = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)

    def read(self) -> bytes:
        return self._map[:SIZE]

    def close(self) -> None:
        self._map.close()


class EpochPoller:
    """Turns revocations made elsewhere (another replica's database writes) into a local stamp change."""

    def __init__(self, store: Store, path: Path, interval: float = POLL_SECONDS):
        self.store, self.path, self.interval = store, path, interval
        self._stop = threading.Event()
        self._epoch: int | None = None
        self._thread = threading.Thread(target=self._run, name="ocsp-epoch-poll", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def poll(self) -> bool:
        """One check; True when the epoch moved (and the stamp was rewritten)."""
        try:
            epoch = self.store.revocations.epoch()
        except StoreError as exc:
            if self._epoch is not None:
                log.warning("OCSP memory: cannot read the revocation epoch (%s); serving nothing from memory "
                            "until the database answers again", exc)
            bump(self.path)  # blind to other replicas' revocations: keep nothing that could be stale
            self._epoch = None
            return True
        moved = self._epoch is not None and epoch != self._epoch
        if moved:
            bump(self.path)
        self._epoch = epoch
        return moved

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()
