"""`hsmca serve` for real (HTTPS workers, the plain-HTTP listener, housekeeping) and the client
commands run as a user runs them; every chain checked with `openssl verify`."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import ssl
import subprocess
import time

import pytest
import requests
from cryptography import x509

from tests.integration.conftest import Server, hsmca


def _openssl_verify(server: Server, crt: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", "verify", "-CAfile", str(server.ca.root), "-untrusted",
                           str(server.ca.intermediate), crt], capture_output=True, text=True)


@pytest.mark.parametrize("key_args", [["--kty", "EC"], ["--kty", "RSA", "--size", "2048"],
                                      ["--kty", "OKP", "--crv", "Ed25519"]], ids=["ec", "rsa", "ed25519"])
def test_certificate_command_gives_a_chain_openssl_accepts(server: Server, key_args):
    ca = server.ca
    name = f"api-{key_args[1].lower()}.internal"
    hsmca(ca, "certificate", name, "api.crt", "api.key", "--san", "api.corp", "--san", "10.0.1.50",
          "--ca-url", server.url, "--root", str(ca.root), "--provisioner", "admin",
          "--password-file", str(ca.password_file), "--not-after", "1h", "--force", *key_args)
    out = _openssl_verify(server, str(ca.base / "api.crt"))
    assert out.returncode == 0 and ": OK" in out.stdout, out.stdout + out.stderr
    chain = x509.load_pem_x509_certificates((ca.base / "api.crt").read_bytes())
    assert len(chain) == 2 and chain[1].subject == chain[0].issuer
    text = subprocess.run(["openssl", "x509", "-in", str(ca.base / "api.crt"), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True).stdout
    assert f"DNS:{name}" in text and "DNS:api.corp" in text and "IP Address:10.0.1.50" in text
    assert (ca.base / "api.key").stat().st_mode & 0o777 == 0o600


def test_certificate_command_reports_refusals_clearly(server: Server):
    ca = server.ca
    result = hsmca(ca, "certificate", "weak.internal", "w.crt", "w.key", "--kty", "RSA", "--size", "1024",
                   "--ca-url", server.url, "--root", str(ca.root), "--password-file", str(ca.password_file),
                   check=False)
    assert result.returncode == 1
    assert "403" in result.stderr and "too weak" in result.stderr
    assert not (ca.base / "w.crt").exists()
    wrong = ca.base / "wrong-password"
    wrong.write_text("not the password\n")
    result = hsmca(ca, "token", "x.internal", "--ca-url", server.url, "--root", str(ca.root),
                   "--password-file", str(wrong), check=False)
    assert result.returncode == 1 and "wrong password" in result.stderr


def test_bootstrap_token_and_inspect(server: Server, tmp_path):
    ca = server.ca
    client_home = {"HSMCA_PATH": str(tmp_path / "client")}
    bad = hsmca(ca, "bootstrap", "--ca-url", server.url, "--fingerprint", "ab" * 32, env=client_home, check=False)
    assert bad.returncode == 1 and "404" in bad.stderr
    hsmca(ca, "bootstrap", "--ca-url", server.url, "--fingerprint", ca.root_fingerprint, env=client_home)
    pinned = tmp_path / "client" / "certs" / "root_ca.crt"
    assert pinned.read_bytes() == ca.root.read_bytes()
    # After bootstrap, --ca-url and --root come from the pinned defaults.
    tok = hsmca(ca, "token", "svc.internal", "--san", "svc.corp", "--password-file", str(ca.password_file),
                env=client_home).stdout.strip()
    assert tok.count(".") == 2
    crt = tmp_path / "svc.crt"
    hsmca(ca, "certificate", "svc.internal", str(crt), str(tmp_path / "svc.key"), "--san", "svc.corp",
          "--token", tok, env=client_home)
    shown = json.loads(hsmca(ca, "inspect", str(crt), "--format", "json").stdout)
    assert shown[0]["subject"] == "CN=svc.internal"
    assert shown[0]["sans"] == ["DNS:svc.internal", "DNS:svc.corp"]
    assert shown[1]["subject"].startswith("CN=hsmca Intermediate CA")
    text = hsmca(ca, "inspect", str(crt)).stdout
    assert "serial" in text and "keyUsage" in text
    reused = hsmca(ca, "certificate", "svc.internal", str(tmp_path / "2.crt"), str(tmp_path / "2.key"),
                   "--san", "svc.corp", "--token", tok, env=client_home, check=False)
    assert reused.returncode == 1 and "already used" in reused.stderr


def test_plain_http_listener_serves_ca_certificates(server: Server):
    roots = requests.get(f"{server.http_url}/roots.pem", timeout=5)
    assert roots.status_code == 200 and roots.text == server.ca.root.read_text()
    inter = requests.get(f"{server.http_url}/intermediate.crt", timeout=5)
    assert inter.headers["Content-Type"] == "application/pkix-cert"
    assert x509.load_der_x509_certificate(inter.content).subject == \
        x509.load_pem_x509_certificate(server.ca.intermediate.read_bytes()).subject
    assert requests.get(f"{server.http_url}/sign", timeout=5).status_code == 404


def test_server_certificate_is_issued_by_the_intermediate(server: Server):
    host, port = "localhost", int(server.url.rsplit(":", 1)[1])
    ctx = ssl.create_default_context(cafile=str(server.ca.root))
    with socket.create_connection((host, port), timeout=5) as sock, ctx.wrap_socket(sock, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    cert = x509.load_der_x509_certificate(der)
    assert cert.issuer == x509.load_pem_x509_certificate(server.ca.intermediate.read_bytes()).subject


def test_oversize_body_is_refused_over_the_wire(server: Server):
    resp = requests.post(f"{server.url}/1.0/sign", data=b"{" + b" " * (10 * 1024 * 1024) + b"}",
                         headers={"Content-Type": "application/json"}, verify=str(server.ca.root), timeout=30)
    assert resp.status_code == 413
    assert "exceeds the limit" in resp.json()["message"]
    assert server.get("/health").status_code == 200


def test_sighup_reloads_and_sigterm_stops_gracefully(dev_ca):
    from tests.integration.conftest import start_server

    s = start_server(dev_ca, workers=1)
    old_workers = s.workers()
    port = int(s.url.rsplit(":", 1)[1])
    kept = http.client.HTTPSConnection("localhost", port, timeout=10,
                                       context=ssl.create_default_context(cafile=str(dev_ca.root)))
    kept.request("GET", "/health")  # a keep-alive connection that the reload must not drop
    assert kept.getresponse().read() and kept.sock is not None
    s.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "SIGHUP: ca.json reloaded" not in s.log():
        time.sleep(0.2)
    assert "SIGHUP: ca.json reloaded" in s.log(), s.log()[-2000:]
    assert s.workers() == old_workers  # reloaded in place
    kept.request("GET", "/health")  # http.client would raise on a connection the server closed
    assert kept.getresponse().status == 200
    kept.close()
    t0 = time.monotonic()
    s.proc.send_signal(signal.SIGTERM)
    assert s.proc.wait(timeout=60) == 0
    assert time.monotonic() - t0 < 30
    assert "stopped" in s.log()
    with pytest.raises(requests.RequestException):
        s.get("/health")
