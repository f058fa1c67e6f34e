"""The CA key types hsmca creates and signs with, and the hash each one signs with by default.

One closed list, so that the ceremony, `hsmca init`, the policy and the backends agree on what a
"key type" is, and an unsupported one is refused when it is written down rather than when a
backend first sees it.
"""

from __future__ import annotations

import enum
import re

from cryptography.hazmat.primitives import hashes

from kms.errors import UnsupportedAlgorithm

# The hashes hsmca signs with; the same union cryptography's builders accept in `.sign()`.
SigningHash = hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512


class KeySpec(enum.StrEnum):
    EC_P256 = "EC-P256"
    EC_P384 = "EC-P384"
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    RSA_4096 = "RSA-4096"
    ED25519 = "Ed25519"

    @property
    def kty(self) -> str:
        """The JOSE key type: "EC", "RSA" or "OKP"."""
        return "RSA" if self.name.startswith("RSA") else "OKP" if self is KeySpec.ED25519 else "EC"

    @property
    def curve(self) -> str | None:
        """The JOSE curve name ("P-256", "P-384", "Ed25519"), None for RSA."""
        return {KeySpec.EC_P256: "P-256", KeySpec.EC_P384: "P-384",
                KeySpec.ED25519: "Ed25519"}.get(self)

    @property
    def bits(self) -> int:
        """Modulus size for RSA, field size for the curves."""
        return int(self.value.split("-")[1]) if self.kty == "RSA" else \
            {KeySpec.EC_P256: 256, KeySpec.EC_P384: 384, KeySpec.ED25519: 255}[self]

    @classmethod
    def parse(cls, s: str | KeySpec) -> KeySpec:
        """Accept our own names and the usual spellings: "P-256", "prime256v1", "rsa:3072",
        "RSA3072", "ed25519", "EC P-384"…"""
        if isinstance(s, KeySpec):
            return s
        text = str(s).strip()
        for spec in cls:
            if text.lower() == spec.value.lower():
                return spec
        compact = re.sub(r"[\s_:/-]", "", text.lower())
        found = _ALIASES.get(compact)
        if found is None:
            raise UnsupportedAlgorithm(f"unsupported key type {text!r}; "
                                       f"supported: {', '.join(k.value for k in cls)}")
        return found


_ALIASES: dict[str, KeySpec] = {
    **{a: KeySpec.EC_P256 for a in ("ecp256", "p256", "secp256r1", "prime256v1", "ec256",
                                    "ecdsap256", "es256", "ec")},
    **{a: KeySpec.EC_P384 for a in ("ecp384", "p384", "secp384r1", "ec384", "ecdsap384",
                                    "es384")},
    **{a: KeySpec.RSA_2048 for a in ("rsa2048", "rsa")},
    **{a: KeySpec.RSA_3072 for a in ("rsa3072",)},
    **{a: KeySpec.RSA_4096 for a in ("rsa4096",)},
    **{a: KeySpec.ED25519 for a in ("ed25519", "okped25519", "okp", "eddsa")},
}


def key_spec_for(kty: str, crv: str | None = None, size: int | None = None) -> KeySpec:
    """step's --kty/--crv/--size triple → KeySpec, with step's defaults (P-256, 2048, Ed25519)."""
    k = (kty or "").strip().upper()
    if k == "EC":
        if size is not None:
            raise UnsupportedAlgorithm("--size applies to RSA keys; choose an EC key with --crv")
        c = (crv or "P-256").strip().upper().replace("_", "-")
        spec = {"P-256": KeySpec.EC_P256, "P256": KeySpec.EC_P256,
                "P-384": KeySpec.EC_P384, "P384": KeySpec.EC_P384}.get(c)
        if spec is None:
            raise UnsupportedAlgorithm(f"unsupported EC curve {crv!r}; supported: P-256, P-384")
        return spec
    if k == "RSA":
        if crv is not None:
            raise UnsupportedAlgorithm("--crv applies to EC and OKP keys, not RSA")
        bits = 2048 if size is None else size
        spec = {2048: KeySpec.RSA_2048, 3072: KeySpec.RSA_3072, 4096: KeySpec.RSA_4096}.get(bits)
        if spec is None:
            raise UnsupportedAlgorithm(f"unsupported RSA size {size}; supported: 2048, 3072, 4096")
        return spec
    if k == "OKP":
        if (crv or "Ed25519").strip().lower() != "ed25519" or size is not None:
            raise UnsupportedAlgorithm(f"unsupported OKP curve {crv!r}; supported: Ed25519")
        return KeySpec.ED25519
    raise UnsupportedAlgorithm(f"unsupported key type (kty) {kty!r}; supported: EC, RSA, OKP")


def default_hash_for(spec: KeySpec) -> SigningHash | None:
    """The hash X.509 signatures use with this key; None for Ed25519 (it hashes internally).

    P-384 pairs with SHA-384 so the hash is as strong as the curve (RFC 5480 §4); RSA stays on
    SHA-256, which every relying party accepts.
    """
    if spec is KeySpec.ED25519:
        return None
    if spec is KeySpec.EC_P384:
        return hashes.SHA384()
    return hashes.SHA256()
