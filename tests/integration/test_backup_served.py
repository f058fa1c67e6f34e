"""`hsmca backup` of a dev CA while `hsmca serve` runs, `hsmca restore` into another home, and a CA that serves from
it: the same root, the same answers about the certificates issued before the backup (OCSP, from the restored SoftHSM
token), none about one issued after it, a new issuance, and an audit trail that `hsmca audit verify` accepts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from appliance.certutil import load_certificates
from appliance.client.ocsp import check
from appliance.store import Store

from .conftest import HSMCA, PASSWORD, DevCA, hsmca, issue_through, start_server

pytestmark = pytest.mark.slow


def _init_with_own_softhsm(base: Path) -> DevCA:
    """`hsmca init` as on the appliance: its SoftHSM token directory under the CA's home (so the backup holds it)."""
    base.mkdir(parents=True)
    password = base / "password.txt"
    password.write_bytes(PASSWORD + b"\n")
    env = {k: v for k, v in os.environ.items() if k != "SOFTHSM2_CONF"}
    done = subprocess.run([HSMCA, "init", "--password-file", str(password)],
                          env={**env, "HSMCA_PATH": str(base / "ca")}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return DevCA(base / "ca", base / "ca" / "config" / "ca.json", password, "hsmca")


def _status(leaf: Path, http_url: str) -> str:
    cert, issuer = load_certificates(leaf)[:2]
    return check(cert, issuer, f"{http_url}/ocsp").status


def test_backup_while_serving_then_restore_elsewhere_and_serve(tmp_path: Path) -> None:
    ca = _init_with_own_softhsm(tmp_path / "a")
    server = start_server(ca, workers=1)
    try:
        leaves = [issue_through(server, f"svc{i}.example") for i in range(3)]
        hsmca(ca, "revoke", "--cert", str(leaves[0]), "--key", str(ca.base / "svc0.example.key"), "--reason-code", "1",
              "--ca-url", server.url, "--root", str(ca.root))
        archive = tmp_path / "backups" / "ca.tar.gz"
        archive.parent.mkdir()
        made = hsmca(ca, "backup", str(archive))
        late = issue_through(server, "late.example")  # after the backup: not in it
    finally:
        assert server.stop() == 0
    assert "certificates" in made.stdout and "softhsm/" in made.stdout and "vendor's tools" in made.stdout, made.stdout
    assert "holds secrets" in made.stdout and "PIN" in made.stdout, made.stdout
    assert archive.stat().st_mode & 0o777 == 0o600

    home = tmp_path / "b" / "ca"
    home.parent.mkdir()
    done = subprocess.run([HSMCA, "restore", str(archive), "--path", str(home)], env=ca.env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{ca.base} rewritten to {home}" in done.stdout and "SoftHSM" in done.stdout, done.stdout
    config = json.loads((home / "config" / "ca.json").read_text())
    assert str(ca.base) not in json.dumps(config)  # every path now under the new home, the token's too
    assert config["kms"]["environment"]["SOFTHSM2_CONF"] == str(home / "softhsm" / "softhsm2.conf")

    restored = DevCA(home, home / "config" / "ca.json", ca.password_file, ca.token_label)
    assert restored.root_fingerprint == ca.root_fingerprint
    again = start_server(restored, workers=1)
    try:
        assert again.get("/roots.pem").text == ca.root.read_text()
        assert [_status(leaf, again.http_url) for leaf in leaves] == ["revoked", "good", "good"]
        assert _status(late, again.http_url) == "unknown"
        issue_through(again, "after-restore.example")  # a new serial and token id beside the restored ones
    finally:
        assert again.stop() == 0
    with Store.from_config(restored.config.db.model_dump(), home) as store:
        serials = [load_certificates(leaf)[0].serial_number for leaf in [*leaves, late]]
        assert [store.certificates.get(s) is not None for s in serials] == [True, True, True, False]
        assert store.revocations.get(serials[0]) is not None
    files = sorted((home / "audit").glob("audit*.jsonl"))
    verified = hsmca(restored, "audit", "verify", *map(str, files), "--config", str(restored.config_path), check=False)
    assert verified.returncode == 0 and "VERIFIED" in verified.stdout, verified.stdout
    assert any('"x509.revoke"' in line for line in (home / "audit" / "audit.jsonl").read_text().splitlines())
