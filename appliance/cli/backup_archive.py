"""The backup archive: a gzip'd tar whose first member, MANIFEST.json, names every other member's size and SHA-256.

Reading never trusts the archive. Members are read as one stream, each checked as it comes: its name (relative,
no `..`, no absolute path), its type (regular files only: no links, devices or FIFOs; tarfile's `data` filter as a
second opinion), its size (the manifest's, and the manifest's total within the caller's bound and the free disk), and
its SHA-256 once written. Every decompressed byte is counted against what the manifest declares, and extended tar
headers (pax, GNU long names), which tarfile would read whole into memory, are refused past 64 KiB, so a
decompression bomb stops with a message instead of filling the disk or the memory. The checksums detect a damaged
or edited archive; they do not tell who made it (anyone who can write the archive can rewrite its manifest).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, Self

from appliance.atomic_file import rename_durably

FORMAT = 1
MANIFEST = "MANIFEST.json"
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_MEMBERS = 100_000
MAX_HEADER_BYTES = 64 * 1024  # one pax or GNU long-name header
_SLACK_PER_MEMBER = 3 * 512 + 8 * 1024  # its tar header, a pax header, padding
_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TABLE = re.compile(r"^database/[a-z_][a-z0-9_]{0,63}\.jsonl$")


class BackupError(Exception):
    """A backup or restore that cannot be done as asked; the message is one line that says why."""


@dataclass(frozen=True)
class Member:
    path: str  # relative, `/`-separated; files at their place under the CA's home, tables under database/
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    hsmca: str  # the release that wrote the archive
    created: str  # RFC 3339, UTC
    home: str  # the CA's home when the backup was taken: restore rewrites paths under it to the new home
    backend: str  # sqlite, postgresql or mysql (no URL: it may hold a password)
    revision: str  # the database's schema revision
    tables: dict[str, int]  # rows per table
    softhsm: bool  # the SoftHSM dev token directory is in the archive
    members: list[Member] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> bytes:
        return (json.dumps(asdict(self), indent=1, sort_keys=True) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        """Parse and check a manifest; anything unexpected is a BackupError."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict):
                raise TypeError("not a JSON object")
            if raw.get("format") != FORMAT:
                raise BackupError(f"the archive's format is {raw.get('format')!r}; this release of hsmca reads "
                                  f"format {FORMAT} (restore it with the release that wrote it)")
            members = [Member(str(m["path"]), m["size"], m["sha256"]) for m in raw["members"]]
            manifest = cls(hsmca=_text(raw["hsmca"]), created=_text(raw["created"]), home=_text(raw["home"]),
                           backend=_text(raw["backend"]), revision=_text(raw["revision"]),
                           tables={_text(k): v for k, v in dict(raw["tables"]).items()},
                           softhsm=raw["softhsm"] is True, members=members)
        except (ValueError, KeyError, TypeError) as exc:
            raise BackupError(f"{MANIFEST} is not a backup manifest: {exc}") from None
        manifest._check()
        return manifest

    def _check(self) -> None:
        if len(self.members) > MAX_MEMBERS:
            raise BackupError(f"{MANIFEST} lists {len(self.members)} members, more than {MAX_MEMBERS}")
        seen: set[str] = set()
        for m in self.members:
            member_path(m.path)
            if m.path in seen or m.path == MANIFEST:
                raise BackupError(f"{MANIFEST} lists {m.path} twice")
            if not isinstance(m.size, int) or isinstance(m.size, bool) or m.size < 0 \
                    or not isinstance(m.sha256, str) or not _SHA256.match(m.sha256):
                raise BackupError(f"{MANIFEST}: member {m.path} has no valid size and SHA-256")
            if m.path.startswith("database/") and not _TABLE.match(m.path):
                raise BackupError(f"{MANIFEST}: {m.path} is not a table dump's name")
            seen.add(m.path)
        if not os.path.isabs(self.home):
            raise BackupError(f"{MANIFEST} names no CA home (an absolute path)")
        if "config/ca.json" not in seen:
            raise BackupError("the archive holds no config/ca.json")

    @property
    def total(self) -> int:
        return sum(m.size for m in self.members)


def human_size(n: float) -> str:
    """Bytes as people read them: 812 bytes, 4.2 MiB."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 4096:
        raise TypeError(f"{value!r:.40} is not a string")
    return value


def member_path(name: str) -> str:
    """`name` if it is a safe relative path inside the archive, else a BackupError naming it."""
    parts = name.split("/")
    if not name or len(name) > 1024 or "\0" in name or "\\" in name or name.startswith("/") \
            or any(p in ("", ".", "..") for p in parts):
        raise BackupError(f"archive member {name!r}: refused (an absolute path, '..' or an unusual name)")
    return name


def private_dirs(directory: Path) -> None:
    """`mkdir -p` with every directory it makes 0700 (Path.mkdir gives the parents it makes the umask's mode)."""
    missing: list[Path] = []
    while not directory.is_dir():
        missing.append(directory)
        directory = directory.parent
    for path in reversed(missing):
        path.mkdir(mode=0o700, exist_ok=True)


def digest(path: Path) -> Member:
    """A staged file's manifest entry."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return Member("", size, h.hexdigest())


# -- writing ---------------------------------------------------------------------------------------------------------


def write_archive(out: Path, manifest: Manifest, staged: Path, mtime: int) -> int:
    """MANIFEST.json then every member from `staged`, as one gzip'd tar written atomically (mode 0600); its size."""
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz, \
                    tarfile.open(fileobj=gz, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                data = manifest.to_json()
                tar.addfile(_info(MANIFEST, len(data), mtime), io.BytesIO(data))
                for m in manifest.members:
                    with (staged / m.path).open("rb") as f:
                        tar.addfile(_info(m.path, m.size, mtime), f)
            raw.flush()
            os.fsync(raw.fileno())
        rename_durably(Path(tmp), out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out.stat().st_size


def _info(name: str, size: int, mtime: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.type = size, mtime, 0o600, tarfile.REGTYPE
    return info


# -- reading ---------------------------------------------------------------------------------------------------------


class _CheckedTarInfo(tarfile.TarInfo):
    """Refuses an extended header too large to be one of ours before tarfile reads it into memory."""

    @classmethod
    def frombuf(cls, buf: bytes | bytearray, encoding: str, errors: str) -> Self:
        info = super().frombuf(buf, encoding, errors)
        extended = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                    tarfile.GNUTYPE_LONGLINK)
        if info.type in extended and info.size > MAX_HEADER_BYTES:
            raise BackupError(f"the archive has an extended tar header of {info.size} bytes: refused")
        return info


class _Bounded:
    """The decompressed stream, failing once more bytes come out of it than the archive may hold."""

    def __init__(self, raw: io.BufferedIOBase, limit: int) -> None:
        self.raw, self.limit, self.count = raw, limit, 0

    def read(self, size: int = -1) -> bytes:
        want = self.limit - self.count + 1 if size is None or size < 0 else min(size, self.limit - self.count + 1)
        data = self.raw.read(max(want, 0))
        self.count += len(data)
        if self.count > self.limit:
            raise BackupError(f"the archive unpacks to more than the {self.limit} bytes its manifest accounts for "
                              "(a damaged archive or a decompression bomb): refused")
        return data


class ArchiveReader:
    """One pass over an archive: `manifest` first, then `extract` verifies every member while writing it."""

    def __init__(self, tar: tarfile.TarFile, bounded: _Bounded, name: str) -> None:
        self._tar, self._bounded, self._name = tar, bounded, name
        self._manifest: Manifest | None = None

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            info = self._next()
            if info is None or info.name != MANIFEST or not info.isreg():
                raise BackupError(f"{self._name} is not an hsmca backup: its first member is not {MANIFEST}")
            if info.size > MAX_MANIFEST_BYTES:
                raise BackupError(f"{MANIFEST} is {info.size} bytes, more than {MAX_MANIFEST_BYTES}: refused")
            f = self._tar.extractfile(info)
            assert f is not None
            self._manifest = Manifest.from_json(self._read(f))
            # From here on the stream may hold what the manifest declares, plus headers and padding.
            self._bounded.limit = self._bounded.count + self._manifest.total + \
                (len(self._manifest.members) + 2) * _SLACK_PER_MEMBER + _CHUNK
        return self._manifest

    def extract(self, into: Path) -> None:
        """Write every member under `into` (0600, directories 0700), each checked against the manifest."""
        expected = {m.path: m for m in self.manifest.members}
        seen: set[str] = set()
        while (info := self._next()) is not None:
            path = self._check(info, into)
            if path is None:
                continue
            entry = expected.get(path)
            if entry is None:
                raise BackupError(f"archive member {path} is not in {MANIFEST}: the archive was changed")
            if path in seen:
                raise BackupError(f"archive member {path} appears twice: the archive was changed")
            if info.size != entry.size:
                raise BackupError(f"archive member {path} is {info.size} bytes, {MANIFEST} says {entry.size}: "
                                  "the archive was changed or damaged")
            try:
                written = self._write(info, into / path)
            except OSError as exc:
                raise BackupError(f"cannot unpack archive member {path}: {exc.strerror}") from None
            if written != entry.sha256:
                raise BackupError(f"archive member {path} does not match its SHA-256 in {MANIFEST}: "
                                  "the archive was changed or damaged")
            seen.add(path)
        missing = sorted(set(expected) - seen)
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise BackupError(f"archive member {missing[0]}{more} named in {MANIFEST} is missing: "
                              "the archive is incomplete")

    def _check(self, info: tarfile.TarInfo, into: Path) -> str | None:
        """The member's path if it is a regular file to write, None for a directory entry; else refused."""
        path = member_path(info.name)
        kind = ("a symbolic link" if info.issym() else "a hard link" if info.islnk() else
                "a device" if info.isdev() else "a FIFO" if info.isfifo() else None)
        if kind is not None or not (info.isreg() or info.isdir()):
            raise BackupError(f"archive member {path} is {kind or 'not a regular file'}: refused")
        try:
            tarfile.data_filter(info, str(into))
        except tarfile.FilterError as exc:
            raise BackupError(f"archive member {path}: refused ({exc})") from None
        return None if info.isdir() else path

    def _write(self, info: tarfile.TarInfo, dest: Path) -> str:
        private_dirs(dest.parent)
        src = self._tar.extractfile(info)
        assert src is not None
        h = hashlib.sha256()
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            while chunk := self._guard(src.read, _CHUNK):
                h.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        return h.hexdigest()

    def _next(self) -> tarfile.TarInfo | None:
        return self._guard(self._tar.next)

    def _read(self, f: IO[bytes]) -> bytes:
        return self._guard(f.read)

    def _guard(self, call: Any, *args: Any) -> Any:
        """Run a read from the archive; a damaged stream becomes one line naming the archive."""
        try:
            return call(*args)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise BackupError(f"{self._name} is damaged or not a gzip'd tar archive: {exc or type(exc).__name__}") \
                from None


@contextmanager
def open_archive(path: Path) -> Iterator[ArchiveReader]:
    """Read `path` as a stream: nothing is seeked, so a pipe or a tape would do as well."""
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc.strerror}") from None
    with raw:
        bounded = _Bounded(gzip.GzipFile(fileobj=raw, mode="rb"), MAX_MANIFEST_BYTES + 4 * _SLACK_PER_MEMBER)
        try:
            tar = tarfile.open(fileobj=bounded, mode="r|", tarinfo=_CheckedTarInfo)  # type: ignore[call-overload]
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, OSError) as exc:
            raise BackupError(f"{path} is not a gzip'd tar archive: {exc or type(exc).__name__}") from None
        with tar:
            yield ArchiveReader(tar, bounded, str(path))


def read_manifest(path: Path) -> Manifest:
    """The manifest of the archive at `path` (checked as a restore checks it; the members are not read)."""
    with open_archive(path) as archive:
        return archive.manifest


def archive_revision(path: Path) -> str:
    """The database schema revision recorded in the archive (e.g. to choose the release that restores it)."""
    return read_manifest(path).revision
