"""CRL building without a database or HSM: entries, reasons, numbering, and a faulty signer caught."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.ca import tbs
from appliance.ca.issuer import Issuer
from appliance.status.crl import build_crl, revoked_entries
from appliance.store import RevocationReason

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def issuer(key: ec.EllipticCurvePrivateKey) -> Issuer:
    name = x509.Name.from_rfc4514_string("CN=Test Intermediate")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW - timedelta(days=1)).not_valid_after(NOW + timedelta(days=30))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issuer(key, cert)


def wrong_key() -> ec.EllipticCurvePrivateKey:
    """Claims one public key, signs with another: what a faulty HSM looks like from here."""
    other = ec.generate_private_key(ec.SECP256R1())
    return tbs.proxy(ec.generate_private_key(ec.SECP256R1()),  # type: ignore[return-value]
                     lambda data, sign: other.sign(data, ec.ECDSA(hashes.SHA256())))


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
        build_crl(issuer(wrong_key()), revoked_entries([(5, NOW, 1)]), 1, NOW, NOW + timedelta(hours=1))


def test_entries_encoded_here_equal_what_cryptographys_builder_makes() -> None:
    """revoked_entries encodes DER itself (for speed): the same entries as RevokedCertificateBuilder, field by
    field and byte for byte inside a signed CRL, over serial sizes, both time encodings and every reason."""
    rng = random.Random(5280)
    rows = [(rng.randrange(1, 1 << bits), datetime(2026, 1, 1) + timedelta(seconds=rng.randrange(10**9)),
             rng.choice([int(r) for r in RevocationReason]))
            for bits in (1, 7, 8, 9, 63, 64, 127, 128, 158, 159) for _ in range(20)]
    rows.append((42, datetime(2050, 1, 1), 1))  # the first GeneralizedTime moment
    rows.append((43, datetime(2049, 12, 31, 23, 59, 59), 1))  # the last UTCTime one
    ours = revoked_entries(rows)
    flags = {int(r): r.flag for r in RevocationReason if r is not RevocationReason.UNSPECIFIED}
    theirs = [x509.RevokedCertificateBuilder(s, at, [x509.Extension(x509.CRLReason.oid, False,
                                                                    x509.CRLReason(flags[c]))] if c else []).build()
              for s, at, c in rows]
    assert len(ours) == len(theirs) == len(rows)
    for a, b, (serial, at, code) in zip(ours, theirs, rows, strict=True):
        assert a.serial_number == b.serial_number == serial
        assert a.revocation_date_utc == b.revocation_date_utc == at.replace(tzinfo=UTC)
        assert list(a.extensions) == list(b.extensions)
        assert len(a.extensions) == (0 if code == 0 else 1)  # unspecified: no reasonCode extension
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl")])

    def signed(entries: list[x509.RevokedCertificate]) -> bytes:
        builder = x509.CertificateRevocationListBuilder(issuer_name=name, last_update=NOW,
                                                        next_update=NOW + timedelta(hours=1),
                                                        revoked_certificates=entries)
        return builder.sign(key, hashes.SHA256()).tbs_certlist_bytes

    assert signed(ours) == signed(theirs)


def test_serials_outside_rfc_5280_are_refused() -> None:
    for serial in (0, -1, 1 << 159):
        with pytest.raises(ValueError, match="out of RFC 5280's range"):
            revoked_entries([(serial, NOW, 0)])
