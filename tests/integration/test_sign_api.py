"""POST /sign through the Falcon app in-process: real SoftHSM keys, real SQLite, real audit file.

Every refusal of the acceptance list gets a 4xx with a message that says why, records no
certificate, and leaves an audit record.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
import subprocess
import time
from datetime import timedelta
from typing import Any, Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from falcon import testing
from joserfc import jws
from joserfc.jwk import OctKey

from appliance.api import create_app
from appliance.client.keys import build_csr
from appliance.provisioners import jose
from appliance.ra.authority import Authority
from appliance.ra.pipeline import STEPS
from appliance.store import CertificateStatus
from tests import der_surgery
from tests.integration.conftest import DevCA


@pytest.fixture(scope="module")
def authority(dev_ca: DevCA) -> Authority:
    def policy(cfg: dict[str, Any]) -> None:
        cfg["authority"]["policy"] = {"x509": {"deny": {"dns": ["*.forbidden.corp"]}}}

    dev_ca.edit_config(policy)
    return Authority.from_config(dev_ca.config)


@pytest.fixture(scope="module")
def client(authority: Authority) -> testing.TestClient:
    return testing.TestClient(create_app(authority))


@pytest.fixture(scope="module")
def prov_key(dev_ca: DevCA) -> jose.PublicKey:
    return dev_ca.provisioner_key()


def token(key: jose.PublicKey, subject: str, sans: list[str] | None = None, *,
          header: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(time.time())
    body = {"iss": "admin", "sub": subject, "aud": "https://localhost:9000/1.0/sign",
            "sans": sans if sans is not None else [subject], "iat": now, "nbf": now, "exp": now + 300,
            "jti": secrets.token_hex(32)}
    body.update(claims)
    body = {k: v for k, v in body.items() if v is not None}
    return jose.sign_token(key, body, header=header)


def csr_pem(subject: str, sans: list[str], key: Any = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    return build_csr(key, subject, sans).public_bytes(serialization.Encoding.PEM).decode()


def post_sign(client: testing.TestClient, body: Any, **kw: Any) -> testing.Result:
    if not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    return client.simulate_post("/1.0/sign", body=body, headers={"Content-Type": "application/json"}, **kw)


def counts(authority: Authority) -> dict[str, int]:
    return dict(authority.store.certificates.count_by_status())


# --- issuing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: rsa.generate_private_key(65537, 2048),
    ed25519.Ed25519PrivateKey.generate,
], ids=["ec-p256", "rsa-2048", "ed25519"])
def test_sign_issues_a_conformant_leaf(client, authority, prov_key, dev_ca, make_key):
    leaf_key = make_key()
    sans = ["api.internal", "api.corp", "10.0.1.50"]
    resp = post_sign(client, {"csr": csr_pem("api.internal", sans, leaf_key),
                              "ott": token(prov_key, "api.internal", sans)})
    assert resp.status_code == 201, resp.text
    body = resp.json
    assert set(body) >= {"crt", "ca", "certChain", "tlsOptions"}
    assert body["certChain"][0] == body["crt"] and body["certChain"][1] == body["ca"]
    cert = x509.load_pem_x509_certificate(body["crt"].encode())
    inter = x509.load_pem_x509_certificate(body["ca"].encode())
    cert.verify_directly_issued_by(inter)

    assert 2**64 < cert.serial_number < 2**128
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api.internal"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["api.internal", "api.corp"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.1.50")]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature
    assert ku.value.key_encipherment == isinstance(leaf_key, rsa.RSAPrivateKey)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key())
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == inter.extensions.get_extension_for_class(
        x509.SubjectKeyIdentifier).value.digest
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert timedelta(hours=24) <= lifetime <= timedelta(hours=24, minutes=1)

    rec = authority.store.certificates.get(cert.serial_number)
    assert rec is not None and rec.status == CertificateStatus.ISSUED
    assert rec.der == cert.public_bytes(serialization.Encoding.DER)
    assert rec.tbs == cert.tbs_certificate_bytes
    assert rec.provisioner == "admin"
    last = dev_ca.audit_events()[-1]
    assert last["decision"] == "allowed" and last["serial"] == str(cert.serial_number)
    assert last["details"]["steps"] == list(STEPS)  # the one pipeline, as every other issuance

    # The chain verifies with openssl too.
    leaf = dev_ca.base / "leaf.pem"
    leaf.write_text(body["crt"])
    out = subprocess.run(["openssl", "verify", "-CAfile", str(dev_ca.root), "-untrusted",
                          str(dev_ca.intermediate), str(leaf)], capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr


def test_requested_validity_and_names_are_canonical(client, prov_key):
    sans = ["Svc.Internal.", "::ffff:10.9.8.7"]
    resp = post_sign(client, {"csr": csr_pem("Svc.Internal.", []), "notAfter": "1h",
                              "ott": token(prov_key, "Svc.Internal.", sans)})
    assert resp.status_code == 201, resp.text
    cert = x509.load_pem_x509_certificate(resp.json["crt"].encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.internal"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.9.8.7")]
    assert cert.subject.rfc4514_string() == "CN=svc.internal"
    assert timedelta(minutes=59) < cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(hours=1, minutes=1)


# --- refusals ----------------------------------------------------------------------------------

def _alg_none(key: jose.PublicKey) -> str:
    parts = token(key, "a.internal").split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT", "kid": key.thumbprint()}).encode())
    return f"{header.rstrip(b'=').decode()}.{parts[1]}."


def _hs256_with_public_key(key: jose.PublicKey) -> str:
    pub = jose.public_jwk(key)
    now = int(time.time())
    claims = {"iss": "admin", "sub": "a.internal", "aud": "https://localhost/1.0/sign", "sans": ["a.internal"],
              "nbf": now, "exp": now + 300, "jti": secrets.token_hex(8)}
    secret = OctKey.import_key(json.dumps(pub).encode())
    return jws.serialize_compact({"alg": "HS256", "typ": "JWT", "kid": pub["kid"]}, json.dumps(claims),
                                 secret, algorithms=["HS256"])


def _bad_csr_signature() -> str:
    der = bytearray(build_csr(ec.generate_private_key(ec.SECP256R1()), "a.internal", ["a.internal"])
                    .public_bytes(serialization.Encoding.DER))
    der[-5] ^= 0xFF  # inside the signature
    b64 = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{b64}-----END CERTIFICATE REQUEST-----\n"


CASES: dict[str, tuple[Callable[[Any], Any], int, str]] = {}


def case(name: str, status: int, message: str):  # type: ignore[no-untyped-def]
    def deco(fn):  # type: ignore[no-untyped-def]
        CASES[name] = (fn, status, message)
        return fn
    return deco


@case("expired token", 401, "token expired")
def _expired(key):  # type: ignore[no-untyped-def]
    now = int(time.time())
    return {"csr": csr_pem("a.internal", ["a.internal"]),
            "ott": token(key, "a.internal", iat=now - 900, nbf=now - 900, exp=now - 120)}


@case("token for another audience", 401, "audience")
def _audience(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", ["a.internal"]),
            "ott": token(key, "a.internal", aud="https://other-ca.example/1.0/sign")}


@case("alg none", 401, "not allowed")
def _none(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", ["a.internal"]), "ott": _alg_none(key)}


@case("HS256 with the public key", 401, "not allowed")
def _hs256(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", ["a.internal"]), "ott": _hs256_with_public_key(key)}


@case("unknown provisioner", 401, "no provisioner named 'nobody'")
def _unknown(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", ["a.internal"]), "ott": token(key, "a.internal", iss="nobody")}


@case("token signed by another key", 401, "signature")
def _other_key(key):  # type: ignore[no-untyped-def]
    other = jose.generate_provisioner_key()
    return {"csr": csr_pem("a.internal", ["a.internal"]),
            "ott": token(other, "a.internal", header={"kid": key.thumbprint()})}


@case("CSR with an extra name", 403, "names differ from the token")
def _extra_name(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", ["a.internal", "evil.internal"]), "ott": token(key, "a.internal")}


@case("CSR common name differs", 403, "common name")
def _cn(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("b.internal", []), "ott": token(key, "a.internal")}


@case("CSR with a bad signature", 400, "signature")
def _bad_sig(key):  # type: ignore[no-untyped-def]
    return {"csr": _bad_csr_signature(), "ott": token(key, "a.internal")}


@case("name the policy denies", 403, 'x509.deny.dns "*.forbidden.corp"')
def _denied(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("x.forbidden.corp", []), "ott": token(key, "x.forbidden.corp")}


@case("weak key (RSA 1024)", 403, "too weak")
def _weak(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", [], rsa.generate_private_key(65537, 1024)), "ott": token(key, "a.internal")}


@case("DSA key", 403, "DSA")
def _dsa(key):  # type: ignore[no-untyped-def]
    dsa_key = dsa.generate_private_key(2048)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.internal")]))
           .sign(dsa_key, hashes.SHA256()))
    return {"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "ott": token(key, "a.internal")}


@case("validity above the maximum", 403, "exceeds the maximum")
def _too_long(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", []), "ott": token(key, "a.internal"), "notAfter": "720h"}


@case("malformed JSON", 400, "malformed JSON")
def _json(key):  # type: ignore[no-untyped-def]
    return b'{"csr": "x", "ott": '


@case("malformed PEM", 400, "invalid csr")
def _pem(key):  # type: ignore[no-untyped-def]
    return {"csr": "-----BEGIN CERTIFICATE REQUEST-----\nnot base64 at all\n-----END CERTIFICATE REQUEST-----\n",
            "ott": token(key, "a.internal")}


@case("missing ott", 400, "missing ott")
def _no_ott(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", [])}


@case("10 MB body", 413, "exceeds the limit")
def _huge(key):  # type: ignore[no-untyped-def]
    return json.dumps({"csr": "A" * (10 * 1024 * 1024), "ott": "x"}).encode()


# What each of these sent got a 500 before the one pipeline; now a 4xx that says why.

@case("deeply nested JSON body", 400, "nested too deeply")
def _nested_body(key):  # type: ignore[no-untyped-def]
    return b"[" * 50000


@case("deeply nested JSON in a field", 400, "nested too deeply")
def _nested_field(key):  # type: ignore[no-untyped-def]
    return b'{"csr": ' + b"[" * 50000


@case("deeply nested token payload", 400, "nested too deeply")
def _nested_token(key):  # type: ignore[no-untyped-def]
    header = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": key.thumbprint()}).encode()).rstrip(b"=")
    payload = base64.urlsafe_b64encode(b"[" * 10000).rstrip(b"=")  # a token may be 16 KiB
    return {"csr": csr_pem("a.internal", []), "ott": f"{header.decode()}.{payload.decode()}.c2ln"}


@case("CSR with a duplicate extension", 400, "appears twice")
def _duplicate_extension(key):  # type: ignore[no-untyped-def]
    return {"csr": der_surgery.csr_pem(der_surgery.csr_with_a_duplicate_extension("a.internal")),
            "ott": token(key, "a.internal")}


@case("notBefore in the year 9999", 400, "out of range")
def _nb_9999(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", []), "ott": token(key, "a.internal"), "notBefore": "9999-12-31T23:59:59Z"}


@case("notBefore before year 1 in UTC", 400, "out of range")
def _nb_year_1(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", []), "ott": token(key, "a.internal"),
            "notBefore": "0001-01-01T00:00:00+01:00"}


@case("notAfter after year 9999 in UTC", 400, "out of range")
def _na_9999(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", []), "ott": token(key, "a.internal"),
            "notAfter": "9999-12-31T23:59:59-01:00"}


@case("token exp in the year 9999", 400, "out of range")
def _exp_9999(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", []), "ott": token(key, "a.internal", exp=253402300799)}


@case("a full-width email address", 400, "user@corp.internal")
def _fullwidth(key):  # type: ignore[no-untyped-def]
    return {"csr": csr_pem("a.internal", []), "ott": token(key, "a.internal", ["a.internal", "user@ｃｏｒｐ.internal"])}


@pytest.mark.parametrize("name", list(CASES))
def test_refusals_are_clear_change_nothing_and_are_audited(name, client, authority, prov_key, dev_ca):
    build, status, message = CASES[name]
    before_counts, before_events = counts(authority), len(dev_ca.audit_events())
    resp = post_sign(client, build(prov_key))
    assert resp.status_code == status, resp.text
    body = resp.json
    assert body["status"] == status
    assert message in body["message"], body
    assert "Traceback" not in resp.text
    assert counts(authority) == before_counts
    events = dev_ca.audit_events()[before_events:]
    assert len(events) == 1 and events[0]["decision"] == "denied"
    assert events[0]["status"] == status and events[0]["request_id"] == body["requestId"]
    assert "eyJ" not in json.dumps(events)  # no token in the audit trail


def test_replayed_token_is_refused(client, authority, prov_key, dev_ca):
    ott = token(prov_key, "replay.internal")
    first = post_sign(client, {"csr": csr_pem("replay.internal", []), "ott": ott})
    assert first.status_code == 201
    before = counts(authority)
    again = post_sign(client, {"csr": csr_pem("replay.internal", []), "ott": ott})
    assert again.status_code == 401
    assert "already used" in again.json["message"]
    assert counts(authority) == before
    assert dev_ca.audit_events()[-1]["decision"] == "denied"


# --- the read-only step endpoints ---------------------------------------------------------------

@pytest.mark.parametrize("prefix", ["", "/1.0"])
def test_step_read_endpoints(client, dev_ca, prefix):
    assert client.simulate_get(f"{prefix}/health").json["status"] == "ok"
    assert client.simulate_get(f"{prefix}/version").json["requireClientAuthentication"] is False
    root = client.simulate_get(f"{prefix}/root/{dev_ca.root_fingerprint}")
    assert root.status_code == 200 and root.json["ca"] == dev_ca.root.read_text()
    assert client.simulate_get(f"{prefix}/roots").json["crts"] == [dev_ca.root.read_text()]
    assert client.simulate_get(f"{prefix}/intermediates").json["crts"] == [dev_ca.intermediate.read_text()]
    assert client.simulate_get(f"{prefix}/roots.pem").text == dev_ca.root.read_text()
    provs = client.simulate_get(f"{prefix}/provisioners", params={"limit": "100"}).json
    assert provs["nextCursor"] == ""
    (p,) = provs["provisioners"]
    assert p["type"] == "JWK" and p["name"] == "admin" and "d" not in p["key"]
    enc = client.simulate_get(f"{prefix}/provisioners/{p['key']['kid']}/encrypted-key").json["key"]
    assert enc == p["encryptedKey"]
    assert jose.decrypt_jwk(enc, b"integration-test-password").is_private


def test_errors_have_step_shape(client):
    missing = client.simulate_get("/root/" + "00" * 32)
    assert missing.status_code == 404 and set(missing.json) >= {"status", "message"}
    assert client.simulate_get("/no/such/route").json["status"] == 404
    assert client.simulate_get("/1.0/sign").status_code == 405
    assert client.simulate_get("/provisioners", params={"limit": "x"}).status_code == 400


def test_encrypted_keys_can_be_withheld(dev_ca, authority):
    hardened = authority.config.model_copy(deep=True)
    hardened.authority.publishEncryptedKeys = False
    app = testing.TestClient(create_app(Authority(hardened, authority.store, authority.audit)))
    (p,) = app.simulate_get("/provisioners").json["provisioners"]
    assert "encryptedKey" not in p
    resp = app.simulate_get(f"/provisioners/{p['key']['kid']}/encrypted-key")
    assert resp.status_code == 404 and "does not publish" in resp.json["message"]


def test_provisioner_policy_and_claims_apply_on_top_of_the_authority(authority, prov_key):
    cfg = authority.config.model_copy(deep=True)
    prov = cfg.authority.provisioners[0].model_dump(exclude_none=True)
    prov["policy"] = {"x509": {"allow": {"dns": ["*.team.corp"]}}}
    prov["claims"] = {"maxTLSCertDuration": "2h", "defaultTLSCertDuration": "1h"}
    data = cfg.model_dump(exclude_none=True)
    data["authority"]["provisioners"] = [prov]
    team = testing.TestClient(create_app(Authority(type(cfg).model_validate(data), authority.store, authority.audit)))

    ok = post_sign(team, {"csr": csr_pem("api.team.corp", []), "ott": token(prov_key, "api.team.corp")})
    assert ok.status_code == 201, ok.text
    cert = x509.load_pem_x509_certificate(ok.json["crt"].encode())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= timedelta(hours=1, minutes=1)

    outside = post_sign(team, {"csr": csr_pem("api.other.corp", []), "ott": token(prov_key, "api.other.corp")})
    assert outside.status_code == 403 and 'provisioner "admin"' in outside.json["message"]
    # the authority's deny rule still applies under the provisioner's allow rule
    denied = post_sign(team, {"csr": csr_pem("x.forbidden.corp", []), "ott": token(prov_key, "x.forbidden.corp")})
    assert denied.status_code == 403 and "*.forbidden.corp" in denied.json["message"]
    too_long = post_sign(team, {"csr": csr_pem("b.team.corp", []), "ott": token(prov_key, "b.team.corp"),
                                "notAfter": "3h"})
    assert too_long.status_code == 403 and "maxTLSCertDuration" in too_long.json["message"]
