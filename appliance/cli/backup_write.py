"""`write_backup`: the CA's database, audit trail and configuration in one archive, taken while it serves.

What goes in, each at its path under the CA's home (so a restore puts it back at the same place under another home):
`config/` (ca.json first of all), `certs/`, `secrets/` (the token PIN, the provisioner password of a dev CA), every
other file ca.json names under the home (templates, PIN files), the audit files (`audit/`: the current one and the
rotated ones), and `softhsm/` when the keys are in a SoftHSM token under the home (a dev CA). A real HSM's keys never
are: the vendor's tools back them up. The database goes in as `database/<table>.jsonl` (appliance/store/dump.py).

Everything is first copied into a private directory beside the archive, then hashed, then packed, so the manifest
describes exactly the bytes packed even while the CA writes on. The tables are dumped first, in one snapshot, and
the audit files copied after (each up to its last complete line): every checkpoint the dumped database records is
then in the copied files, as `hsmca audit verify --config` requires of a restored CA.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import appliance
import softhsm
from appliance.cli.backup_archive import BackupError, Manifest, Member, digest, private_dirs, write_archive
from appliance.config import CAConfig, ConfigError, default_config_path, load_config
from appliance.store import StoreError
from appliance.store.dump import dump_database
from appliance.store.urls import url_from_config
from kms.errors import InvalidKeyURI
from kms.uri import parse_key_uri

_CA_DIRECTORIES = ("config", "certs", "secrets")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class BackupSummary:
    archive: Path
    size: int  # bytes of the archive
    backend: str
    revision: str
    tables: dict[str, int]  # rows per table
    config_files: list[str]  # member paths: config/, certs/, secrets/ and what ca.json names
    audit_files: list[str]
    softhsm_files: list[str]  # the SoftHSM dev token directory (empty unless it is under the CA's home)
    softhsm_outside: str | None  # a SoftHSM token directory outside the CA's home, so not in the archive
    outside: list[str]  # files ca.json names outside the CA's home: not in the archive

    @property
    def files(self) -> int:
        return len(self.config_files) + len(self.audit_files) + len(self.softhsm_files)


def write_backup(config_path: Path | None, out: Path) -> BackupSummary:
    """Write the backup of the CA configured by `config_path` (default: $HSMCA_PATH/config/ca.json) to `out`."""
    config_path = (config_path or default_config_path()).absolute()
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise BackupError(" ".join(str(exc).split())) from None
    home = config.base_dir.resolve()
    # The home as ca.json spells it (init writes $HSMCA_PATH unresolved): what a restore elsewhere rewrites.
    named_home = config_path.parent.parent if config_path.parent.name == "config" else config_path.parent
    out = out.absolute()
    if out.is_dir() or not out.parent.is_dir():
        raise BackupError(f"{out}: give a file name in an existing directory")
    created = datetime.now(UTC).replace(microsecond=0)
    try:
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.staging-"))
    except OSError as exc:
        raise BackupError(f"cannot write in {out.parent}: {exc.strerror}") from None
    try:
        try:
            dump = dump_database(url_from_config(config.db.model_dump(), config.base_dir), staging / "database")
        except StoreError as exc:
            raise BackupError(f"cannot dump the database: {exc}") from None
        files, outside = _config_files(config, config_path, home, skip=out)
        audit = _audit_files(config)
        softhsm, softhsm_outside = _softhsm_files(config, home)
        copied: dict[str, list[str]] = {"audit": [], "softhsm": [], "config": []}
        done: set[str] = set()
        for group, sources, whole_lines in (("audit", audit, True), ("softhsm", softhsm, False),
                                            ("config", files, False)):
            for member, source in sorted(sources.items()):
                if member not in done and _copy(source, staging / member, whole_lines=whole_lines):
                    copied[group].append(member)
                    done.add(member)
                elif member == "config/ca.json":
                    raise BackupError(f"cannot read {source}")
        members = [Member(path, entry.size, entry.sha256) for path in _staged(staging)
                   for entry in [digest(staging / path)]]
        manifest = Manifest(hsmca=appliance.__version__, created=created.isoformat().replace("+00:00", "Z"),
                            home=str(named_home), backend=dump.backend, revision=dump.revision,
                            tables={t.name: t.rows for t in dump.tables}, softhsm=bool(copied["softhsm"]),
                            members=members)
        size = write_archive(out, manifest, staging, int(created.timestamp()))
    except OSError as exc:
        raise BackupError(f"cannot write the backup: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BackupSummary(out, size, dump.backend, dump.revision, manifest.tables, copied["config"], copied["audit"],
                         copied["softhsm"], softhsm_outside, outside)


def _staged(staging: Path) -> list[str]:
    """Every staged file's member path: the tables first (a restore loads them last, after checking the rest)."""
    paths = [p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()]
    return sorted(paths, key=lambda p: (not p.startswith("database/"), p))


def _under(path: Path, home: Path) -> str | None:
    """`path`'s member name (relative to the home) when it lies under the home."""
    try:
        return path.resolve().relative_to(home).as_posix()
    except ValueError:
        return None


def _config_files(config: CAConfig, config_path: Path, home: Path, *,
                  skip: Path) -> tuple[dict[str, Path], list[str]]:
    """ca.json, the CA's config/certs/secrets directories, and every file ca.json names (those under the home);
    never the archive being written (`skip`) nor its temporary files, should it be written there."""
    files: dict[str, Path] = {}
    for name in _CA_DIRECTORIES:
        for path in _walk(home / name):
            if path != skip and not any(part.startswith(f".{skip.name}.") for part in path.parts):
                files[path.relative_to(home).as_posix()] = path
    files["config/ca.json"] = config_path  # wherever it is, a restore puts it at config/ca.json
    outside: list[str] = []
    for path in _named_files(config):
        member = _under(path, home)
        if member is None:
            outside.append(str(path))
        elif path.is_file():
            files.setdefault(member, path)
    return files, sorted(set(outside))


def _walk(directory: Path) -> list[Path]:
    """Regular files under `directory` (not following links to directories)."""
    found: list[Path] = []
    for root, _dirs, names in os.walk(directory):
        found += [Path(root) / name for name in names]
    return found


def _named_files(config: CAConfig) -> list[Path]:
    named = [config.root, config.crt, config.audit.certificate,
             *(r.certificate for r in config.ocsp.responders),
             *(p.options.x509.templateFile for p in config.authority.provisioners
               if p.options and p.options.x509 and p.options.x509.templateFile)]
    for uri in (config.kms.uri, config.key, config.audit.key, *(r.key for r in config.ocsp.responders)):
        source = _pin_source(uri)
        if source:
            named.append(source)
    named += [v for k, v in config.kms.environment.items() if k.endswith("_CONF")]
    return [config.resolve(p) for p in named if p]


def _pin_source(uri: str | None) -> str | None:
    if not uri:
        return None
    try:
        source = parse_key_uri(uri).query.get("pin-source", "")
    except InvalidKeyURI:
        return None
    return source.removeprefix("file:") if source.startswith(("file:", "/")) else None


def _audit_files(config: CAConfig) -> dict[str, Path]:
    """The audit file and its rotated predecessors (audit-<time>.jsonl), as audit/<name>."""
    current = config.resolve(config.audit.path)
    pattern = re.compile(rf"^{re.escape(current.stem)}(-[0-9A-Za-z.]+)?{re.escape(current.suffix)}$")
    if not current.parent.is_dir():
        return {}
    return {f"audit/{p.name}": p for p in current.parent.iterdir() if pattern.match(p.name)}


def softhsm_conf(config: CAConfig) -> Path | None:
    """The SoftHSM configuration the CA's kms uses, or None when its keys are not in SoftHSM."""
    given = config.kms.environment.get("SOFTHSM2_CONF")
    if given:
        return config.resolve(given)
    try:
        module = parse_key_uri(config.kms.uri).query.get("module-path", "") if config.kms.uri else ""
    except InvalidKeyURI:
        module = ""
    if "softhsm" not in module.lower():
        return None
    return Path(os.environ.get("SOFTHSM2_CONF") or "/etc/softhsm/softhsm2.conf")


def _softhsm_files(config: CAConfig, home: Path) -> tuple[dict[str, Path], str | None]:
    """The SoftHSM config and token files when both are under the CA's home (a dev CA); else where the tokens are."""
    conf = softhsm_conf(config)
    tokens = softhsm.token_dir(conf) if conf is not None else None
    if conf is None or tokens is None:
        return {}, None
    conf_member, tokens_member = _under(conf, home), _under(tokens, home)
    if conf_member is None or tokens_member is None:
        return {}, str(tokens)
    files = {conf_member: conf}
    for path in _walk(tokens):
        member = _under(path, home)
        if member is not None:
            files[member] = path
    return files, None


def _copy(source: Path, dest: Path, *, whole_lines: bool) -> bool:
    """Copy a regular file (False when it vanished or is not one); an audit file only up to its last newline, since a
    process may be appending to it."""
    try:
        fd = os.open(source, os.O_RDONLY)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        return False
    with os.fdopen(fd, "rb") as src:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        size = _last_line_end(fd, info.st_size) if whole_lines else info.st_size
        private_dirs(dest.parent)
        out_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(out_fd, "wb") as out:
            left = size
            while left > 0 and (chunk := src.read(min(_CHUNK, left))):
                out.write(chunk)
                left -= len(chunk)
            out.flush()
            os.fsync(out.fileno())
    return True


def _last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline within the first `size` bytes (0 when there is none)."""
    end = size
    while end > 0:
        start = max(0, end - 64 * 1024)
        cut = os.pread(fd, end - start, start).rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        end = start
    return 0
