"""`restore_backup`: a CA back from an archive written by `write_backup`, under this or another home.

Order matters, so that a bad archive leaves nothing behind: every member is unpacked into a private directory beside
the home and checked against the manifest (backup_archive.py); only then are the paths under the old home rewritten
to the new one (ca.json, softhsm2.conf), the database loaded (at the archive's schema revision, then upgraded), and
the files moved into place. An existing CA (a ca.json, a database with rows, audit files) is replaced only when asked
(`force`): its directories are moved aside under `replaced-<time>/` (SoftHSM tokens included: they may hold the only
copy of a key), its database tables dropped.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from pydantic import ValidationError
from sqlalchemy.engine import URL

from appliance.cli.backup_archive import BackupError, Manifest, human_size, open_archive, private_dirs
from appliance.config import CAConfig
from appliance.store import StoreError
from appliance.store.dump import check_revision, drop_tables, load_database, tables_in_use
from appliance.store.engine import create_engine
from appliance.store.urls import backend_of, normalise_url, url_from_config

DEFAULT_MAX_BYTES = 64 * 1024**3
_SQLITE_SIDE_FILES = ("", "-wal", "-shm", ".write-lock")


@dataclass(frozen=True)
class RestoreSummary:
    home: Path
    config_path: Path
    manifest: Manifest
    database: str  # the URL loaded into, password masked
    tables: dict[str, int]  # rows loaded per table
    files: int  # files written under the home (and the audit directory)
    relocated: list[str]  # files whose paths under the old home were rewritten to the new one
    replaced: list[str]  # what `force` moved aside or dropped


def restore_backup(archive: Path, home: Path, *, force: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
                   db_url: str | None = None) -> RestoreSummary:
    """Restore `archive` as the CA whose home is `home`; see the module's docstring for the order of things.

    `db_url` loads the tables into that database instead of the one the archive's ca.json names, and writes it into
    the restored ca.json (the dump is portable: a SQLite CA moves to PostgreSQL this way)."""
    home = home.expanduser().absolute()
    config_path = home / "config" / "ca.json"
    if config_path.exists() and not force:
        raise BackupError(f"a CA already exists at {config_path}: use --force to replace it "
                          "(its files are moved aside, its database tables dropped)")
    if not home.parent.is_dir() or (home.exists() and not home.is_dir()):
        raise BackupError(f"{home}: its parent must be an existing directory, and it a directory if it exists")
    # Unpacked inside the home when it exists (on the appliance only the home is the service's to write), else beside
    # it; either way on the file system the files are then renamed onto.
    scratch = home if home.is_dir() else home.parent
    with open_archive(archive) as reader:
        manifest = reader.manifest
        try:
            check_revision(manifest.revision)
        except StoreError as exc:
            raise BackupError(f"the archive's database {exc.args[0].removeprefix('the dump ')}") from None
        _check_space(manifest.total, max_bytes, scratch)
        try:
            staging = Path(tempfile.mkdtemp(dir=scratch, prefix=f".{home.name}.restore-"))
        except OSError as exc:
            raise BackupError(f"cannot unpack the archive in {scratch}: {exc.strerror}") from None
        try:
            reader.extract(staging)
            return _restore(staging, manifest, home, config_path, force, db_url)
        except OSError as exc:
            raise BackupError(f"cannot restore: {exc.filename or ''}{': ' if exc.filename else ''}{exc.strerror}") \
                from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _restore(staging: Path, manifest: Manifest, home: Path, config_path: Path, force: bool,
             db_url: str | None) -> RestoreSummary:
    relocated = _relocate(staging, manifest.home, str(home)) if manifest.home != str(home) else []
    if db_url is not None:
        _set_database(staging / "config" / "ca.json", db_url)
    config = _restored_config(staging / "config" / "ca.json")
    try:
        url = url_from_config(config.db.model_dump(), home)
        used = tables_in_use(url)
    except StoreError as exc:
        raise BackupError(f"the restored ca.json's database: {exc}") from None
    masked = url.render_as_string(hide_password=True)
    audit_dir = _resolve(home, config.audit.path).parent
    old_audit = sorted(p.name for p in audit_dir.glob("*.jsonl")) if audit_dir.is_dir() else []
    if not force and used:
        raise BackupError(f"the database {masked} already holds a CA's data ({', '.join(used)}): "
                          "use --force to replace it")
    if not force and old_audit:
        raise BackupError(f"{audit_dir} already holds audit files ({old_audit[0]}…): use --force to replace them")
    replaced = _move_aside(staging, home, url, audit_dir) if force else []
    if force and used:
        replaced.append(f"the tables of {masked} (dropped)")
    home.mkdir(mode=0o700, exist_ok=True)
    try:
        if backend_of(url) == "sqlite":
            private_dirs(Path(str(url.database)).parent)
        tables = load_database(url, staging / "database", manifest.revision, replace=force)
        if tables != manifest.tables:
            raise StoreError(f"the rows loaded ({tables}) are not the rows the manifest counts ({manifest.tables})")
    except (StoreError, OSError) as exc:
        _undo_load(url)
        aside = f" (the CA that was there is in {home}/replaced-*)" if replaced else ""
        raise BackupError(f"cannot load the database into {masked}: {exc}; no file was restored{aside}") from None
    files = _install(staging, home, audit_dir)
    return RestoreSummary(home, config_path, manifest, masked, tables, files, relocated, replaced)


def _set_database(path: Path, db_url: str) -> None:
    """Point the staged ca.json's `db` block at `db_url` (a SQLAlchemy URL; sqlite:////path for a file)."""
    try:
        url = normalise_url(db_url)
    except StoreError as exc:
        raise BackupError(f"--db: {exc}") from None
    backend = backend_of(url)
    source = str(url.database) if backend == "sqlite" else url.render_as_string(hide_password=False)
    try:
        config = json.loads(path.read_bytes())
        config["db"] = {"type": backend, "dataSource": source}
    except (ValueError, TypeError) as exc:
        raise BackupError(f"the archive's config/ca.json is not a JSON object: {exc}") from None
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _resolve(home: Path, path: str) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else home / p


def _check_space(total: int, max_bytes: int, directory: Path) -> None:
    if total > max_bytes:
        raise BackupError(f"the archive unpacks to {human_size(total)}, more than the {human_size(max_bytes)} allowed "
                          "(--max-size)")
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if total > free:
        raise BackupError(f"the archive unpacks to {human_size(total)} but {directory} has {human_size(free)} free")


def _restored_config(path: Path) -> CAConfig:
    try:
        return CAConfig.model_validate(json.loads(path.read_bytes()))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise BackupError(f"the archive's config/ca.json is not valid: {where}: {first['msg']}") from None
    except ValueError as exc:
        raise BackupError(f"the archive's config/ca.json is not JSON: {exc}") from None


# -- moving a CA to another home -------------------------------------------------------------------------------------


def _relocate(staging: Path, old: str, new: str) -> list[str]:
    """Rewrite paths under the old home to the new one in the configuration files; the members changed."""
    changed: list[str] = []
    for path in sorted([*(staging / "config").rglob("*.json"), *(staging / "softhsm").glob("*.conf")]):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        if path.suffix == ".json":
            try:
                data = json.loads(text)
            except ValueError:
                continue  # not ours to fix; ca.json itself is checked next
            moved = _relocate_value(data, old, new)
            result = json.dumps(moved, indent=2) + "\n" if moved != data else text
        else:
            result = _relocate_string(text, old, new)
        if result != text:
            path.write_text(result, encoding="utf-8", errors="surrogateescape")
            changed.append(path.relative_to(staging).as_posix())
    return changed


def _relocate_value(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return _relocate_string(value, old, new)
    if isinstance(value, list):
        return [_relocate_value(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _relocate_value(v, old, new) for k, v in value.items()}
    return value


def _relocate_string(text: str, old: str, new: str) -> str:
    """`old` as a whole string, or as a directory prefix (also percent-encoded, as in a key URI's pin-source)."""
    if text == old:
        return new
    pairs = [(old, new)] + ([(quote(old), quote(new))] if quote(old) != old else [])
    for a, b in pairs:
        text = text.replace(a.rstrip("/") + "/", b.rstrip("/") + "/")
    return text


# -- replacing a CA --------------------------------------------------------------------------------------------------


def _destination(member: str, home: Path, audit_dir: Path) -> Path:
    head, _, name = member.partition("/")
    return audit_dir / name if head == "audit" and "/" not in name else home / member


def _members(staging: Path) -> list[str]:
    return sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*")
                  if p.is_file() and not p.relative_to(staging).as_posix().startswith("database/"))


def _move_aside(staging: Path, home: Path, url: URL, audit_dir: Path) -> list[str]:
    """Move the existing CA's entries that the restore would overwrite out of the way; what was moved."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = home / f"replaced-{stamp}"
    targets = [_destination(m, home, audit_dir) for m in _members(staging)]
    if backend_of(url) == "sqlite":
        targets.append(Path(str(url.database)))
    tops: set[str] = set()
    outside: list[Path] = []
    for target in targets:
        try:
            tops.add(target.relative_to(home).parts[0])
        except ValueError:
            outside.append(target)
    moved: list[str] = []
    for top in sorted(tops):
        if (home / top).exists() or (home / top).is_symlink():
            aside.mkdir(mode=0o700, exist_ok=True)
            os.replace(home / top, aside / top)
            moved.append(str(aside / top))
    sqlite = Path(str(url.database)) if backend_of(url) == "sqlite" else None
    for target in outside:  # the database or the audit files elsewhere: renamed beside themselves
        for path in ([target.with_name(target.name + s) for s in _SQLITE_SIDE_FILES] if target == sqlite
                     else [target]):
            if path.exists():
                os.replace(path, path.with_name(f"{path.name}.replaced-{stamp}"))
                moved.append(f"{path}.replaced-{stamp}")
    if audit_dir.is_dir() and not _is_under(audit_dir, home):
        for path in audit_dir.glob("*.jsonl"):
            os.replace(path, path.with_name(f"{path.name}.replaced-{stamp}"))
            moved.append(f"{path}.replaced-{stamp}")
    return moved


def _is_under(path: Path, home: Path) -> bool:
    try:
        path.relative_to(home)
        return True
    except ValueError:
        return False


def _undo_load(url: URL) -> None:
    """Best effort: leave no half-loaded database behind a failed restore."""
    if backend_of(url) == "sqlite":
        for suffix in _SQLITE_SIDE_FILES:
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        return
    try:
        engine = create_engine(url, statement_timeout=None, pooled=False)
        try:
            drop_tables(engine)
        finally:
            engine.dispose()
    except Exception:  # noqa: BLE001 (the load's own error is the one to report)
        pass


def _install(staging: Path, home: Path, audit_dir: Path) -> int:
    """Move every unpacked file (but the tables) into place; how many."""
    directories: set[Path] = set()
    members = _members(staging)
    for member in members:
        dest = _destination(member, home, audit_dir)
        private_dirs(dest.parent)
        try:
            os.replace(staging / member, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise BackupError(f"cannot restore {dest}: {exc.strerror}") from None
            shutil.copyfile(staging / member, dest)  # another file system (an audit directory elsewhere)
            os.chmod(dest, 0o600)
        directories.add(dest.parent)
    for directory in directories:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(members)
