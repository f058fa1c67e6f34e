"""POST /renew and /rekey against a served CA: mTLS with requests over real TLS, and the x5c bearer token.

Real SoftHSM keys, real SQLite, a real `hsmca serve` (HTTPS workers with optional client certificates).
Revocation goes through RevocationStore.revoke on the CA's own database, as the revoke endpoint will.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from falcon import testing
from joserfc.jwk import ECKey

from appliance.api import create_app
from appliance.client.keys import build_csr
from appliance.client.renewal import renew_token
from appliance.provisioners import jose
from appliance.ra.authority import Authority
from appliance.ra.pipeline import STEPS
from appliance.store import Store
from tests import der_surgery
from tests.integration.conftest import DevCA, Server, hsmca, openssl_verify_chain


@pytest.fixture(scope="module")
def ca(short_lived_ca: DevCA) -> DevCA:
    return short_lived_ca


@pytest.fixture(scope="module")
def served(short_lived_server: Server) -> Server:
    return short_lived_server


def issue(server: Server, name: str, *extra: str) -> tuple[Path, Path]:
    ca = server.ca
    crt, key = ca.base / f"{name}.crt", ca.base / f"{name}.key"
    hsmca(ca, "certificate", name, str(crt), str(key), "--san", f"alt.{name}", "--ca-url", server.url,
          "--root", str(ca.root), "--password-file", str(ca.password_file), "--force", *extra)
    return crt, key


def leaf(data: str | bytes | Path) -> x509.Certificate:
    raw = data.read_bytes() if isinstance(data, Path) else data.encode() if isinstance(data, str) else data
    return x509.load_pem_x509_certificates(raw)[0]


def sans(cert: x509.Certificate) -> list[str]:
    return sorted(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
                  .get_values_for_type(x509.DNSName))


def renew_mtls(server: Server, crt: Path, key: Path, path: str = "/renew", **kw: Any) -> requests.Response:
    return server.post(path, cert=(str(crt), str(key)), **kw)


def renew_bearer(server: Server, token: str, path: str = "/1.0/renew") -> requests.Response:
    return server.post(path, headers={"Authorization": f"Bearer {token}"})


def assert_successor(old: x509.Certificate, body: dict[str, Any], ca: DevCA, tmp: Path) -> x509.Certificate:
    new = leaf(body["crt"])
    assert set(body) >= {"crt", "ca", "certChain", "tlsOptions"}
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject and sans(new) == sans(old)
    assert new.public_key() == old.public_key()
    assert new.not_valid_after_utc >= old.not_valid_after_utc
    lifetime = lambda c: c.not_valid_after_utc - c.not_valid_before_utc  # noqa: E731
    assert lifetime(new) == lifetime(old)
    chain = tmp / f"{new.serial_number}.crt"
    chain.write_text("".join(body["certChain"]))
    assert ": OK" in openssl_verify_chain(ca.root, chain)
    return new


def db(ca: DevCA) -> Store:
    return Store.from_config(ca.config.db.model_dump(), ca.base)


# --- mTLS ------------------------------------------------------------------------------------

def test_renew_over_mtls(served: Server, tmp_path: Path):
    crt, key = issue(served, "mtls.corp")
    old = leaf(crt)
    for path in ("/renew", "/1.0/renew"):
        resp = renew_mtls(served, crt, key, path)
        assert resp.status_code == 201, resp.text
        assert_successor(old, resp.json(), served.ca, tmp_path)
    record = db(served.ca).certificates.get(leaf(resp.json()["crt"]).serial_number)
    assert record is not None and record.status == "issued"
    events = [e for e in served.ca.audit_events() if e["action"] == "x509.renew" and e["decision"] == "allowed"]
    assert events and events[-1]["details"]["renewed"] == str(old.serial_number)
    assert events[-1]["details"]["via"] == "mtls" and events[-1]["details"]["steps"] == list(STEPS)
    server_tls = [e for e in served.ca.audit_events() if e["action"] == "x509.sign.server"]
    assert server_tls and all(e["details"]["steps"] == list(STEPS) for e in server_tls)


def test_clients_without_a_certificate_are_served_and_renew_needs_a_credential(served: Server):
    assert served.get("/health").status_code == 200
    resp = served.post("/renew")
    assert resp.status_code == 401
    assert "client certificate" in resp.json()["message"]


def test_hsmca_renew_command_mtls_and_bearer(served: Server):
    crt, key = issue(served, "cli.corp")
    first = leaf(crt)
    ca = served.ca
    out = hsmca(ca, "renew", str(crt), str(key), "--ca-url", served.url, "--root", str(ca.root))
    assert "does not need renewal" in out.stderr and leaf(crt).serial_number == first.serial_number
    hsmca(ca, "renew", str(crt), str(key), "--ca-url", served.url, "--root", str(ca.root), "--force",
          "--exec", f"touch {ca.base / 'hook-ran'}")
    second = leaf(crt)
    assert second.serial_number != first.serial_number and (ca.base / "hook-ran").exists()
    assert len(x509.load_pem_x509_certificates(crt.read_bytes())) == 2
    hsmca(ca, "renew", str(crt), str(key), "--ca-url", served.url, "--root", str(ca.root), "--force", "--bearer")
    assert leaf(crt).serial_number not in (first.serial_number, second.serial_number)
    assert ": OK" in openssl_verify_chain(ca.root, crt)


# --- bearer token ----------------------------------------------------------------------------

def test_renew_with_the_x5c_bearer_token(served: Server, tmp_path: Path):
    crt, key = issue(served, "bearer.corp")
    old = leaf(crt)
    token = renew_token(x509.load_pem_x509_certificates(crt.read_bytes()), key, served.url)
    resp = renew_bearer(served, token)
    assert resp.status_code == 201, resp.text
    assert_successor(old, resp.json(), served.ca, tmp_path)
    replay = renew_bearer(served, token)
    assert replay.status_code == 401 and "already used" in replay.json()["message"]


def forged(chain: list[x509.Certificate], signer: Any, url: str, **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": chain[0].subject.rfc4514_string().removeprefix("CN="), "aud": [f"{url}/1.0/renew"],
            "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(16), **claims}
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    return jose.sign_token(ECKey.import_key(signer), {k: v for k, v in body.items() if v is not None},
                           header={"x5cInsecure": x5c})


def test_a_token_signed_by_another_key_is_refused(served: Server):
    crt, _ = issue(served, "victim.corp")
    chain = x509.load_pem_x509_certificates(crt.read_bytes())
    resp = renew_bearer(served, forged(chain, ec.generate_private_key(ec.SECP256R1()), served.url))
    assert resp.status_code == 401
    assert "not signed by the key of the certificate" in resp.json()["message"]


@pytest.mark.parametrize("claims, message", [
    ({"aud": ["https://localhost/1.0/sign"]}, "audience"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 3700, "nbf": None}, "expired"),
    ({"nbf": int(time.time()) + 3600}, "not valid before"),
    ({"jti": None}, "jti"),
    ({"sub": "someone.else"}, "subject"),
])
def test_bad_token_claims_are_refused(served: Server, claims: dict[str, Any], message: str):
    crt, key = issue(served, "claims.corp")
    chain = x509.load_pem_x509_certificates(crt.read_bytes())
    signer = serialization.load_pem_private_key(key.read_bytes(), None)
    resp = renew_bearer(served, forged(chain, signer, served.url, **claims))
    assert resp.status_code == 401, resp.text
    assert message in resp.json()["message"]


def test_malformed_bearer_tokens_get_json_errors(served: Server):
    for header in ("Bearer", "Basic abc", "Bearer not.a.jwt", "Bearer a.b"):
        resp = served.post("/renew", headers={"Authorization": header})
        assert resp.status_code == 401, (header, resp.text)
        assert resp.json()["status"] == 401


def test_a_certificate_from_another_ca_is_refused(served: Server):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "self.corp")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + timedelta(hours=1)).sign(key, hashes.SHA256()))
    store = db(served.ca)
    before = store.tokens.count()
    resp = renew_bearer(served, forged([cert], key, served.url))
    assert resp.status_code == 401 and "not issued by this CA" in resp.json()["message"]
    assert store.tokens.count() == before  # refused before any token row is written


def test_hostile_bearer_tokens_are_refused_not_crashed(served: Server):
    crt, key_file = issue(served, "hostile.corp")
    chain = x509.load_pem_x509_certificates(crt.read_bytes())
    signer = serialization.load_pem_private_key(key_file.read_bytes(), None)
    cases = {
        "sub is a list": forged(chain, signer, served.url, sub=["hostile.corp"]),
        "unknown key algorithm": forged([x509.load_der_x509_certificate(
            der_surgery.with_unknown_key_algorithm(chain[0]))], signer, served.url),
        "malformed extension": forged([x509.load_der_x509_certificate(der_surgery.with_garbled_san(chain[0]))],
                                      signer, served.url),
    }
    for what, token in cases.items():
        resp = renew_bearer(served, token)
        assert resp.status_code == 401, (what, resp.text)
        assert resp.json()["status"] == 401 and "Traceback" not in resp.text, what


def test_deeply_nested_rekey_body_is_a_bad_request(served: Server):
    resp = served.post("/1.0/rekey", data=b"[" * 50000, headers={"Content-Type": "application/json"})
    assert resp.status_code == 400 and "nested too deeply" in resp.json()["message"], resp.text


# --- revoked, expired ------------------------------------------------------------------------

def test_a_revoked_certificate_cannot_renew_or_rekey(served: Server):
    crt, key = issue(served, "revoked.corp")
    cert = leaf(crt)
    db(served.ca).revocations.revoke(cert.serial_number, reason_code=1, source="test")
    resp = renew_mtls(served, crt, key)
    assert resp.status_code == 401 and "revoked" in resp.json()["message"]
    token = renew_token(x509.load_pem_x509_certificates(crt.read_bytes()), key, served.url)
    resp = renew_bearer(served, token)
    assert resp.status_code == 401 and "revoked" in resp.json()["message"]
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), "revoked.corp", ["revoked.corp", "alt.revoked.corp"])
    resp = renew_mtls(served, crt, key, "/1.0/rekey",
                      json={"csr": csr.public_bytes(serialization.Encoding.PEM).decode()})
    assert resp.status_code == 401 and "revoked" in resp.json()["message"]
    denied = [e for e in served.ca.audit_events() if e.get("details", {}).get("renewed") == str(cert.serial_number)]
    assert denied and all(e["decision"] == "denied" for e in denied)


def test_an_expired_certificate_is_refused(served: Server):
    crt, key = issue(served, "expired.corp", "--not-after", "2s")
    time.sleep(3)
    resp = renew_mtls(served, crt, key)  # the handshake leaves dates to the endpoint: a JSON answer
    assert resp.status_code == 401 and "expired" in resp.json()["message"], resp.text
    token = renew_token(x509.load_pem_x509_certificates(crt.read_bytes()), key, served.url)
    resp = renew_bearer(served, token)
    assert resp.status_code == 401 and "expired" in resp.json()["message"]


# --- rekey -----------------------------------------------------------------------------------

def test_rekey_with_a_new_key(served: Server, tmp_path: Path):
    crt, key = issue(served, "rekey.corp")
    old = leaf(crt)
    new_key = ec.generate_private_key(ec.SECP384R1())
    csr = build_csr(new_key, "rekey.corp", ["rekey.corp", "alt.rekey.corp"])
    body = {"csr": csr.public_bytes(serialization.Encoding.PEM).decode()}
    resp = renew_mtls(served, crt, key, "/rekey", json=body)
    assert resp.status_code == 201, resp.text
    new = leaf(resp.json()["crt"])
    assert new.public_key() == new_key.public_key() and new.subject == old.subject and sans(new) == sans(old)
    (tmp_path / "rekeyed.crt").write_text("".join(resp.json()["certChain"]))
    assert ": OK" in openssl_verify_chain(served.ca.root, tmp_path / "rekeyed.crt")

    other = build_csr(new_key, "rekey.corp", ["rekey.corp", "evil.corp"])
    resp = renew_mtls(served, crt, key, "/rekey", json={"csr": other.public_bytes(serialization.Encoding.PEM).decode()})
    assert resp.status_code == 403 and "keeps the names" in resp.json()["message"]
    resp = renew_mtls(served, crt, key, "/rekey", json={"csr": "nope"})
    assert resp.status_code == 400
    resp = served.post("/rekey", json=body)
    assert resp.status_code == 401


# --- revoke over mTLS ------------------------------------------------------------------------

def test_a_certificate_revokes_itself_over_mtls_and_then_cannot_renew(served: Server):
    crt, key = issue(served, "selfrevoke.corp")
    other, _ = issue(served, "bystander.corp")
    cert, ca = leaf(crt), served.ca
    resp = served.post("/revoke", cert=(str(crt), str(key)), json={"serial": str(leaf(other).serial_number)})
    assert resp.status_code == 403 and "only revoke itself" in resp.json()["message"]
    assert db(ca).revocations.get(leaf(other).serial_number) is None

    done = hsmca(ca, "revoke", "--cert", str(crt), "--key", str(key), "--reason-code", "1",
                 "--ca-url", served.url, "--root", str(ca.root))
    assert "has been revoked" in done.stderr
    rec = db(ca).revocations.get(cert.serial_number)
    assert rec is not None and rec.source == "mtls" and int(rec.reason_code) == 1
    resp = renew_mtls(served, crt, key)
    assert resp.status_code == 401 and "revoked" in resp.json()["message"]
    again = served.post("/revoke", cert=(str(crt), str(key)), json={"serial": str(cert.serial_number)})
    assert again.status_code == 200  # idempotent: the first revocation stands


def test_renewal_grace_after_expiry_is_configurable(served: Server):
    """`authority.renewalGracePeriod` lets an expired certificate renew (in-process app, same CA and database)."""
    crt, key = issue(served, "grace.corp", "--not-after", "2s")
    time.sleep(3)
    config = served.ca.config
    config.authority.renewalGracePeriod = "1h"
    authority = Authority.from_config(config)
    try:
        client = testing.TestClient(create_app(authority))
        token = renew_token(x509.load_pem_x509_certificates(crt.read_bytes()), key, "https://localhost:9000")
        resp = client.simulate_post("/1.0/renew", headers={"Authorization": f"Bearer {token}"})
        assert resp.status_code == 201, resp.text
        new = leaf(resp.json["crt"])
        assert new.not_valid_after_utc > datetime.now(timezone.utc) and new.public_key() == leaf(crt).public_key()
    finally:
        authority.close()


def _renew_in_process(served: Server, crt: Path, key: Path, change: Any) -> Any:
    """Renew `crt` through an in-process app on the served CA's database, its ca.json changed by `change`."""
    config = served.ca.config.model_copy(deep=True)
    change(config)
    authority = Authority.from_config(config)
    try:
        client = testing.TestClient(create_app(authority))
        token = renew_token(x509.load_pem_x509_certificates(crt.read_bytes()), key, "https://localhost:9000")
        return client.simulate_post("/1.0/renew", headers={"Authorization": f"Bearer {token}"})
    finally:
        authority.close()


def _claims(**values: Any) -> Any:
    from policy import Claims

    return Claims.model_validate(values)


def test_disable_renewal_and_renewal_after_expiry_per_provisioner(served: Server):
    """step-ca's claims: the issuing provisioner's `disableRenewal`/`allowRenewalAfterExpiry` win over the
    authority's, which apply where the provisioner says nothing."""
    crt, key = issue(served, "claims.corp")
    issued_by = served.ca.config.authority.provisioners[0]
    assert issued_by.name == db(served.ca).certificates.get(leaf(crt).serial_number).provisioner

    def own(**values: Any) -> Any:
        return lambda config: setattr(config.authority.provisioners[0], "claims", _claims(**values))

    resp = _renew_in_process(served, crt, key, own(disableRenewal=True))
    assert resp.status_code == 403, resp.text
    assert resp.json["message"] == f"renewal is disabled for provisioner {issued_by.name!r}: claims.disableRenewal"

    def everywhere_but_here(config: Any) -> None:
        config.authority.claims = _claims(disableRenewal=True)
        config.authority.provisioners[0].claims = _claims(disableRenewal=False)

    assert _renew_in_process(served, crt, key, everywhere_but_here).status_code == 201
    resp = _renew_in_process(served, crt, key, lambda c: setattr(c.authority, "claims", _claims(disableRenewal=True)))
    assert resp.status_code == 403 and "this CA (authority claims)" in resp.json["message"], resp.text

    expired, expired_key = issue(served, "after-expiry.corp", "--not-after", "2s")
    time.sleep(3)
    assert _renew_in_process(served, expired, expired_key, lambda c: None).status_code == 401
    resp = _renew_in_process(served, expired, expired_key, own(allowRenewalAfterExpiry=True))
    assert resp.status_code == 201, resp.text
    assert leaf(resp.json["crt"]).not_valid_after_utc > datetime.now(timezone.utc)


def test_hsmca_renew_signals_the_pid_file_process(served: Server, tmp_path: Path):
    crt, key = issue(served, "signal.corp")
    ready, got = tmp_path / "ready", tmp_path / "got-signal"
    script = ("import pathlib, signal, sys, time\n"
              "signal.signal(signal.SIGUSR1, lambda *a: (pathlib.Path(sys.argv[2]).write_text('usr1'), sys.exit(0)))\n"
              "pathlib.Path(sys.argv[1]).touch()\n"
              "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(ready), str(got)])
    try:
        deadline = time.monotonic() + 10
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        (tmp_path / "svc.pid").write_text(f"{proc.pid}\n")
        hsmca(served.ca, "renew", str(crt), str(key), "--ca-url", served.url, "--root", str(served.ca.root),
              "--force", "--pid-file", str(tmp_path / "svc.pid"), "--signal", "USR1")
        assert proc.wait(timeout=10) == 0 and got.read_text() == "usr1"
    finally:
        proc.kill()
