"""CRL building without a database or HSM: entries, reasons, numbering, and a faulty signer caught."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.crl import build_crl, revoked_entries
from appliance.issuer import Issuer

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def issuer(key: ec.EllipticCurvePrivateKey) -> Issuer:
    name = x509.Name.from_rfc4514_string("CN=Test Intermediate")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issuer(key, cert, None)  # type: ignore[arg-type]  # building a CRL never touches the store


class WrongKey(ec.EllipticCurvePrivateKey):
    """Claims one public key, signs with another: what a faulty HSM looks like from here."""

    def __init__(self) -> None:
        self._claimed, self._signer = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())

    def sign(self, data: Any, signature_algorithm: Any) -> bytes:
        return self._signer.sign(data, signature_algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._claimed.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._claimed.curve

    @property
    def key_size(self) -> int:
        return 256

    def exchange(self, algorithm: Any, peer_public_key: Any) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: Any) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> WrongKey:
        return self

    def __deepcopy__(self, memo: Any) -> WrongKey:
        return self


def test_entries_carry_reasons_except_unspecified_and_the_crl_its_number_and_aki() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    at = datetime(2026, 11, 1, 8, 30)
    entries = revoked_entries([(11, at, 0), (12, at, 1), (13, at, 10)])
    crl = build_crl(issuer(key), entries, 7, NOW, NOW + timedelta(hours=24))
    assert crl.is_signature_valid(key.public_key())
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 7
    assert crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == \
        x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    by_serial = {e.serial_number: e for e in crl}
    assert len(by_serial[11].extensions) == 0
    assert by_serial[12].extensions.get_extension_for_class(x509.CRLReason).value.reason is \
        x509.ReasonFlags.key_compromise
    assert by_serial[13].extensions.get_extension_for_class(x509.CRLReason).value.reason is \
        x509.ReasonFlags.aa_compromise
    assert by_serial[12].revocation_date_utc == at.replace(tzinfo=UTC)


def test_a_signature_that_does_not_verify_is_never_returned() -> None:
    with pytest.raises(InvalidSignature):
        build_crl(issuer(WrongKey()), revoked_entries([(5, NOW, 1)]), 1, NOW, NOW + timedelta(hours=1))
