"""The subject key's type and size, and the `keys` rules that judge them."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa, x448, x25519

from policy.config import KeyPolicy

__all__ = ["KeyInfo", "key_info", "key_reasons"]

_CURVES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_EC_ENTRIES = {"P-256": "EC-P256", "P-384": "EC-P384", "P-521": "EC-P521"}


@dataclass(frozen=True)
class KeyInfo:
    """`kind` is "EC", "RSA" or "Ed25519" for keys policy can allow; anything else is named by its
    family (e.g. "DSA", "Ed448") so that it is denied with a readable reason."""

    kind: str
    size: int
    curve: str | None = None

    def __str__(self) -> str:
        if self.kind == "EC":
            return f"EC-{(self.curve or '?').replace('P-', 'P')}"
        if self.kind == "RSA":
            return f"RSA-{self.size}"
        return self.kind


def key_info(public_key: object) -> KeyInfo:
    """Describe a `cryptography` public key; unknown types keep their class name and are denied."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        curve = public_key.curve
        return KeyInfo("EC", curve.key_size, _CURVES.get(curve.name, curve.name))
    if isinstance(public_key, rsa.RSAPublicKey):
        return KeyInfo("RSA", public_key.key_size)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return KeyInfo("Ed25519", 256)
    if isinstance(public_key, dsa.DSAPublicKey):
        return KeyInfo("DSA", public_key.key_size)
    if isinstance(public_key, ed448.Ed448PublicKey):
        return KeyInfo("Ed448", 456)
    if isinstance(public_key, x25519.X25519PublicKey):
        return KeyInfo("X25519", 256)
    if isinstance(public_key, x448.X448PublicKey):
        return KeyInfo("X448", 448)
    return KeyInfo(type(public_key).__name__, int(getattr(public_key, "key_size", 0) or 0))


def key_reasons(level: str, keys: KeyPolicy, key: KeyInfo) -> list[str]:
    """Why `keys` refuses `key` at `level` (empty when it accepts it)."""
    allowed = ", ".join(keys.allow)
    if key.kind == "RSA":
        if key.size < keys.minRSASize:
            return [f"{level}: key {key} is too weak (minimum RSA size {keys.minRSASize})"]
        if key.size > keys.maxRSASize:
            return [f"{level}: key {key} is too large (maximum RSA size {keys.maxRSASize})"]
        if "RSA" in keys.allow or str(key) in keys.allow:
            return []
    elif key.kind == "EC":
        if _EC_ENTRIES.get(key.curve or "") in keys.allow:
            return []
    elif key.kind == "Ed25519" and "Ed25519" in keys.allow:
        return []
    return [f"{level}: key {key} is not allowed (keys.allow: {allowed})"]
