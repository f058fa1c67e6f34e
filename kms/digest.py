"""Local hashing for "send only the digest": what the adapters compute before calling a backend.

Hashing here keeps a large TBS body off the wire to a network HSM or cloud KMS, and makes the
backend's job the same fixed-size operation for every document type.
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils

from kms.errors import UnsupportedAlgorithm

# SHA-1 and MD5 are never accepted for a CA signature; SHA-3 has no DigestInfo/PKCS#11 support
# across HSMs worth relying on.
ALLOWED_HASHES = frozenset({"sha224", "sha256", "sha384", "sha512"})

# DER of DigestInfo{AlgorithmIdentifier{hash OID, NULL}, OCTET STRING} up to the digest bytes:
# the fixed prefixes listed in RFC 8017 §9.2, Note 1. CKM_RSA_PKCS signs exactly what it is
# given, so EMSA-PKCS1-v1_5 needs this prefix in front of the digest.
DIGEST_INFO_PREFIX: dict[str, bytes] = {
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def checked_hash(algorithm: object) -> hashes.HashAlgorithm:
    """The hash behind `algorithm`, if it is one hsmca signs with."""
    h = algorithm._algorithm if isinstance(algorithm, utils.Prehashed) else algorithm
    if not isinstance(h, hashes.HashAlgorithm) or h.name not in ALLOWED_HASHES:
        name = getattr(h, "name", type(h).__name__)
        raise UnsupportedAlgorithm(f"hash {name} is not accepted for CA signatures; "
                                   f"use one of {', '.join(sorted(ALLOWED_HASHES))}")
    return h


def digest(data: bytes, algorithm: object) -> tuple[hashes.HashAlgorithm, bytes]:
    """(hash, digest of `data`); with Prehashed, `data` already is the digest and is checked."""
    h = checked_hash(algorithm)
    if isinstance(algorithm, utils.Prehashed):
        if len(data) != h.digest_size:
            raise UnsupportedAlgorithm(f"prehashed data is {len(data)} bytes; "
                                       f"{h.name} digests are {h.digest_size}")
        return h, bytes(data)
    ctx = hashes.Hash(h)
    ctx.update(data)
    return h, ctx.finalize()


def digest_info(h: hashes.HashAlgorithm, digest_bytes: bytes) -> bytes:
    """EMSA-PKCS1-v1_5's T = DigestInfo DER (RFC 8017 §9.2 step 2)."""
    return DIGEST_INFO_PREFIX[h.name] + digest_bytes


def check_pss(pad: padding.PSS, h: hashes.HashAlgorithm) -> int:
    """The salt length for `pad`; only salt = digest length with MGF1 over the same hash.

    That is the profile RFC 4055 and the CA/Browser Forum require, and the one every HSM and
    cloud KMS implements; anything else is refused rather than silently changed.
    """
    mgf = pad.mgf
    mgf_hash = getattr(mgf, "_algorithm", None)
    if not isinstance(mgf, padding.MGF1) or getattr(mgf_hash, "name", None) != h.name:
        raise UnsupportedAlgorithm(f"PSS needs MGF1 with the signature hash ({h.name})")
    salt = pad._salt_length
    if isinstance(salt, padding._DigestLength) or salt == h.digest_size:
        return h.digest_size
    shown = salt if isinstance(salt, int) else type(salt).__name__.strip("_")
    raise UnsupportedAlgorithm(f"PSS salt length {shown} is not supported; "
                               f"only the digest length ({h.digest_size}) is")
