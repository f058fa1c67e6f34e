"""A per-host signal that a revocation happened: 8 bytes in `$HSMCA_PATH/run/revocations.stamp`.

The plain-HTTP listener answers OCSP from memory (ocsp_memo.py) and must stop serving "good" for a serial the
moment it is revoked. Asking the database on every request would cost what the memory saves, so the process
that revokes overwrites the stamp with fresh random bytes after its transaction commits, and readers compare
the stamp (a memory-mapped read, a fraction of a microsecond) with the value they saw when they filled their
memory. Any change means "drop everything". A revocation made on another host (replicas sharing PostgreSQL)
cannot touch this file; readers also poll the database's revocation revision for that (see ocsp_memo.py).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

SIZE = 8


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
