"""The real ACME clients users run — certbot (PyPI, the venv's) and lego (Debian) — against `hsmca serve`.

Issue 6's acceptance is that these clients, unmodified, obtain, renew and revoke certificates with
http-01, dns-01 and (lego) tls-alpn-01. One served CA per module with one ACME provisioner whose
validator connects to the loopback ports the clients listen on and asks the test DNS server
(acme_dns.py), which maps every name under SUFFIX to 127.0.0.1 and takes dns-01 TXT records from the
hook scripts in acme_hooks/. Every chain is checked with `openssl verify`, every revocation through
the CA's OCSP responder on the plain-HTTP listener, as a relying party would.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.certutil import load_certificates
from tests.integration.acme_dns import HOOKS, AcmeDNS
from tests.integration.conftest import DevCA, Server, free_port, start_server

pytestmark = pytest.mark.slow

SUFFIX = "acme-clients.test"
PROVISIONER = "clients"
CERTBOT = Path(sys.executable).parent / "certbot"
LEGO = shutil.which("lego")
CLIENT_TIMEOUT = 180  # one client run: account, order, validation, finalize (seconds)



def require(found: bool, what: str) -> None:
    """The clients are part of `make test` (make deps and the test extras install them): a missing one is a
    failure, not a skip that would let a broken install pass unnoticed."""
    if not found:
        pytest.fail(what)


@dataclass
class Site:
    """What the module shares: the served CA, the DNS server, and the ports the validator connects to."""

    server: Server
    dns: AcmeDNS
    http01_port: int
    tlsalpn01_port: int

    @property
    def directory(self) -> str:
        return f"{self.server.url}/acme/{PROVISIONER}/directory"


@pytest.fixture(scope="module")
def site(dev_ca: DevCA) -> Iterator[Site]:
    http01_port, tlsalpn01_port = free_port(), free_port()
    with AcmeDNS(suffixes=(SUFFIX,)) as dns:
        def add(cfg: dict[str, Any]) -> None:
            # Wildcards need allowWildcardNames at every policy level (authority and provisioner).
            cfg["authority"].setdefault("policy", {}).setdefault("x509", {})["allowWildcardNames"] = True
            cfg["authority"]["provisioners"].append({
                "type": "ACME", "name": PROVISIONER, "http01Port": http01_port,
                "tlsalpn01Port": tlsalpn01_port, "resolvers": [dns.address], "validationTimeout": 10,
                "policy": {"x509": {"allow": {"dns": [f"*.{SUFFIX}"]}, "allowWildcardNames": True}}})

        dev_ca.edit_config(add)
        server = start_server(dev_ca)
        try:
            yield Site(server, dns, http01_port, tlsalpn01_port)
        finally:
            server.stop()


def run(cmd: list[str], env: dict[str, str], cwd: Path, site: Site) -> str:
    """Run a client to completion; on failure, the assertion carries its output and the server's log tail."""
    try:
        done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=CLIENT_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{cmd[0]} timed out after {CLIENT_TIMEOUT}s: {' '.join(cmd)}\n{e.stdout!r}\n"
                             f"{e.stderr!r}\n--- server log (tail) ---\n{site.server.log()[-4000:]}") from None
    output = done.stdout + done.stderr
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {done.returncode}:\n{output}\n"
                             f"--- server log (tail) ---\n{site.server.log()[-4000:]}")
    return output


# --- what a relying party checks -----------------------------------------------------------------------------


def verify_chain(root: Path, fullchain: Path, names: list[str]) -> x509.Certificate:
    """`openssl verify -CAfile root -untrusted <intermediates> leaf`, and the leaf's DNS names exactly `names`."""
    certs = load_certificates(fullchain)
    assert len(certs) >= 2, f"{fullchain} holds {len(certs)} certificate(s); the chain must come with the leaf"
    leaf_path = fullchain.with_name(fullchain.name + ".leaf.pem")
    rest_path = fullchain.with_name(fullchain.name + ".intermediates.pem")
    leaf_path.write_bytes(certs[0].public_bytes(Encoding.PEM))
    rest_path.write_bytes(b"".join(c.public_bytes(Encoding.PEM) for c in certs[1:]))
    done = subprocess.run(["openssl", "verify", "-CAfile", str(root), "-untrusted", str(rest_path), str(leaf_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"{leaf_path}: OK" in done.stdout, done.stdout + done.stderr
    san = certs[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == sorted(names)
    return certs[0]


def ocsp_status(site: Site, leaf: x509.Certificate, tmp: Path) -> str:
    """What `openssl ocsp` says about `leaf` on the CA's plain-HTTP listener (response signature checked)."""
    path = tmp / f"ocsp-{leaf.serial_number:x}.pem"
    path.write_bytes(leaf.public_bytes(Encoding.PEM))
    ca = site.server.ca
    done = subprocess.run(["openssl", "ocsp", "-issuer", str(ca.intermediate), "-cert", str(path),
                           "-url", f"{site.server.http_url}/ocsp", "-CAfile", str(ca.root)],
                          capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode == 0 and "Response verify OK" in output, output
    return output


def assert_revoked(site: Site, leaf: x509.Certificate, tmp: Path, reason: str) -> None:
    """OCSP reports the certificate revoked with `reason` (waits for a response cached before, with a deadline)."""
    deadline = time.monotonic() + 30
    while True:
        output = ocsp_status(site, leaf, tmp)
        if ": revoked" in output or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert ": revoked" in output and f"Reason: {reason}" in output, output


def assert_good(site: Site, leaf: x509.Certificate, tmp: Path) -> None:
    output = ocsp_status(site, leaf, tmp)
    assert ": good" in output, output


# --- certbot ---------------------------------------------------------------------------------------------------


def certbot(site: Site, home: Path, *args: str) -> str:
    """certbot with all its state in `home`, trusting only the test root, never prompting."""
    require(CERTBOT.exists(), f"certbot is not installed ({CERTBOT}): `pip install -e '.[test]'` brings it")
    env = {**os.environ, "REQUESTS_CA_BUNDLE": str(site.server.ca.root), **site.dns.hook_env()}
    return run([str(CERTBOT), *args, "--config-dir", str(home / "config"), "--work-dir", str(home / "work"),
                "--logs-dir", str(home / "logs"), "--non-interactive", "--server", site.directory],
               env, home, site)


def certbot_live(home: Path, name: str) -> Path:
    return home / "config" / "live" / name / "fullchain.pem"


REGISTER = ("--agree-tos", "--email", f"ops@{SUFFIX}", "--no-eff-email")


def test_certbot_standalone_http01_obtain_renew_revoke(site: Site, tmp_path: Path) -> None:
    name = f"www.certbot.{SUFFIX}"
    certbot(site, tmp_path, "certonly", *REGISTER, "--standalone", "--preferred-challenges", "http",
            "--http-01-address", "127.0.0.1", "--http-01-port", str(site.http01_port),
            "--cert-name", "http", "-d", name)
    first = verify_chain(site.server.ca.root, certbot_live(tmp_path, "http"), [name])
    assert_good(site, first, tmp_path)

    # renew reads the authenticator and its port back from certbot's renewal config
    certbot(site, tmp_path, "renew", "--cert-name", "http", "--force-renewal", "--no-random-sleep-on-renew")
    renewed = verify_chain(site.server.ca.root, certbot_live(tmp_path, "http"), [name])
    assert renewed.serial_number != first.serial_number

    cert_path = tmp_path / "config" / "live" / "http" / "cert.pem"
    out = certbot(site, tmp_path, "revoke", "--cert-path", str(cert_path), "--reason", "keycompromise",
                  "--no-delete-after-revoke")
    assert "revoked" in out.lower(), out
    assert_revoked(site, renewed, tmp_path, "keyCompromise")
    assert_good(site, first, tmp_path)  # only what was asked for


def test_certbot_manual_dns01_with_hooks_wildcard_and_renew(site: Site, tmp_path: Path) -> None:
    names = [f"dns.certbot.{SUFFIX}", f"*.dns.certbot.{SUFFIX}"]
    hooks = ("--manual", "--preferred-challenges", "dns",
             "--manual-auth-hook", str(HOOKS / "certbot_auth.sh"),
             "--manual-cleanup-hook", str(HOOKS / "certbot_cleanup.sh"))
    certbot(site, tmp_path, "certonly", *REGISTER, *hooks, "--cert-name", "dns", "-d", names[0], "-d", names[1])
    first = verify_chain(site.server.ca.root, certbot_live(tmp_path, "dns"), names)
    # the cleanup hook ran: nothing is left on the DNS server
    assert site.dns.txt(f"_acme-challenge.{names[0]}") == []

    certbot(site, tmp_path, "renew", "--cert-name", "dns", "--force-renewal", "--no-random-sleep-on-renew")
    renewed = verify_chain(site.server.ca.root, certbot_live(tmp_path, "dns"), names)
    assert renewed.serial_number != first.serial_number


# --- lego ------------------------------------------------------------------------------------------------------


def lego(site: Site, home: Path, challenge: list[str], domains: list[str], *command: str) -> str:
    """lego with its state under `home` (--path), trusting only the test root; `challenge` picks the solver."""
    require(LEGO is not None, "lego is not on PATH: `make deps` installs Debian's lego")
    assert LEGO is not None
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(site.server.ca.root), **site.dns.hook_env(),
           # exec is a "sequential" provider: lego waits EXEC_SEQUENCE_INTERVAL (60 s by default) between two
           # authorizations (a wildcard and its base name), which real DNS needs and this server does not
           "EXEC_PATH": str(HOOKS / "lego_exec.sh"), "EXEC_SEQUENCE_INTERVAL": "1", "EXEC_POLLING_INTERVAL": "1",
           "EXEC_PROPAGATION_TIMEOUT": "30"}
    flags = [f"--domains={d}" for d in domains]
    return run([LEGO, "--server", site.directory, "--accept-tos", "--email", f"ops@{SUFFIX}",
                "--path", str(home / "lego"), *challenge, *flags, *command], env, home, site)


def lego_bundle(home: Path, domain: str) -> Path:
    """lego writes leaf + issuer to certificates/<domain>.crt (a wildcard's `*` becomes `_`)."""
    return home / "lego" / "certificates" / f"{domain.replace('*', '_')}.crt"


def lego_http(site: Site) -> list[str]:
    return ["--http", "--http.port", f"127.0.0.1:{site.http01_port}"]


def test_lego_http01_obtain_renew_revoke(site: Site, tmp_path: Path) -> None:
    name = f"www.lego.{SUFFIX}"
    lego(site, tmp_path, lego_http(site), [name], "run")
    first = verify_chain(site.server.ca.root, lego_bundle(tmp_path, name), [name])
    issuer = load_certificates(tmp_path / "lego" / "certificates" / f"{name}.issuer.crt")
    assert issuer[0].subject == load_certificates(site.server.ca.intermediate)[0].subject

    # --days beyond any lifetime forces the renewal now
    lego(site, tmp_path, lego_http(site), [name], "renew", "--days", "9999", "--no-random-sleep")
    renewed = verify_chain(site.server.ca.root, lego_bundle(tmp_path, name), [name])
    assert renewed.serial_number != first.serial_number

    lego(site, tmp_path, lego_http(site), [name], "revoke", "--reason", "1", "--keep")
    assert_revoked(site, renewed, tmp_path, "keyCompromise")


def test_lego_tls_alpn01(site: Site, tmp_path: Path) -> None:
    name = f"alpn.lego.{SUFFIX}"
    lego(site, tmp_path, ["--tls", "--tls.port", f"127.0.0.1:{site.tlsalpn01_port}"], [name], "run")
    leaf = verify_chain(site.server.ca.root, lego_bundle(tmp_path, name), [name])
    assert_good(site, leaf, tmp_path)


def test_lego_dns01_exec_wildcard_renew_revoke(site: Site, tmp_path: Path) -> None:
    names = [f"*.dns.lego.{SUFFIX}", f"dns.lego.{SUFFIX}"]
    dns01 = ["--dns", "exec", "--dns.resolvers", site.dns.address, "--dns.disable-cp"]
    lego(site, tmp_path, dns01, names, "run")
    first = verify_chain(site.server.ca.root, lego_bundle(tmp_path, names[0]), names)
    assert site.dns.txt(f"_acme-challenge.{names[1]}") == []  # lego cleaned up through the hook

    lego(site, tmp_path, dns01, names, "renew", "--days", "9999", "--no-random-sleep")
    renewed = verify_chain(site.server.ca.root, lego_bundle(tmp_path, names[0]), names)
    assert renewed.serial_number != first.serial_number

    lego(site, tmp_path, dns01, names, "revoke", "--reason", "5", "--keep")
    assert_revoked(site, renewed, tmp_path, "cessationOfOperation")
