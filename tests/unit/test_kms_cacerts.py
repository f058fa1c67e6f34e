"""CA certificate profiles (RFC 5280), checked with software keys; the HSM path is in
tests/integration/test_kms_pkcs11.py."""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from kms import default_hash, intermediate_certificate, new_serial, root_certificate

NOW = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def test_serials_are_positive_128_bit() -> None:
    serials = {new_serial() for _ in range(200)}
    assert len(serials) == 200 and all(0 < s < 2**128 for s in serials)


def test_root_and_intermediate_profiles() -> None:
    root_key, inter_key = ec.generate_private_key(ec.SECP384R1()), ed25519.Ed25519PrivateKey.generate()
    root = root_certificate(root_key, _name("root"), NOW, NOW + 3650 * DAY)
    inter = intermediate_certificate(root_key, root, inter_key.public_key(), _name("inter"),
                                     NOW + 0.5 * DAY, NOW + 365 * DAY + 0.3 * DAY)
    for cert, path_length in ((root, 1), (inter, 0)):
        ext = cert.extensions
        bc = ext.get_extension_for_class(x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_length
        ku = ext.get_extension_for_class(x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign and ku.value.digital_signature
        assert not ku.value.key_encipherment
        ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert not ski.critical
        assert 0 < cert.serial_number < 2**128
    assert root.signature_hash_algorithm.name == "sha384"  # type: ignore[union-attr]
    root_ski = root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    for cert in (root, inter):
        assert cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier == root_ski
    assert inter.issuer == root.subject
    inter.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert root_certificate(root_key, _name("r"), NOW, NOW + DAY, path_length=None) \
        .extensions.get_extension_for_class(x509.BasicConstraints).value.path_length is None


def test_intermediate_refusals() -> None:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = root_certificate(root_key, _name("root"), NOW, NOW + 10 * DAY, path_length=0)
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    with pytest.raises(ValueError, match="path length"):
        intermediate_certificate(root_key, root, public, _name("i"), NOW, NOW + DAY)
    root = root_certificate(root_key, _name("root"), NOW, NOW + 10 * DAY)
    with pytest.raises(ValueError, match="within the issuer"):
        intermediate_certificate(root_key, root, public, _name("i"), NOW, NOW + 11 * DAY)
    with pytest.raises(ValueError, match="within the issuer"):
        intermediate_certificate(root_key, root, public, _name("i"), NOW - DAY, NOW + DAY)
    with pytest.raises(ValueError, match="does not belong"):
        intermediate_certificate(ec.generate_private_key(ec.SECP256R1()), root, public, _name("i"), NOW, NOW + DAY)
    with pytest.raises(ValueError, match="later"):
        root_certificate(root_key, _name("r"), NOW, NOW)
    with pytest.raises(ValueError, match="timezone"):
        root_certificate(root_key, _name("r"), NOW.replace(tzinfo=None), NOW.replace(tzinfo=None) + DAY)
    leaf_ca = intermediate_certificate(root_key, root, public, _name("i"), NOW, NOW + DAY)
    with pytest.raises(ValueError, match="does not belong"):
        intermediate_certificate(root_key, leaf_ca, public, _name("j"), NOW, NOW + DAY)


def test_a_non_ca_certificate_cannot_issue() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf")).issuer_name(_name("leaf"))
            .public_key(key.public_key()).serial_number(new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + DAY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, default_hash(key)))
    with pytest.raises(ValueError, match="not a CA"):
        intermediate_certificate(key, leaf, key.public_key(), _name("i"), NOW, NOW + DAY)
