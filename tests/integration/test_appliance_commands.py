"""`hsmca appliance configure` and `init`, the appliance's boot steps, run as the image's units run them, on
directories made here (the image's own boot test is `make image-boot`)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import SoftHSMToken

from .conftest import HSMCA, DevCA, issue_through, start_server


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
    assert "syslog" not in config["audit"]
    # The config disk's syslog server: allowed out by itself, set in ca.json at the next boot, removed with it.
    (disk / "appliance.json").write_text(json.dumps({"mode": "dev", "dnsNames": ["ca.test"], "ntp": ["10.0.0.123"],
                                                     "syslog": {"server": "10.0.0.5", "facility": 4}}))
    assert _run("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home),
                "--user", "root").returncode == 0
    assert 'ip daddr 10.0.0.5/32 udp dport 514 accept comment "syslog (audit copy)"' in \
        (run / "hsmca" / "firewall.nft").read_text()
    again = _run("init", "--run-dir", str(run), "--home", str(home), env=env)
    assert again.returncode == 0 and "the CA exists" in again.stdout and "audit copy to syslog: udp://10.0.0.5:514" \
        in again.stdout, again.stderr
    audit = json.loads((home / "config" / "ca.json").read_text())["audit"]
    assert audit["syslog"] == {"address": "udp://10.0.0.5:514", "facility": 4, "appName": "hsmca"}
    (disk / "appliance.json").write_text(json.dumps({"mode": "dev", "dnsNames": ["ca.test"], "ntp": ["10.0.0.123"]}))
    assert _run("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home),
                "--user", "root").returncode == 0
    off = _run("init", "--run-dir", str(run), "--home", str(home), env=env)
    assert off.returncode == 0 and "audit copy to syslog: off" in off.stdout
    assert "syslog" not in json.loads((home / "config" / "ca.json").read_text())["audit"]


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
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["ca.test"], "ntp": ["10.0.0.1"], "mode": "dev"}))
    assert _run("configure", "--config-dir", str(disk), "--run-dir", str(tmp_path / "run"),
                "--home", str(tmp_path / "home"), "--user", "root").returncode == 0
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["ca.test"], "ntp": ["10.0.0.1"]}))
    assert "production mode needs hsm (module, token)" in _run(
        "configure", "--config-dir", str(disk), "--run-dir", str(tmp_path / "run"), "--home", str(tmp_path / "home"),
        "--user", "root").stderr


def test_break_glass_renders_a_shadow_copy_only_while_configured(tmp_path: Path) -> None:
    run, home, shadow = tmp_path / "run", tmp_path / "home", tmp_path / "shadow"
    shadow.write_text("root:!:20000:0:99999:7:::\nbreakglass:!:20000:0:99999:7:::\n")
    hashed = "$6$saltsalt$" + "A" * 86
    disk = _disk(tmp_path, mode="dev", breakGlass={"passwordHash": hashed})
    args = ("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home), "--user", "root",
            "--shadow", str(shadow))
    done = _run(*args)
    assert done.returncode == 0 and "BREAK-GLASS console login enabled" in done.stdout, done.stderr
    copy = run / "hsmca" / "shadow"
    assert f"breakglass:{hashed}:20000" in copy.read_text() and copy.stat().st_mode & 0o777 == 0o640
    assert shadow.read_text().count(":!:") == 2  # the image's own file is never written
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["ca.test"], "ntp": ["10.0.0.1"], "mode": "dev"}))
    again = _run(*args)
    assert again.returncode == 0 and "BREAK-GLASS" not in again.stdout and not copy.exists()
    shadow.write_text("root:!:20000:0:99999:7:::\n")
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["ca.test"], "ntp": ["10.0.0.1"], "mode": "dev",
                                                     "breakGlass": {"passwordHash": hashed}}))
    refused = _run(*args)
    assert refused.returncode == 1 and "no breakglass account" in refused.stderr and "Traceback" not in refused.stderr


def test_production_mode_waits_for_the_hsm_and_the_ceremony_then_makes_a_ca_that_issues(
        tmp_path: Path, softhsm_token: SoftHSMToken) -> None:
    """SoftHSM stands in for the vendor's HSM (a token made beforehand, as the HSM's own tools would); the test plays
    the ceremony (a root key of its own signs the CSR the appliance hands out)."""
    from datetime import datetime, timedelta, timezone

    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    import kms
    from tests.integration.signing import software_root

    run, home = tmp_path / "run", tmp_path / "home"
    hsm = {"module": "/opt/vendor/lib/libvendorhsm.so", "token": softhsm_token.label,
           "intermediateSubject": "CN=Appliance Issuing CA,O=hsmca tests"}
    disk = _disk(tmp_path, hsm=hsm)  # production: the default mode
    (disk / "hsm-pin.txt").write_text(softhsm_token.pin + "\n")
    env = {"HSMCA_PATH": str(home), "SOFTHSM2_CONF": str(softhsm_token.conf)}

    def boot() -> subprocess.CompletedProcess[str]:
        done = _run("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home),
                    "--user", "root")
        assert done.returncode == 0, done.stderr
        return _run("init", "--run-dir", str(run), "--home", str(home), env=env)

    waiting = boot()
    assert waiting.returncode == 75 and "waiting for the HSM's PKCS#11 module" in waiting.stderr, waiting.stderr
    hsm["module"] = softhsm_token.module
    (disk / "appliance.json").write_text(json.dumps({"dnsNames": ["localhost", "127.0.0.1"], "ntp": ["10.0.0.1"],
                                                     "hsm": hsm}))  # the names the test's client uses
    waiting = boot()
    assert waiting.returncode == 75 and "root_ca.crt on the config disk" in waiting.stderr, waiting.stderr
    assert not (home / "config" / "ca.json").exists()

    root, root_key = software_root("Appliance Ceremony Root")
    (disk / "root_ca.crt").write_bytes(root.public_bytes(Encoding.PEM))
    waiting = boot()
    assert waiting.returncode == 75 and "have the ceremony sign" in waiting.stderr, waiting.stderr
    request = home / "outbox" / "intermediate.csr"
    assert request.read_text() in waiting.stdout  # printed for the console too
    csr = x509.load_pem_x509_csr(request.read_bytes())
    assert csr.subject.rfc4514_string() == "CN=Appliance Issuing CA,O=hsmca tests"
    again = boot()  # no second key while the ceremony has not answered
    assert again.returncode == 75 and "BEGIN CERTIFICATE REQUEST" not in again.stdout
    assert len(json.loads(subprocess.run([HSMCA, "intermediate", "list", "--json"], capture_output=True, text=True,
                                         env={**os.environ, **env}, timeout=60).stdout)) == 1

    now = datetime.now(timezone.utc).replace(microsecond=0)
    signed = kms.intermediate_certificate(root_key, root, csr.public_key(), csr.subject,
                                          now - timedelta(minutes=1), now + timedelta(days=30))
    (disk / "intermediate_ca.crt").write_bytes(signed.public_bytes(Encoding.PEM))
    done = boot()
    assert done.returncode == 0 and "the production CA is complete" in done.stdout, done.stderr
    config = json.loads((home / "config" / "ca.json").read_text())
    assert config["audit"]["key"] and softhsm_token.label in config["kms"]["uri"]
    assert "pin-value" not in (home / "config" / "ca.json").read_text()
    assert boot().returncode == 0

    ca = DevCA(home, home / "config" / "ca.json", disk / "password.txt", softhsm_token.label)
    server = start_server(ca, env=env)
    try:
        leaf = issue_through(server, "appliance.internal", env=env)
        issuer = x509.load_pem_x509_certificates(leaf.read_bytes())[0].issuer.rfc4514_string()
        assert issuer == "CN=Appliance Issuing CA,O=hsmca tests"
    finally:
        server.stop()


def test_an_upgrade_backs_up_then_migrates_and_a_rollback_past_it_names_the_backup(tmp_path: Path) -> None:
    """What `hsmca appliance init` does at the first boot of a newer (or older) image on a kept data disk."""
    import sqlalchemy as sa
    from alembic import command

    from appliance.store.migrate import alembic_config, head_revision

    disk, run, home = _disk(tmp_path, mode="dev"), tmp_path / "run", tmp_path / "home"
    assert _run("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home),
                "--user", "root").returncode == 0
    env = {"HSMCA_PATH": str(home)}
    assert _run("init", "--run-dir", str(run), "--home", str(home), env=env).returncode == 0
    engine = sa.create_engine(f"sqlite:///{home / 'db' / 'hsmca.sqlite'}")
    with engine.begin() as connection:  # the data disk as an image one migration older left it
        command.downgrade(alembic_config(connection), "-1")
        older = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    upgraded = _run("init", "--run-dir", str(run), "--home", str(home), env=env)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"database migrated from {older} to {head_revision()}" in upgraded.stdout
    backups = list((home / "backups").glob(f"pre-upgrade-{older}-*.tar.gz"))
    assert len(backups) == 1 and backups[0].stat().st_mode & 0o777 == 0o600
    from appliance.cli.backup_archive import archive_revision

    assert archive_revision(backups[0]) == older
    with engine.begin() as connection:  # as a newer image would leave it, then this (older) image boots
        connection.execute(sa.text("UPDATE alembic_version SET version_num = 'f00dfeed0001'"))
    engine.dispose()
    rolled_back = _run("init", "--run-dir", str(run), "--home", str(home), env=env)
    assert rolled_back.returncode == 1 and "Traceback" not in rolled_back.stderr
    assert "is newer than this image knows" in rolled_back.stderr and str(backups[0]) in rolled_back.stderr


def test_init_with_an_existing_token_needs_the_ceremony_root_module_and_pin(tmp_path: Path) -> None:
    password = tmp_path / "password.txt"
    password.write_text("appliance-test-password\n")
    done = subprocess.run([HSMCA, "init", "--existing-token", "--password-file", str(password)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HSMCA_PATH": str(tmp_path / "home")})
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "--existing-token is for a production HSM: it needs --root, --module and --pin-file" in done.stderr
    assert not (tmp_path / "home" / "config" / "ca.json").exists()


def test_the_config_disk_may_not_hand_over_links_fifos_or_huge_files(tmp_path: Path) -> None:
    """configure runs as root: a symlink on the config disk must not make it copy /etc/shadow to the hsmca user."""
    run, home = tmp_path / "run", tmp_path / "home"
    disk = _disk(tmp_path, mode="dev")
    args = ("configure", "--config-dir", str(disk), "--run-dir", str(run), "--home", str(home), "--user", "root")
    (disk / "password.txt").unlink()
    (disk / "password.txt").symlink_to("/etc/shadow")
    linked = _run(*args)
    assert linked.returncode == 1 and "password.txt is a symbolic link" in linked.stderr, linked.stderr
    assert not (run / "hsmca" / "password").exists()
    (disk / "password.txt").unlink()
    os.mkfifo(disk / "password.txt")
    fifo = _run(*args)
    assert fifo.returncode == 1 and "password.txt is not a regular file" in fifo.stderr, fifo.stderr
    (disk / "password.txt").unlink()
    (disk / "root_ca.crt").write_bytes(b"x" * (64 * 1024 + 1))
    huge = _run(*args)
    assert huge.returncode == 1 and "root_ca.crt is larger than 65536 bytes" in huge.stderr, huge.stderr
    (disk / "root_ca.crt").unlink()
    (disk / "appliance.json").rename(disk / "real.json")
    (disk / "appliance.json").symlink_to(disk / "real.json")
    assert "appliance.json is a symbolic link" in _run(*args).stderr
    for result in (linked, fifo, huge):
        assert "Traceback" not in result.stderr
