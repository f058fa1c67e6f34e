"""Replacing a file so that a reader sees the old bytes or the new ones, never a mix, even after a crash."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """Temp file beside `path` (same file system), fsync, rename over it, fsync the directory.

    `mode` defaults to the replaced file's (0644 for a new one), so a renewed key keeps its 0600.
    """
    directory = path.absolute().parent
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _sync_directory(directory)


def rename_durably(staged: Path, target: Path) -> None:
    """Rename a file written (and fsynced) earlier over `target`, and make the rename itself durable."""
    os.replace(staged, target)
    _sync_directory(target.absolute().parent)


def _sync_directory(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
