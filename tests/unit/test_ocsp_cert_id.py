"""The responder indexes intermediates by CertID hashes; they must equal what clients compute (cryptography's
request builder here, `openssl ocsp` in tests/integration/test_ocsp.py) for every key family."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from appliance.status.ocsp import CERT_ID_HASHES, MALFORMED, cert_id_hashes

NOW = datetime.now(UTC)


def _pair(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
          ) -> tuple[x509.Certificate, x509.Certificate]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Issuing CA")])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    issuer = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
              .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
              .sign(key, algorithm))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(name)
            .public_key(leaf_key.public_key()).serial_number(2).not_valid_before(NOW)
            .not_valid_after(NOW + timedelta(days=1)).sign(key, algorithm))
    return issuer, leaf


@pytest.mark.parametrize("key", [ec.generate_private_key(ec.SECP384R1()),
                                 rsa.generate_private_key(public_exponent=65537, key_size=2048),
                                 ed25519.Ed25519PrivateKey.generate()], ids=["ec", "rsa", "ed25519"])
def test_cert_id_hashes_match_the_request_builder(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
                                                  | ed25519.Ed25519PrivateKey) -> None:
    issuer, leaf = _pair(key)
    for algorithm in CERT_ID_HASHES:
        req = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm).build()
        assert cert_id_hashes(issuer, algorithm) == (req.issuer_name_hash, req.issuer_key_hash)


def test_malformed_response_is_the_unsigned_error() -> None:
    assert ocsp.load_der_ocsp_response(MALFORMED).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
