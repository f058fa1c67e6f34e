"""The x5c renew token: signed by the key of the certificate it carries, for this CA's endpoint, once."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from appliance.errors import Unauthorized
from appliance.provisioners import jose
from appliance.provisioners.base import endpoint_audiences
from appliance.provisioners.x5c import verify

AUD = endpoint_audiences(["ca.corp"], "renew")


def now() -> datetime:
    return datetime.now(timezone.utc)


def certificate(key: ec.EllipticCurvePrivateKey, cn: str = "svc.corp") -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now() - timedelta(minutes=1))
            .not_valid_after(now() + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(cn), x509.DNSName("alt.corp")]), False)
            .sign(key, hashes.SHA256()))


def token(cert: x509.Certificate, signer: ec.EllipticCurvePrivateKey, header: dict[str, Any] | None = None,
          **claims: Any) -> str:
    now = int(time.time())
    body = {"sub": "svc.corp", "aud": ["https://ca.corp:9000/1.0/renew"], "iat": now, "nbf": now,
            "exp": now + 300, "jti": "abc", **claims}
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    return jose.sign_token(ECKey.import_key(signer), {k: v for k, v in body.items() if v is not None},
                           header={"x5cInsecure": x5c, **(header or {})})


def test_a_token_signed_by_the_certificates_key_verifies():
    key = ec.generate_private_key(ec.SECP256R1())
    cert = certificate(key)
    got = verify(token(cert, key, sub="alt.corp"), AUD, now())
    assert got.certificate == cert and got.token_id == "abc"
    assert got.expires_at > now() + timedelta(minutes=5)


@pytest.mark.parametrize("change, message", [
    ({"signer": "other"}, "not signed by the key"),
    ({"header": {"x5cInsecure": []}}, "x5cInsecure"),
    ({"header": {"x5cInsecure": ["bm90IGEgY2VydA=="]}}, "DER certificate"),
    ({"claims": {"aud": "https://ca.corp/1.0/sign"}}, "audience"),
    ({"claims": {"aud": "https://evil.corp/1.0/renew"}}, "audience"),
    ({"claims": {"exp": int(time.time()) + 86400}}, "lifetime"),
    ({"claims": {"exp": None}}, "'exp'"),
    ({"claims": {"sub": "other.corp"}}, "subject"),
    ({"claims": {"jti": ""}}, "jti"),
])
def test_bad_tokens_are_refused(change: dict[str, Any], message: str):
    key = ec.generate_private_key(ec.SECP256R1())
    signer = ec.generate_private_key(ec.SECP256R1()) if change.get("signer") else key
    tok = token(certificate(key), signer, change.get("header"), **change.get("claims", {}))
    with pytest.raises(Unauthorized, match=message):
        verify(tok, AUD, now())


def test_garbage_is_refused():
    for tok in ("", "a.b", "a.b.c", "eyJhbGciOiJub25lIn0.e30."):
        with pytest.raises(Unauthorized):
            verify(tok, AUD, now())
