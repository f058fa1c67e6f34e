"""SSH certificates from HSM-held SSH CA keys, through a real `hsmca serve` (SoftHSM, SQLite, the audit file), used
by real OpenSSH: sshd trusts hsmca's user CA and presents a host certificate from hsmca; ssh trusts hsmca's host CA
through one `@cert-authority` line and logs in with a user certificate from hsmca.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_identity

import softhsm
from appliance.client.http import CAClient
from appliance.client.tokens import provisioner_key, sign_token
from appliance.store import Store
from tests.integration import sshd as sshd_harness
from tests.integration.conftest import HSMCA, PASSWORD, DevCA, Server, hsmca, make_ca, start_server
from tests.integration.refusals import counts

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sshd_harness.available() is not None,
                                                    reason=sshd_harness.available() or "")]
USER = "hsmca-alice"
RESTRICTED_TEMPLATE = """{"type": {{ type | tojson }}, "keyId": {{ keyId | tojson }},
 "principals": {{ principals | tojson }}, "extensions": {"permit-pty": ""},
 "criticalOptions": {"force-command": "echo forced for $(whoami)", "source-address": {{ data["from"] | tojson }}}}"""


@dataclass
class World:
    ca: DevCA
    server: Server
    base: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("ssh")
    ca = make_ca(base / "ca")
    again = hsmca(ca, "ssh", "init-ca", check=False)  # `hsmca init` made the SSH CA keys already
    assert again.returncode == 1 and "has SSH CA keys already" in again.stderr, again.stderr
    hsmca(ca, "provisioner", "add", "hosts", "--type", "SSHPOP")

    def deny(cfg: dict[str, Any]) -> None:
        cfg["authority"]["policy"] = {"ssh": {"user": {"deny": {"principal": ["root"]}}}}
        cfg["authority"]["claims"]["minHostSSHCertDuration"] = "5s"  # the renewal daemon's test renews in seconds
        cfg["authority"]["claims"]["minUserSSHCertDuration"] = "5s"  # and a user certificate expires in seconds

    ca.edit_config(deny)
    # A provisioner whose SSH template restricts what its certificates can do (step-ca's options.ssh).
    hsmca(ca, "provisioner", "add", "restricted", "--type", "JWK", "--create", "--password-file",
          str(ca.password_file))

    def template(cfg: dict[str, Any]) -> None:
        prov = next(p for p in cfg["authority"]["provisioners"] if p["name"] == "restricted")
        prov["options"] = {"ssh": {"template": RESTRICTED_TEMPLATE, "templateData": {"from": "127.0.0.0/8"}}}

    ca.edit_config(template)
    server = start_server(ca, workers=1)
    sshd_harness.ensure_user(USER)
    try:
        yield World(ca, server, base)
    finally:
        server.stop()


def cli(world: World, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return hsmca(world.ca, *args, "--ca-url", world.server.url, "--root", str(world.ca.root),
                 "--password-file", str(world.ca.password_file), check=check)


def keygen_l(cert: Path) -> str:
    return subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True, text=True, check=True).stdout


def roots(world: World, kind: str) -> str:
    return cli(world, "ssh", "roots", *(["--host"] if kind == "host" else [])).stdout.strip()


def fetch_krl(world: World) -> bytes:
    """The KRL from the plain-HTTP listener, written where sshd's RevokedKeys points (sshd rereads it per login)."""
    data = requests.get(f"{world.server.http_url}/ssh/krl", timeout=10)
    assert data.status_code == 200 and data.content.startswith(b"SSHKRL\n\x00"), data.content[:40]
    (world.base / "revoked.krl").write_bytes(data.content)
    return data.content


@pytest.fixture(scope="module")
def host(world: World) -> Iterator[sshd_harness.Sshd]:
    """sshd with a host certificate from hsmca, trusting hsmca's user CA."""
    key = world.base / "ssh_host_key"
    cli(world, "ssh", "certificate", "host-1", str(key), "--host", "--principal", "127.0.0.1", "--force")
    (world.base / "user_ca.pub").write_text(roots(world, "user") + "\n")
    fetch_krl(world)  # nothing revoked yet: an empty KRL, which sshd must still load (it fails closed)
    server = sshd_harness.start_sshd(world.base / "sshd", host_key=key,
                                     host_certificate=key.with_name(key.name + "-cert.pub"),
                                     trusted_user_ca_keys=world.base / "user_ca.pub",
                                     revoked_keys=world.base / "revoked.krl")
    try:
        (world.base / "known_hosts").write_text(sshd_harness.known_hosts_line(server.port, roots(world, "host")) + "\n")
        yield server
    finally:
        server.stop()


def test_a_user_logs_in_with_certificates_from_hsmca_on_both_sides(world: World, host: sshd_harness.Sshd) -> None:
    key = world.base / "alice"
    before = counts(world.ca)
    out = cli(world, "ssh", "certificate", "alice@example.com", str(key), "--principal", USER, "--no-agent",
              "--not-after", "1h", "--force")
    assert "-cert.pub" in out.stderr
    cert = key.with_name(key.name + "-cert.pub")
    shown = keygen_l(cert)
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in shown, shown
    assert 'Key ID: "alice@example.com"' in shown and USER in shown
    for ext in ("permit-pty", "permit-agent-forwarding", "permit-port-forwarding", "permit-X11-forwarding",
                "permit-user-rc"):
        assert ext in shown
    assert "Signing CA: ECDSA" in shown
    done = sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts", "echo hello from $(whoami)")
    assert done.returncode == 0 and done.stdout.strip() == f"hello from {USER}", done.stderr[-2000:]
    assert counts(world.ca) == before  # SSH certificates are recorded in their own table
    event = [e for e in world.ca.audit_events() if e["action"] == "ssh.sign"][-1]
    assert event["decision"] == "allowed" and event["subject"] == "alice@example.com", event
    assert f"principal:{USER}" in event["sans"] and event["details"]["steps"] == [
        "authorize", "template", "policy", "profile", "lint", "record", "sign", "issued"]


def test_certificates_the_server_or_client_must_refuse(world: World, host: sshd_harness.Sshd) -> None:
    key = world.base / "bob"
    cli(world, "ssh", "certificate", "bob", str(key), "--principal", "hsmca-bob", "--no-agent", "--force")
    cert = key.with_name(key.name + "-cert.pub")
    refused = sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts")
    assert refused.returncode == 255, refused  # a certificate for another principal
    # The host is only trusted through hsmca's host CA: another CA's line in known_hosts refuses it.
    other = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    (world.base / "other_known_hosts").write_text(sshd_harness.known_hosts_line(host.port, other.decode()) + "\n")
    alice = world.base / "alice"
    refused = sshd_harness.ssh(host.port, USER, alice, alice.with_name("alice-cert.pub"),
                               world.base / "other_known_hosts")
    assert refused.returncode == 255 and "Host key verification failed" in refused.stderr, refused.stderr[-1500:]


def test_a_user_certificate_from_another_ca_or_expired_is_refused(world: World, host: sshd_harness.Sshd) -> None:
    from cryptography.hazmat.primitives.serialization import NoEncryption, PrivateFormat
    from cryptography.hazmat.primitives.serialization.ssh import SSHCertificateBuilder, SSHCertificateType

    # a certificate for the right user, signed by a CA sshd does not trust
    rogue_ca = ed25519.Ed25519PrivateKey.generate()
    user_key = ed25519.Ed25519PrivateKey.generate()
    now = int(time.time())
    rogue = (SSHCertificateBuilder().public_key(user_key.public_key()).serial(7).type(SSHCertificateType.USER)
             .key_id(b"mallory").valid_principals([USER.encode()]).valid_after(now - 60)
             .valid_before(now + 3600).add_extension(b"permit-pty", b"").sign(rogue_ca))
    key = world.base / "rogue"
    key.write_bytes(user_key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption()))
    key.with_name("rogue-cert.pub").write_bytes(rogue.public_bytes() + b"\n")
    refused = sshd_harness.ssh(host.port, USER, key, key.with_name("rogue-cert.pub"), world.base / "known_hosts")
    assert refused.returncode == 255, refused
    # one of hsmca's, for this user, once it has expired
    key = world.base / "judy"
    cli(world, "ssh", "certificate", "judy", str(key), "--principal", USER, "--not-after", "6s", "--no-agent",
        "--force")
    cert = key.with_name("judy-cert.pub")
    assert sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts").returncode == 0
    time.sleep(7)
    expired = sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts")
    assert expired.returncode == 255, expired
    assert "expired" in host.log().lower() or "not yet valid" in host.log().lower(), host.log()[-1500:]


def test_a_user_certificate_goes_into_the_running_ssh_agent(world: World) -> None:
    agent = subprocess.run(["ssh-agent", "-s", "-a", str(world.base / "agent.sock")], capture_output=True, text=True,
                           check=True)
    pid = int(agent.stdout.split("SSH_AGENT_PID=")[1].split(";")[0])
    try:
        env = {"SSH_AUTH_SOCK": str(world.base / "agent.sock")}
        key = world.base / "kate"
        out = hsmca(world.ca, "ssh", "certificate", "kate", str(key), "--principal", "kate", "--force",
                    "--ca-url", world.server.url, "--root", str(world.ca.root),
                    "--password-file", str(world.ca.password_file), env=env)
        assert "added to the ssh-agent" in out.stderr, out.stderr
        listed = subprocess.run(["ssh-add", "-l"], capture_output=True, text=True, env={**os.environ, **env})
        assert "ED25519-CERT" in listed.stdout, listed.stdout
    finally:
        os.kill(pid, signal.SIGTERM)


def test_sign_certifies_an_existing_public_key(world: World) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    pub = world.base / "id_ecdsa.pub"
    pub.write_bytes(key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH) + b" laptop\n")
    cli(world, "ssh", "certificate", "laura", str(pub), "--sign", "--principal", "laura", "--force")
    cert = load_ssh_public_identity(world.base.joinpath("id_ecdsa-cert.pub").read_bytes())
    assert cert.public_key() == key.public_key() and cert.valid_principals == [b"laura"]  # type: ignore[union-attr]
    assert not world.base.joinpath("id_ecdsa").exists()  # no key was made


def test_rsa_user_key_and_what_ssh_keygen_shows(world: World) -> None:
    key = world.base / "carol"
    cli(world, "ssh", "certificate", "carol", str(key), "--kty", "RSA", "--principal", "carol", "--no-agent",
        "--force")
    shown = keygen_l(key.with_name("carol-cert.pub"))
    assert "ssh-rsa-cert-v01@openssh.com user certificate" in shown, shown
    cert = load_ssh_public_identity(key.with_name("carol-cert.pub").read_bytes())
    cert.verify_cert_signature()  # type: ignore[union-attr]


def _ott(world: World, subject: str, **step: Any) -> str:
    client = CAClient(world.server.url, world.ca.root)
    kid, key = provisioner_key(client, "admin", PASSWORD, None)
    return sign_token(key, kid, "admin", subject, [subject], f"{world.server.url}/1.0/ssh/sign", None,
                      {"step": {"ssh": step}})


def _sign(world: World, ott: str, **body: Any) -> Any:
    blob = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1].decode()
    return world.server.post("/1.0/ssh/sign", json={"publicKey": blob, "ott": ott, **body})


@pytest.mark.parametrize(("step", "body", "status", "reason"), [
    ({"principals": ["root"]}, {}, 403, 'ssh.user.deny.principal "root" denies user principal "root"'),
    ({"principals": ["dave"], "validBefore": "48h"}, {}, 403, "exceeds the maximum 24h0m"),
    ({"principals": ["dave"]}, {"principals": ["dave", "root"]}, 403, "principals ['root'] are not among the token"),
    ({"certType": "host", "principals": ["web"]}, {"certType": "user"}, 403, "certType 'user' differs"),
    ({}, {"publicKey": "AAAA"}, 400, "publicKey is not an SSH public key"),
])
def test_refusals_are_audited_and_record_nothing(world: World, step: dict[str, Any], body: dict[str, Any],
                                                 status: int, reason: str) -> None:
    with _store(world) as store:
        before = store.ssh.count_by_status()
    events = len(world.ca.audit_events())
    resp = _sign(world, _ott(world, "dave", **step), **body)
    assert resp.status_code == status and reason in resp.json()["message"], resp.text
    with _store(world) as store:
        assert store.ssh.count_by_status() == before
    new = world.ca.audit_events()[events:]
    assert len(new) == 1 and new[0]["decision"] == "denied" and new[0]["status"] == status, new
    assert "eyJ" not in json.dumps(new)


def _store(world: World) -> Store:
    return Store.from_config(world.ca.config.db.model_dump(), world.ca.base)


def test_a_token_is_used_once_and_only_for_ssh(world: World) -> None:
    ott = _ott(world, "erin", principals=["erin"])
    assert _sign(world, ott).status_code == 201
    again = _sign(world, ott)
    assert again.status_code == 401 and "token already used" in again.json()["message"]
    client = CAClient(world.server.url, world.ca.root)
    kid, key = provisioner_key(client, "admin", PASSWORD, None)
    x509_token = sign_token(key, kid, "admin", "erin", ["erin"], f"{world.server.url}/1.0/sign", None)
    wrong = _sign(world, x509_token)
    assert wrong.status_code == 401 and "audience" in wrong.json()["message"], wrong.text


def test_roots_and_the_keys_stay_in_the_hsm(world: World) -> None:
    listed = world.server.get("/1.0/ssh/roots").json()
    assert set(listed) == {"userKey", "hostKey"} and listed == world.server.get("/ssh/federation").json()
    assert roots(world, "user").split()[1] == listed["userKey"][0]
    config = json.loads(world.ca.config_path.read_text())
    assert config["ssh"]["userKey"] == "pkcs11:object=ssh-user-ca"
    assert config["authority"]["claims"]["enableSSHCA"] is True
    pin = (world.ca.base / "secrets" / "pin").read_text().strip()
    out = subprocess.run(["pkcs11-tool", "--module", softhsm.DEFAULT_MODULE, "--token-label", world.ca.token_label,
                          "--login", "--pin", pin, "--list-objects", "--type", "privkey"], capture_output=True,
                         text=True, env={"SOFTHSM2_CONF": world.ca.config.kms.environment["SOFTHSM2_CONF"]})
    assert out.returncode == 0, out.stderr
    blocks = [b for b in out.stdout.split("Private Key Object") if "ssh-" in b]
    assert len(blocks) == 2, out.stdout  # the user and the host CA key
    for block in blocks:
        assert "sensitive" in block and "never extractable" in block
        assert "extractable" not in block.replace("never extractable", "")


def test_a_revoked_certificate_is_refused_once_sshd_has_the_krl(world: World, host: sshd_harness.Sshd) -> None:
    key = world.base / "frank"
    cli(world, "ssh", "certificate", "frank", str(key), "--principal", USER, "--no-agent", "--force")
    cert = key.with_name("frank-cert.pub")
    assert sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts").returncode == 0
    serial = load_ssh_public_identity(cert.read_bytes()).serial  # type: ignore[union-attr]
    events = len(world.ca.audit_events())
    out = cli(world, "ssh", "revoke", str(serial), "--reason", "laptop lost")
    assert f"SSH certificate {serial} is revoked" in out.stdout
    event = world.ca.audit_events()[events:]
    assert [e["action"] for e in event] == ["ssh.revoke"] and event[0]["serial"] == str(serial), event
    krl = fetch_krl(world)
    listed = subprocess.run(["ssh-keygen", "-Q", "-f", str(world.base / "revoked.krl"), str(cert)],
                            capture_output=True, text=True)
    assert listed.returncode != 0 and "REVOKED" in listed.stdout + listed.stderr, listed
    assert krl == world.server.get("/1.0/ssh/krl").content  # the same list on both listeners
    refused = sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts")
    assert refused.returncode == 255, refused
    assert "revoked" in host.log().lower(), host.log()[-2000:]
    # alice (not revoked) still logs in; revoking again is not an error; another serial is refused plainly
    alice = world.base / "alice"
    assert sshd_harness.ssh(host.port, USER, alice, alice.with_name("alice-cert.pub"),
                            world.base / "known_hosts").returncode == 0
    cli(world, "ssh", "revoke", str(serial))
    missing = cli(world, "ssh", "revoke", "12345", check=False)
    assert missing.returncode == 1 and "no SSH certificate with serial 12345" in missing.stderr


def test_sshpop_a_host_renews_and_rekeys_with_its_certificate_and_a_revoked_one_cannot(world: World) -> None:
    key = world.base / "host2"
    cli(world, "ssh", "certificate", "host-2", str(key), "--host", "--principal", "host2.internal", "--force")
    cert = key.with_name("host2-cert.pub")
    first = load_ssh_public_identity(cert.read_bytes())
    out = cli(world, "ssh", "renew", str(cert), str(key))
    assert "renewed certificate has been saved" in out.stderr
    renewed = load_ssh_public_identity(cert.read_bytes())
    assert renewed.serial != first.serial and renewed.valid_principals == [b"host2.internal"]  # type: ignore[union-attr]
    assert renewed.key_id == b"host-2" and renewed.public_key() == first.public_key()  # type: ignore[union-attr]
    shown = keygen_l(cert)
    assert "host certificate" in shown and "host2.internal" in shown, shown
    event = [e for e in world.ca.audit_events() if e["action"] == "ssh.renew"][-1]
    assert event["decision"] == "allowed" and event["provisioner"] == "hosts", event
    # rekey: a new key pair, certified with the same principals
    new_key = world.base / "host2-new"
    cli(world, "ssh", "rekey", str(cert), str(key), str(new_key))
    again = cli(world, "ssh", "rekey", str(cert), str(key), str(new_key), check=False)
    assert again.returncode == 1 and "exists; use --force" in again.stderr
    rekeyed = load_ssh_public_identity(new_key.with_name("host2-new-cert.pub").read_bytes())
    assert rekeyed.public_key() != first.public_key() and rekeyed.valid_principals == [b"host2.internal"]  # type: ignore[union-attr]
    # the certificate revokes itself; then it cannot renew
    cli(world, "ssh", "revoke", str(renewed.serial), "--sshpop-cert", str(cert), "--sshpop-key", str(key))  # type: ignore[union-attr]
    refused = cli(world, "ssh", "renew", str(cert), str(key), check=False)
    assert refused.returncode == 1 and f"SSH certificate {renewed.serial} was revoked" in refused.stderr, refused  # type: ignore[union-attr]
    # a user certificate cannot renew by SSHPOP (host certificates only, as in step-ca)
    alice = world.base / "alice"
    user = cli(world, "ssh", "renew", str(alice.with_name("alice-cert.pub")), str(alice), check=False)
    assert user.returncode == 1 and "must be a host certificate" in user.stderr, user.stderr
    # the key of another certificate cannot sign for this one
    forged = cli(world, "ssh", "renew", str(new_key.with_name("host2-new-cert.pub")), str(key), check=False)
    assert forged.returncode == 1 and "not signed by the key of its sshpop certificate" in forged.stderr, forged


def test_check_host_hosts_and_config(world: World, host: sshd_harness.Sshd) -> None:
    check = world.server.post("/1.0/ssh/check-host", json={"principal": "127.0.0.1", "token": ""})
    assert check.status_code == 200 and check.json() == {"exists": True}, check.text
    assert world.server.post("/ssh/check-host", json={"principal": "nowhere.internal"}).json() == {"exists": False}
    anonymous = world.server.get("/1.0/ssh/hosts")
    assert anonymous.status_code == 401 and "client certificate" in anonymous.json()["message"]
    crt, tls_key = world.base / "client.crt", world.base / "client.key"
    hsmca(world.ca, "certificate", "inventory.internal", str(crt), str(tls_key), "--ca-url", world.server.url,
          "--root", str(world.ca.root), "--password-file", str(world.ca.password_file), "--force")
    listed = world.server.get("/1.0/ssh/hosts", cert=(str(crt), str(tls_key)))
    assert listed.status_code == 200 and {"hostname": "127.0.0.1"} in listed.json()["hosts"], listed.text
    user = cli(world, "ssh", "config").stdout
    assert f"@cert-authority * {roots(world, 'host')}" in user and "# ~/.ssh/known_hosts" in user, user
    host_config = cli(world, "ssh", "config", "--host").stdout
    assert "TrustedUserCAKeys /etc/ssh/hsmca_user_ca.pub" in host_config and roots(world, "user") in host_config
    shown = hsmca(world.ca, "ssh", "inspect", str(world.base / "alice-cert.pub")).stdout
    assert "Type:        user certificate" in shown and "Key ID:      alice@example.com" in shown, shown
    assert f"Principals:  {USER}" in shown and "permit-pty" in shown


def test_the_renewal_daemon_keeps_a_host_certificate_current(world: World) -> None:
    key = world.base / "host3"
    cli(world, "ssh", "certificate", "host-3", str(key), "--host", "--principal", "host3.internal",
        "--not-after", "15s", "--force")
    cert = key.with_name("host3-cert.pub")
    first = load_ssh_public_identity(cert.read_bytes()).serial  # type: ignore[union-attr]
    marker = world.base / "renewed"
    proc = subprocess.Popen([HSMCA, "ssh", "renew", str(cert), str(key), "--daemon", "--exec", f"touch {marker}",
                             "--ca-url", world.server.url, "--root", str(world.ca.root)],
                            env=world.ca.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        sshd_harness_wait(lambda: marker.exists(), lambda: "daemon output unavailable while running", timeout=40)
        renewed = load_ssh_public_identity(cert.read_bytes())
        assert renewed.serial != first and renewed.valid_principals == [b"host3.internal"]  # type: ignore[union-attr]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "renewed" in out and "next renewal at" in out, out


def test_an_ssh_template_adds_critical_options_that_sshd_enforces(world: World, host: sshd_harness.Sshd) -> None:
    key = world.base / "ivan"
    cli(world, "ssh", "certificate", "ivan", str(key), "--principal", USER, "--no-agent", "--force",
        "--provisioner", "restricted")
    cert = key.with_name("ivan-cert.pub")
    shown = keygen_l(cert)
    assert "force-command echo forced for $(whoami)" in shown and "source-address 127.0.0.0/8" in shown, shown
    assert "permit-pty" in shown and "permit-port-forwarding" not in shown
    done = sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts", "echo what I asked")
    assert done.returncode == 0 and done.stdout.strip() == f"forced for {USER}", (done.stdout, done.stderr[-800:])
    event = [e for e in world.ca.audit_events() if e["action"] == "ssh.sign"][-1]
    assert event["provisioner"] == "restricted" and "template" in event["details"]["steps"], event


def test_every_ssh_signature_is_counted_per_backend(world: World) -> None:
    text = world.server.get("/metrics").text
    counted = [line for line in text.splitlines() if line.startswith("hsmca_ssh_certificates_signed_total{")]
    assert any('backend="pkcs11"' in line and 'cert_type="user"' in line for line in counted), counted
    assert any('cert_type="host"' in line for line in counted), counted


def test_rotation_to_an_rsa_ca_key_keeps_the_old_key_published(world: World, host: sshd_harness.Sshd) -> None:
    """`init-ca --rotate --kty RSA-3072`: new keys sign (RSA with rsa-sha2-512, never ssh-rsa), the old ones stay
    in /ssh/roots until retired, so relying parties that trust both accept old and new certificates."""
    old_user = roots(world, "user")
    hsmca(world.ca, "ssh", "init-ca", "--rotate", "--kty", "RSA-3072")
    seen = world.server.log().count("SIGHUP: ca.json reloaded")
    world.server.proc.send_signal(signal.SIGHUP)
    sshd_harness_wait(lambda: world.server.log().count("SIGHUP: ca.json reloaded") > seen, world.server.log)
    users = roots(world, "user").splitlines()
    assert len(users) == 2 and users[0].startswith("ssh-rsa ") and users[1] == old_user, users
    key = world.base / "grace"
    cli(world, "ssh", "certificate", "grace", str(key), "--principal", USER, "--no-agent", "--force")
    cert = key.with_name("grace-cert.pub")
    shown = keygen_l(cert)
    assert "Signing CA: RSA" in shown and "(using rsa-sha2-512)" in shown, shown
    (world.base / "user_ca.pub").write_text("\n".join(users) + "\n")  # sshd trusts both while the old one retires
    fetch_krl(world)
    assert sshd_harness.ssh(host.port, USER, key, cert, world.base / "known_hosts").returncode == 0
    alice = world.base / "alice"
    assert sshd_harness.ssh(host.port, USER, alice, alice.with_name("alice-cert.pub"),
                            world.base / "known_hosts").returncode == 0


def sshd_harness_wait(done: Any, log: Any, timeout: float = 30) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, log()[-3000:]
        time.sleep(0.2)


@pytest.mark.parametrize(("body", "status", "reason"), [
    ({"publicKey": "AAAA", "ott": "x"}, 400, "publicKey is not an SSH public key"),
    ({"publicKey": "ssh-dss AAAAB3NzaC1kc3MAAACBAP", "ott": "x"}, 400, "publicKey"),
    ({"publicKey": 5, "ott": "x"}, 400, "field 'publicKey' must be a string"),
    ({"publicKey": "A" * 20000, "ott": "x"}, 400, "longer than"),
    ({"ott": "x"}, 400, "missing publicKey"),
    ({"publicKey": "x", "ott": ""}, 400, "missing ott"),
    ({"publicKey": "x", "ott": "x", "principals": "root"}, 400, "must be a list of non-empty strings"),
    ({"publicKey": "x", "ott": "x", "principals": [""]}, 400, "must be a list of non-empty strings"),
    ({"publicKey": "x", "ott": "x", "principals": ["p"] * 300}, 400, "at most 256 principals"),
    ({"publicKey": "x", "ott": "x", "certType": "root"}, 400, "certType must be 'user' or 'host'"),
    ([1, 2], 400, ""),
])
def test_hostile_ssh_sign_bodies_get_a_reason(world: World, body: Any, status: int, reason: str) -> None:
    resp = world.server.post("/1.0/ssh/sign", json=body)
    assert resp.status_code == status and reason in resp.json()["message"], resp.text


def test_hostile_tokens_and_deep_json_are_refused_not_crashed(world: World) -> None:
    blob = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1].decode()
    for ott in ("a.b.c", "eyJhbGciOiJub25lIn0.e30.", "x" * 100, "...."):
        resp = world.server.post("/1.0/ssh/sign", json={"publicKey": blob, "ott": ott})
        assert resp.status_code in (400, 401) and resp.json()["message"], resp.text
    deep = "[" * 100_000 + "]" * 100_000
    resp = world.server.post("/1.0/ssh/sign", data=deep, headers={"Content-Type": "application/json"})
    assert resp.status_code in (400, 413), resp.text
    for path in ("/1.0/ssh/renew", "/1.0/ssh/rekey", "/1.0/ssh/revoke"):
        resp = world.server.post(path, json={"ott": "a.b.c", "serial": "1", "publicKey": blob})
        assert resp.status_code in (400, 401), (path, resp.text)
    assert world.server.get("/health").status_code == 200


def test_a_rotated_out_key_is_retired_by_its_fingerprint(world: World) -> None:
    """After the rotation test: the old EC user key is federated; retiring it takes it out of /ssh/roots."""
    users = roots(world, "user").splitlines()
    assert len(users) == 2
    old = users[1]
    fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", "-"], input=old + "\n", capture_output=True, text=True,
                                 check=True).stdout.split()[1]
    signing = hsmca(world.ca, "ssh", "retire-ca", users[0], check=False)
    assert signing.returncode == 1 and "no federated (rotated-out) SSH CA key matches" in signing.stderr
    done = hsmca(world.ca, "ssh", "retire-ca", fingerprint)
    assert "Retired 1 SSH CA key" in done.stdout
    seen = world.server.log().count("SIGHUP: ca.json reloaded")
    world.server.proc.send_signal(signal.SIGHUP)
    sshd_harness_wait(lambda: world.server.log().count("SIGHUP: ca.json reloaded") > seen, world.server.log)
    assert roots(world, "user").splitlines() == [users[0]]
    assert [e for e in world.ca.audit_events() if e["action"] == "ssh.ca.retire"]
