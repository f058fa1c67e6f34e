"""Backup archives of a real dev CA (SoftHSM, SQLite): what `write_backup` packs, restoring into SQLite, PostgreSQL
and MariaDB (`--db`, fixtures from test_store.py), and every archive that restore must refuse before it writes a file:
an edited, missing or extra member, `..`, absolute paths, links and devices, a decompression bomb, an archive from a
newer schema, and a CA already in place (unless --force)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.cli.backup_archive import BackupError, archive_revision, read_manifest
from appliance.cli.backup_restore import restore_backup
from appliance.cli.backup_write import BackupSummary, write_backup
from appliance.store import Store
from appliance.store.migrate import head_revision
from tests.integration import test_store as base
from tests.integration.test_store import Server

from .conftest import HSMCA, DevCA, make_ca

server = base.server
Entry = tuple[tarfile.TarInfo, bytes]


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[DevCA, Path, BackupSummary]:
    """A dev CA (its token in the session's SoftHSM directory, outside its home) and its backup."""
    base = tmp_path_factory.mktemp("backup-ca") / "ca"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HSMCA_PATH", str(base))  # init_ca in-process puts the audit key's certificate under $HSMCA_PATH
        ca = make_ca(base)
    archive = ca.base.parent / "ca.tar.gz"
    return ca, archive, write_backup(ca.config_path, archive)


def test_the_archive_and_its_manifest(made: tuple[DevCA, Path, BackupSummary]) -> None:
    ca, archive, summary = made
    manifest = read_manifest(archive)
    assert archive_revision(archive) == manifest.revision == summary.revision == head_revision()
    assert manifest.backend == "sqlite" and manifest.home == str(ca.base) and not manifest.softhsm
    assert summary.softhsm_outside is not None and not summary.softhsm_files  # the session's token directory
    assert summary.outside == [str(summary.softhsm_outside).removesuffix("/tokens") + "/softhsm2.conf"]
    paths = [m.path for m in manifest.members]
    assert {"config/ca.json", "certs/root_ca.crt", "certs/intermediate_ca.crt", "secrets/pin", "audit/audit.jsonl",
            "database/certificates.jsonl", "database/intermediates.jsonl"} <= set(paths)
    assert not any(p.startswith(("db/", "run/")) for p in paths)
    assert manifest.tables["intermediates"] == 1 and manifest.tables["audit_checkpoints"] >= 1
    with tarfile.open(archive, "r:gz") as tar:
        assert tar.getnames() == ["MANIFEST.json", *paths]
        assert {m.mode for m in tar.getmembers()} == {0o600}


def test_an_audit_file_being_written_is_copied_up_to_its_last_complete_line(
        made: tuple[DevCA, Path, BackupSummary], tmp_path: Path) -> None:
    ca = made[0]
    whole = ca.audit_path.read_bytes()
    with ca.audit_path.open("ab") as f:
        f.write(b'{"action":"x509.sign","half a line')  # a writer caught mid-line
    try:
        write_backup(ca.config_path, tmp_path / "mid.tar.gz")
    finally:
        with ca.audit_path.open("r+b") as f:
            f.truncate(len(whole))
    copied = dict((m.name, data) for m, data in _entries(tmp_path / "mid.tar.gz"))["audit/audit.jsonl"]
    assert copied == whole and whole.endswith(b"\n")


def _entries(archive: Path) -> list[Entry]:
    with tarfile.open(archive, "r:gz") as tar:
        return [(m, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]


def _write(entries: list[Entry], out: Path) -> Path:
    with tarfile.open(out, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if info.isreg():
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return out


def _manifest(entries: list[Entry], change: Callable[[dict[str, Any]], None]) -> list[Entry]:
    manifest = json.loads(entries[0][1])
    change(manifest)
    return [(entries[0][0], json.dumps(manifest).encode()), *entries[1:]]


def _file(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode = kind, len(data), 0o600
    return info, data


def _edit(entries: list[Entry]) -> list[Entry]:
    i = next(i for i, (m, _) in enumerate(entries) if m.name == "certs/root_ca.crt")
    return [*entries[:i], (entries[i][0], entries[i][1].replace(b"A", b"B", 1)), *entries[i + 1:]]


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> Entry:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, b""


def _device() -> Entry:
    info = tarfile.TarInfo("config/null")
    info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
    return info, b""


def _pax_bomb(entries: list[Entry]) -> list[Entry]:
    info, data = entries[1]
    info = tarfile.TarInfo(info.name)
    info.size, info.pax_headers = len(data), {"comment": "x" * 200_000}
    return [entries[0], (info, data), *entries[2:]]


REFUSED: dict[str, tuple[Callable[[list[Entry]], list[Entry]], str]] = {
    "edited member": (_edit, "does not match its SHA-256"),
    "missing member": (lambda e: [x for x in e if x[0].name != "secrets/pin"], "secrets/pin named in MANIFEST.json "
                                                                               "is missing"),
    "extra member": (lambda e: [*e, _file("config/extra.json")], "config/extra.json is not in MANIFEST.json"),
    "dot-dot path": (lambda e: [*e[:2], _file("../escaped"), *e[2:]], "'../escaped': refused"),
    "absolute path": (lambda e: [*e[:2], _file("/tmp/escaped"), *e[2:]], "'/tmp/escaped': refused"),
    "symbolic link": (lambda e: [*e[:2], _link("config/link", "/etc/passwd"), *e[2:]],
                      "config/link is a symbolic link: refused"),
    "relative link": (lambda e: [*e[:2], _link("certs/x.crt", "root_ca.crt"), *e[2:]], "is a symbolic link"),
    "hard link": (lambda e: [*e[:2], _link("certs/y.crt", "certs/root_ca.crt", tarfile.LNKTYPE), *e[2:]],
                  "is a hard link"),
    "device": (lambda e: [*e[:2], _device(), *e[2:]], "config/null is a device: refused"),
    "manifest not first": (lambda e: [*e[1:], e[0]], "first member is not MANIFEST.json"),
    "dot-dot in the manifest": (lambda e: _manifest(e, lambda m: m["members"].append(
        {"path": "../x", "size": 1, "sha256": "0" * 64})), "'../x': refused"),
    "newer schema revision": (lambda e: _manifest(e, lambda m: m.update(revision="9999")),
                              f"schema revision 9999, which this release of hsmca does not know "
                              f"(its newest is {head_revision()})"),
    "member larger than the manifest says": (lambda e: _manifest(e, lambda m: m["members"][0].update(size=1)),
                                             "MANIFEST.json says 1"),
    "pax header bomb": (_pax_bomb, "extended tar header of"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_restore_refuses_before_writing_anything(made: tuple[DevCA, Path, BackupSummary], tmp_path: Path,
                                                 case: str) -> None:
    change, message = REFUSED[case]
    bad = _write(change(_entries(made[1])), tmp_path / "bad.tar.gz")
    home = tmp_path / "restored"
    with pytest.raises(BackupError, match=f"^[^\n]*{_re(message)}"):
        restore_backup(bad, home)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.gz"]  # no home, no staging left behind
    assert not Path("/tmp/escaped").exists()


def _re(text: str) -> str:
    return re.escape(text)


def test_a_decompression_bomb_is_refused_by_size(made: tuple[DevCA, Path, BackupSummary], tmp_path: Path) -> None:
    zeros = b"\0" * (32 * 1024 * 1024)  # 32 MiB that gzip makes ~32 KiB
    entries = _entries(made[1])
    info, _ = _file("config/zeros", zeros)
    bomb = _manifest([*entries, (info, zeros)], lambda m: m["members"].append(
        {"path": "config/zeros", "size": len(zeros), "sha256": hashlib.sha256(zeros).hexdigest()}))
    archive = _write(bomb, tmp_path / "bomb.tar.gz")
    assert archive.stat().st_size < 1024 * 1024
    with pytest.raises(BackupError, match="unpacks to 32.0 MiB, more than the 8.0 MiB allowed"):
        restore_backup(archive, tmp_path / "restored", max_bytes=8 * 1024 * 1024)
    # A manifest that under-declares: the stream is cut at what it accounts for, not read to its end.
    lying = _manifest([*entries, (info, zeros)], lambda m: m["members"].append(
        {"path": "config/zeros", "size": 10, "sha256": "0" * 64}))
    with pytest.raises(BackupError, match="config/zeros is 33554432 bytes, MANIFEST.json says 10"):
        restore_backup(_write(lying, tmp_path / "lying.tar.gz"), tmp_path / "restored")
    assert not (tmp_path / "restored").exists()


def test_not_an_archive(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"not gzip at all")
    with pytest.raises(BackupError, match="not a gzip'd tar archive"):
        restore_backup(tmp_path / "plain", tmp_path / "restored")
    (tmp_path / "cut.tar.gz").write_bytes(gzip.compress(b"\0" * 100))
    with pytest.raises(BackupError, match="not an hsmca backup|not a gzip'd tar"):
        restore_backup(tmp_path / "cut.tar.gz", tmp_path / "restored")


def test_restore_over_an_existing_ca_needs_force(made: tuple[DevCA, Path, BackupSummary], tmp_path: Path) -> None:
    ca, archive, _ = made
    home = tmp_path / "ca"
    first = restore_backup(archive, home)
    assert first.files > 0 and first.tables["intermediates"] == 1
    refused = subprocess.run([HSMCA, "restore", str(archive), "--path", str(home)], capture_output=True, text=True,
                             timeout=60, env=ca.env())
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == f"error: a CA already exists at {home}/config/ca.json: use --force to replace " \
                                     "it (its files are moved aside, its database tables dropped)"
    (home / "config" / "ca.json").unlink()  # no ca.json, but the database has the CA's rows
    with pytest.raises(BackupError, match="already holds a CA's data"):
        restore_backup(archive, home)
    again = restore_backup(archive, home, force=True)
    aside = next(home.glob("replaced-*"))
    assert {p.name for p in aside.iterdir()} >= {"config", "certs", "db", "secrets", "audit"}
    assert again.tables == first.tables and (home / "config" / "ca.json").exists()
    assert not list(home.glob(".*restore-*"))  # unpacked inside the existing home, then cleaned up
    with Store.from_config(ca.config.db.model_dump() | {"dataSource": str(home / "db" / "hsmca.sqlite")}, home) as s:
        assert s.intermediates.active() is not None


def test_tampered_archive_from_the_command_line(made: tuple[DevCA, Path, BackupSummary], tmp_path: Path) -> None:
    bad = _write(_edit(_entries(made[1])), tmp_path / "bad.tar.gz")
    done = subprocess.run([HSMCA, "restore", str(bad), "--path", str(tmp_path / "ca")], capture_output=True,
                          text=True, timeout=60, env=made[0].env())
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "certs/root_ca.crt does not match its SHA-256" in done.stderr
    assert not (tmp_path / "ca").exists()


def test_restore_into_each_backend(made: tuple[DevCA, Path, BackupSummary], server: Server, tmp_path: Path) -> None:
    """`--db`: the SQLite CA's tables into a fresh database of each backend, named in the restored ca.json."""
    ca, archive, summary = made
    url = server.new_url()
    restored = restore_backup(archive, tmp_path / "ca", db_url=url)
    assert restored.tables == summary.tables
    config = json.loads((tmp_path / "ca" / "config" / "ca.json").read_text())
    assert config["db"]["type"] == {"sqlite": "sqlite", "postgresql": "postgresql", "mariadb": "mysql"}[server.kind]
    with Store(url) as target, Store.from_config(ca.config.db.model_dump(), ca.base) as source:
        target.check_schema()
        assert [i.id for i in target.intermediates.list()] == [i.id for i in source.intermediates.list()]
        assert target.audit_checkpoints.since(None) == source.audit_checkpoints.since(None)
    with pytest.raises(BackupError, match="already holds a CA's data"):
        restore_backup(archive, tmp_path / "other", db_url=url)
    assert restore_backup(archive, tmp_path / "other", db_url=url, force=True).tables == summary.tables
