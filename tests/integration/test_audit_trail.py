"""The audit trail of a served CA: issue, renew and revoke through `hsmca serve`, stop it, then `hsmca audit verify`
on the untouched files and on tampered copies; the checkpoint signature checked with openssl alone; two workers
write two streams; a SIGKILLed worker's stream verifies up to its last record and reports its unsealed tail."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.audit.seal import CHECKPOINT, Statement

from .conftest import HSMCA, DevCA, Server, free_port, hsmca, issue_through, make_ca, start_server, wait_for


@pytest.fixture(scope="module")
def trail(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DevCA, Path]]:
    """A CA that issued, renewed and revoked through `hsmca serve` (two workers), then stopped."""
    ca = make_ca(tmp_path_factory.mktemp("audit-ca"))
    server = start_server(ca, workers=2)
    try:
        for i in range(6):  # keep-alive off: the requests spread over both workers
            issue_through(server, f"host{i}.example")
        crt, key = ca.base / "host0.example.crt", ca.base / "host0.example.key"
        hsmca(ca, "renew", str(crt), str(key), "--ca-url", server.url, "--root", str(ca.root), "--force")
        hsmca(ca, "revoke", "--cert", str(crt), "--key", str(key), "--reason-code", "1",
              "--ca-url", server.url, "--root", str(ca.root))
    finally:
        assert server.stop() == 0
    yield ca, ca.audit_path


def _verify(ca: DevCA, *files: Path, db: bool = False) -> subprocess.CompletedProcess[str]:
    cert = ca.config.resolve(str(ca.config.audit.certificate))
    extra = ["--config", str(ca.config_path)] if db else ["--key", str(cert)]
    return hsmca(ca, "audit", "verify", *map(str, files), *extra, check=False)


def _lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def _copy(tmp_path: Path, lines: list[bytes]) -> Path:
    out = tmp_path / "audit.jsonl"
    out.write_bytes(b"".join(lines))
    return out


def test_untouched_files_verify(trail: tuple[DevCA, Path]) -> None:
    ca, path = trail
    for db in (False, True):
        done = _verify(ca, path, db=db)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "VERIFIED" in done.stdout and "Warning" not in done.stdout, done.stdout
    actions = [json.loads(raw)["action"] for raw in _lines(path)]
    assert {"x509.sign", "x509.renew", "x509.revoke", CHECKPOINT} <= set(actions), actions
    cert = x509.load_pem_x509_certificate(ca.config.resolve(str(ca.config.audit.certificate)).read_bytes())
    assert f"sha256 {cert.fingerprint(hashes.SHA256()).hex()}" in done.stdout  # the key an auditor pins


def _event_line(lines: list[bytes], start: int = 0) -> int:
    return next(i for i in range(start, len(lines)) if json.loads(lines[i])["action"] in ("x509.sign", "x509.renew"))


def _same_stream_after(lines: list[bytes], i: int) -> int:
    stream = json.loads(lines[i])["stream"]
    return next(j for j in range(i + 1, len(lines)) if json.loads(lines[j])["stream"] == stream)


def test_one_edited_line(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    lines = _lines(path)
    i = _event_line(lines)
    obj = json.loads(lines[i])
    obj["subject"] = "attacker.example"
    lines[i] = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
    done = _verify(ca, _copy(tmp_path, lines))
    assert done.returncode == 1 and "FAILED" in done.stdout
    assert f"line {i + 1})" in done.stdout or f"line {i + 1}:" in done.stdout, done.stdout


def test_one_deleted_line(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    lines = _lines(path)
    i = _event_line(lines)
    j = _same_stream_after(lines, i)
    del lines[i]
    done = _verify(ca, _copy(tmp_path, lines))
    assert done.returncode == 1 and f"line {j}:" in done.stdout and "removed" in done.stdout, done.stdout


def test_two_swapped_lines(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    lines = _lines(path)
    i = _event_line(lines)
    j = _same_stream_after(lines, i)
    lines[i], lines[j] = lines[j], lines[i]
    done = _verify(ca, _copy(tmp_path, lines))
    assert done.returncode == 1 and f"line {i + 1}:" in done.stdout, done.stdout


def test_one_inserted_line(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    lines = _lines(path)
    i = _event_line(lines)
    lines.insert(i + 1, lines[i])  # a replayed record
    done = _verify(ca, _copy(tmp_path, lines))
    assert done.returncode == 1 and f"line {i + 2}:" in done.stdout, done.stdout


def test_truncated_after_a_checkpoint_is_caught_with_the_database(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    lines = _lines(path)
    last = max(i for i, raw in enumerate(lines) if json.loads(raw)["action"] == CHECKPOINT)
    cut = _copy(tmp_path, lines[:last])  # the last checkpoint and what follows it are gone
    alone = _verify(ca, cut)
    assert alone.returncode == 0 and "not sealed" in alone.stdout, alone.stdout  # could be a stopped process
    with_db = _verify(ca, cut, db=True)
    assert with_db.returncode == 1 and "truncated" in with_db.stdout, with_db.stdout


def test_checkpoint_signature_with_openssl_alone(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    lines = _lines(path)
    cp = next(json.loads(raw)["checkpoint"] for raw in lines if json.loads(raw)["action"] == CHECKPOINT)
    statement = Statement.parse(cp["statement"])
    assert statement is not None
    number = next(n for n, raw in enumerate(lines, 1) if json.loads(raw)["stream"] == statement.stream
                  and json.loads(raw)["seq"] == statement.seq)
    line = subprocess.run(["sed", "-n", f"{number}p", str(path)], capture_output=True, check=True).stdout
    assert subprocess.run(["sha256sum"], input=line.rstrip(b"\n"), capture_output=True,
                          check=True).stdout.split()[0].decode() == statement.head
    cert = x509.load_pem_x509_certificate(ca.config.resolve(str(ca.config.audit.certificate)).read_bytes())
    pub = cert.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "audit.pub").write_bytes(pub)
    (tmp_path / "statement.txt").write_text(cp["statement"])
    (tmp_path / "sig.der").write_bytes(base64.b64decode(cp["signatures"][0]["signature"]))
    done = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "audit.pub"), "-signature",
                           str(tmp_path / "sig.der"), str(tmp_path / "statement.txt")], capture_output=True, text=True)
    assert done.returncode == 0 and "Verified OK" in done.stdout, done.stdout + done.stderr
    chain = subprocess.run(["openssl", "verify", "-CAfile", str(ca.root), "-untrusted", str(ca.intermediate),
                            str(ca.config.resolve(str(ca.config.audit.certificate)))], capture_output=True, text=True)
    assert ": OK" in chain.stdout, chain.stdout + chain.stderr  # the audit key's certificate chains to the root


def test_two_workers_and_a_killed_one(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    server: Server = start_server(ca, workers=2)
    try:
        streams: set[str] = set()
        for i in range(30):  # until both workers have written (the kernel picks which one accepts)
            issue_through(server, f"k{i}.example")
            streams = {json.loads(raw)["stream"] for raw in _lines(ca.audit_path)
                       if json.loads(raw)["action"] == "x509.sign"}
            if len(streams) == 2 and i >= 3:
                break
        victim = server.workers()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: len(server.workers()) == 2 and victim not in server.workers(), 60, "a new worker")
        issue_through(server, "after.example")
    finally:
        assert server.stop() == 0
    assert len(streams) == 2, streams  # one stream per worker process
    done = _verify(ca, ca.audit_path, db=True)
    assert done.returncode == 0, done.stdout
    assert "not sealed" in done.stdout and f":{victim}:" in done.stdout, done.stdout
    keep = tmp_path / "copy.jsonl"
    shutil.copy(ca.audit_path, keep)
    assert _verify(ca, keep).returncode == 0


def test_init_key_for_an_old_ca_and_a_key_rotation(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    first = ca.config.resolve(str(ca.config.audit.certificate))
    ca.edit_config(lambda cfg: cfg["audit"].update(key=None, certificate=None))  # a CA made before audit keys
    hsmca(ca, "intermediate", "list")  # a CLI command that audits nothing still works unsealed
    made = hsmca(ca, "audit", "init-key")
    assert "Audit key:" in made.stdout and "ca.json updated" in made.stdout, made.stdout
    again = hsmca(ca, "audit", "init-key", check=False)
    assert again.returncode == 1 and "--rotate" in again.stderr
    second = ca.config.resolve(str(ca.config.audit.certificate))
    assert second != first
    rotated = hsmca(ca, "audit", "init-key", "--rotate", "--key-type", "EC-P384")
    assert "signed by the old and the new key" in rotated.stdout, rotated.stdout
    third = ca.config.resolve(str(ca.config.audit.certificate))
    server = start_server(ca, workers=1)
    try:
        issue_through(server, "after-rotation.example")
    finally:
        assert server.stop() == 0
    # The auditor pinned the first and second certificates; the third is trusted through the rotation checkpoint.
    done = hsmca(ca, "audit", "verify", str(ca.audit_path), "--key", str(first), "--key", str(second),
                 "--config", str(ca.config_path), check=False)
    assert done.returncode == 0, done.stdout
    assert x509.load_pem_x509_certificate(third.read_bytes()).subject.rfc4514_string() in done.stdout
    only_new = hsmca(ca, "audit", "verify", str(ca.audit_path), "--key", str(third), check=False)
    assert only_new.returncode == 1 and "signed by no given audit key" in only_new.stdout


def test_verify_refuses_bad_arguments_plainly(trail: tuple[DevCA, Path], tmp_path: Path) -> None:
    ca, path = trail
    none = hsmca(ca, "audit", "verify", str(path), check=False)
    assert none.returncode == 2 and "no audit key certificate" in none.stderr
    since = hsmca(ca, "audit", "verify", str(path), "--config", str(ca.config_path), "--since", "yesterday",
                  check=False)
    assert since.returncode == 2 and "--since" in since.stderr
    missing = hsmca(ca, "audit", "verify", str(tmp_path / "nope.jsonl"), "--config", str(ca.config_path),
                    check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr  # click's usage error
    bad_db = hsmca(ca, "audit", "verify", str(path), "--key", str(ca.config.resolve(str(ca.config.audit.certificate))),
                   "--db", "not-a-url", check=False)
    assert bad_db.returncode == 2 and "not a SQLAlchemy URL" in bad_db.stderr
    later = hsmca(ca, "audit", "verify", str(path), "--config", str(ca.config_path), "--since", "2999-01-01T00:00:00Z")
    assert "VERIFIED" in later.stdout


def test_a_reload_starts_a_new_stream_and_seals_the_old_one(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    server = start_server(ca, workers=1)
    try:
        issue_through(server, "before-reload.example")
        server.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "ca.json reloaded" in server.log(), 30, "the reload")
        issue_through(server, "after-reload.example")
    finally:
        assert server.stop() == 0  # well before requestTimeout: the retired authority is closed at exit
    signs = [json.loads(raw) for raw in _lines(ca.audit_path) if json.loads(raw)["action"] == "x509.sign"]
    assert len({rec["stream"] for rec in signs[-2:]}) == 2  # the reload's new authority writes a new stream
    done = _verify(ca, ca.audit_path, db=True)
    assert done.returncode == 0 and "Warning" not in done.stdout, done.stdout


def test_a_missing_audit_certificate_is_a_plain_error(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    ca.config.resolve(str(ca.config.audit.certificate)).unlink()
    rotate = hsmca(ca, "audit", "init-key", "--rotate", check=False)
    assert rotate.returncode == 1 and "audit.certificate" in rotate.stderr and "Traceback" not in rotate.stderr
    serve = subprocess.run([HSMCA, "serve", "--address", f"127.0.0.1:{free_port()}",
                            "--http-address", f"127.0.0.1:{free_port()}"],
                           env=ca.env(), capture_output=True, text=True, timeout=120)
    assert serve.returncode == 1 and "cannot start" in serve.stderr and "audit.certificate" in serve.stderr, \
        serve.stderr
