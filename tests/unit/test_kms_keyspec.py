"""Key specs, default hashes and the local digest helpers (no HSM needed)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils

from kms import (
    KeySpec,
    UnsupportedAlgorithm,
    default_hash,
    default_hash_for,
    key_spec_for,
    spec_of,
)
from kms.digest import DIGEST_INFO_PREFIX, check_pss, digest, digest_info


@pytest.mark.parametrize("text, spec", [
    ("EC-P256", KeySpec.EC_P256), ("ec-p384", KeySpec.EC_P384), ("P-256", KeySpec.EC_P256),
    ("prime256v1", KeySpec.EC_P256), ("secp384r1", KeySpec.EC_P384), ("EC P-384", KeySpec.EC_P384),
    ("RSA-2048", KeySpec.RSA_2048), ("rsa:3072", KeySpec.RSA_3072), ("RSA4096", KeySpec.RSA_4096),
    ("Ed25519", KeySpec.ED25519), ("ed25519", KeySpec.ED25519), ("OKP-Ed25519", KeySpec.ED25519),
    ("EC", KeySpec.EC_P256), ("RSA", KeySpec.RSA_2048),
])
def test_parse(text: str, spec: KeySpec) -> None:
    assert KeySpec.parse(text) is spec
    assert KeySpec.parse(spec) is spec and KeySpec(spec.value) is spec and str(spec) == spec.value


@pytest.mark.parametrize("text", ["EC-P521", "RSA-1024", "Ed448", "DSA", ""])
def test_parse_refuses_what_hsmca_does_not_sign_with(text: str) -> None:
    with pytest.raises(UnsupportedAlgorithm, match="supported: EC-P256"):
        KeySpec.parse(text)


@pytest.mark.parametrize("kty, crv, size, spec", [
    ("EC", "P-256", None, KeySpec.EC_P256), ("EC", "P-384", None, KeySpec.EC_P384),
    ("EC", None, None, KeySpec.EC_P256), ("ec", "p-384", None, KeySpec.EC_P384),
    ("RSA", None, 2048, KeySpec.RSA_2048), ("RSA", None, 3072, KeySpec.RSA_3072),
    ("RSA", None, 4096, KeySpec.RSA_4096), ("RSA", None, None, KeySpec.RSA_2048),
    ("OKP", "Ed25519", None, KeySpec.ED25519), ("OKP", None, None, KeySpec.ED25519),
])
def test_key_spec_for_step_flags(kty: str, crv: str | None, size: int | None, spec: KeySpec) -> None:
    assert key_spec_for(kty, crv, size) is spec


@pytest.mark.parametrize("kty, crv, size", [
    ("EC", "P-521", None), ("EC", "P-256", 256), ("RSA", None, 1024), ("RSA", "P-256", 2048),
    ("OKP", "X25519", None), ("oct", None, 256),
])
def test_key_spec_for_refusals(kty: str, crv: str | None, size: int | None) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        key_spec_for(kty, crv, size)


def test_spec_properties() -> None:
    assert [s.kty for s in KeySpec] == ["EC", "EC", "RSA", "RSA", "RSA", "OKP"]
    assert KeySpec.RSA_3072.bits == 3072 and KeySpec.EC_P384.bits == 384
    assert KeySpec.EC_P384.curve == "P-384" and KeySpec.RSA_2048.curve is None


def test_default_hashes() -> None:
    names = {s: (h.name if (h := default_hash_for(s)) else None) for s in KeySpec}
    assert names == {KeySpec.EC_P256: "sha256", KeySpec.EC_P384: "sha384", KeySpec.RSA_2048: "sha256",
                     KeySpec.RSA_3072: "sha256", KeySpec.RSA_4096: "sha256", KeySpec.ED25519: None}


def test_default_hash_and_spec_of_software_keys() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert isinstance(default_hash(p384), hashes.SHA384) and spec_of(p384) is KeySpec.EC_P384
    assert default_hash(ed25519.Ed25519PrivateKey.generate()) is None
    r = rsa.generate_private_key(65537, 2048)
    assert isinstance(default_hash(r), hashes.SHA256) and spec_of(r) is KeySpec.RSA_2048
    with pytest.raises(UnsupportedAlgorithm):
        spec_of(ec.generate_private_key(ec.SECP521R1()))


@pytest.mark.parametrize("h", [hashes.SHA224(), hashes.SHA256(), hashes.SHA384(), hashes.SHA512()])
def test_digest_info_prefix_is_what_pkcs1v15_signs(h: hashes.HashAlgorithm) -> None:
    """Recover EM from a software PKCS#1 v1.5 signature: it must end in our DigestInfo."""
    key = rsa.generate_private_key(65537, 2048)
    signature = key.sign(b"data", padding.PKCS1v15(), h)
    numbers = key.public_key().public_numbers()
    em = pow(int.from_bytes(signature, "big"), numbers.e, numbers.n).to_bytes(256, "big")
    _, d = digest(b"data", h)
    assert em.endswith(b"\x00" + digest_info(h, d))
    assert DIGEST_INFO_PREFIX[h.name][-1] == h.digest_size


def test_digest_checks() -> None:
    _, d = digest(b"x", hashes.SHA256())
    assert digest(d, utils.Prehashed(hashes.SHA256())) == (digest(d, utils.Prehashed(hashes.SHA256()))[0], d)
    with pytest.raises(UnsupportedAlgorithm, match="sha1"):
        digest(b"x", hashes.SHA1())
    with pytest.raises(UnsupportedAlgorithm, match="md5"):
        digest(b"x", hashes.MD5())
    with pytest.raises(UnsupportedAlgorithm, match="32"):
        digest(b"x" * 31, utils.Prehashed(hashes.SHA256()))


def test_pss_profile() -> None:
    sha = hashes.SHA384()
    assert check_pss(padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.DIGEST_LENGTH), sha) == 48
    assert check_pss(padding.PSS(padding.MGF1(hashes.SHA384()), 48), sha) == 48
    for bad in (padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.MAX_LENGTH),
                padding.PSS(padding.MGF1(hashes.SHA384()), 32),
                padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.AUTO),
                padding.PSS(padding.MGF1(hashes.SHA256()), 48)):
        with pytest.raises(UnsupportedAlgorithm):
            check_pss(bad, sha)
