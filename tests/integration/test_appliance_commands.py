"""`hsmca appliance configure` and `init`, the appliance's boot steps, run as the image's units run them, on
directories made here (the image's own boot test is `make image-boot`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .conftest import HSMCA


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HSMCA, "appliance", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def _disk(tmp_path: Path, **cfg: object) -> Path:
    disk = tmp_path / "config-disk"
    disk.mkdir()
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["ca.test", "127.0.0.1"], "ntp": ["10.0.0.123"],
                                                     **cfg}))
    (disk / "password.txt").write_text("appliance-test-password\n")
    return disk


def test_configure_then_init_makes_a_dev_ca_once(tmp_path: Path) -> None:
    disk, run, home = _disk(tmp_path, mode="dev", outbound=[{"to": "10.0.5.4", "port": 5432, "why": "db"}]), \
        tmp_path / "run", tmp_path / "home"
    done = _run("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home), "--user", "root")
    assert done.returncode == 0, done.stderr
    assert "dev mode): 1 outbound rule(s), ports 9000/9080" in done.stdout
    assert 'ip daddr 10.0.5.4/32 tcp dport 5432 accept comment "db"' in (run / "hsmca" / "firewall.nft").read_text()
    assert (run / "systemd" / "network" / "50-wired.network").read_text().startswith("[Match]")
    assert (run / "hsmca" / "password").stat().st_mode & 0o777 == 0o400
    env = {"HSMCA_PATH": str(home)}
    env.pop("SOFTHSM2_CONF", None)
    made = _run("init", "--run-dir", str(run), "--home", str(home), env=env)
    assert made.returncode == 0, made.stderr
    assert "dev CA made: root fingerprint" in made.stdout
    config = json.loads((home / "config" / "ca.json").read_text())
    assert config["dnsNames"] == ["ca.test", "127.0.0.1"] and config["audit"]["key"]
    again = _run("init", "--run-dir", str(run), "--home", str(home), env=env)
    assert again.returncode == 0 and "nothing to do" in again.stdout


def test_refusals_are_plain(tmp_path: Path) -> None:
    missing = _run("configure", "--config-dir", str(tmp_path / "absent"), "--run-dir", str(tmp_path / "run"),
                   "--home", str(tmp_path / "home"), "--user", "root")
    assert missing.returncode == 1 and "is the config disk, label HSMCA-CONFIG, attached?" in missing.stderr
    disk = _disk(tmp_path, outbound=[{"to": "kms.example.com", "port": 443, "why": "KMS"}])
    bad = _run("configure", "--config-dir", str(disk), "--run-dir", str(tmp_path / "run"),
               "--home", str(tmp_path / "home"), "--user", "root")
    assert bad.returncode == 1 and "names are not allowed" in bad.stderr and "Traceback" not in bad.stderr
    for junk in ("[" * 100_000, "{" + " " * (2 << 20) + "}"):  # nested past the parser, larger than a config
        (disk / "appliance.json").write_text(junk)
        refused = _run("configure", "--config-dir", str(disk), "--run-dir", str(tmp_path / "run"),
                       "--home", str(tmp_path / "home"), "--user", "root")
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "not a valid appliance configuration" in refused.stderr or "larger than" in refused.stderr
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["ca.test"], "ntp": ["10.0.0.1"]}))
    assert _run("configure", "--config-dir", str(disk), "--run-dir", str(tmp_path / "run"),
                "--home", str(tmp_path / "home"), "--user", "root").returncode == 0
    production = _run("init", "--run-dir", str(tmp_path / "run"), "--home", str(tmp_path / "home"))
    assert production.returncode == 1 and "production mode" in production.stderr
