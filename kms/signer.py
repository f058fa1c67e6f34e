"""The signer interface: a CA key is a cryptography private key whose private half is elsewhere.

cryptography's builders (certificate, CSR, CRL, OCSP) accept any subclass of its private-key ABCs
and call `.sign()` with the to-be-signed bytes, so each backend's adapter subclasses those ABCs and
the rest of hsmca signs through the builders unchanged. `KMSKey` is what every adapter adds on top.
"""

from __future__ import annotations

from typing import NoReturn, Self, TypeAlias

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kms.errors import KMSError, UnsupportedAlgorithm
from kms.keyspec import KeySpec, SigningHash, default_hash_for

CAKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

NEVER_LEAVES = "the private key never leaves the HSM"


class KMSKey:
    """Mixin of every backend adapter: where the key lives, what it is, which backend signs.

    `uri` is the redacted key URI (no pin-value), safe to log and to put in the audit trail.
    """

    backend: str = ""

    def __init__(self, *, uri: str, spec: KeySpec) -> None:
        self.uri = uri
        self.spec = spec

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.spec.value} {self.uri}>"

    # The ABCs' ways out for key material all refuse; defined once here for every family.
    def private_bytes(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise KMSError(NEVER_LEAVES)

    def private_bytes_raw(self) -> NoReturn:
        raise KMSError(NEVER_LEAVES)

    def private_numbers(self) -> NoReturn:
        raise KMSError(NEVER_LEAVES)

    def exchange(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise KMSError(NEVER_LEAVES)

    def decrypt(self, *_args: object, **_kwargs: object) -> NoReturn:
        raise KMSError(NEVER_LEAVES)

    # An adapter is a handle on a key that cannot be copied; copies share it.
    def __copy__(self) -> Self:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Self:
        return self


def spki_der(public_key: object) -> bytes:
    """A public key's SubjectPublicKeyInfo (DER): how keys are compared and fingerprinted everywhere."""
    return public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)  # type: ignore[attr-defined]


class ECPublicHalf:
    """What an EC adapter answers from its public key alone (the same for every backend)."""

    _public: ec.EllipticCurvePublicKey

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size


class RSAPublicHalf:
    _public: rsa.RSAPublicKey

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size


class Ed25519PublicHalf:
    _public: ed25519.Ed25519PublicKey

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._public


def spec_of(key: CAKey) -> KeySpec:
    """The KeySpec of an adapter, or of a software key (tests, throwaway dev CAs)."""
    if isinstance(key, KMSKey):
        return key.spec
    return spec_of_public(key.public_key())


def spec_of_public(public: object) -> KeySpec:
    """The KeySpec of a public key (a stand-in key of the same kind, a CSR's key)."""
    if isinstance(public, ed25519.Ed25519PublicKey):
        return KeySpec.ED25519
    if isinstance(public, ec.EllipticCurvePublicKey):
        found = {"secp256r1": KeySpec.EC_P256, "secp384r1": KeySpec.EC_P384}.get(public.curve.name)
        if found is not None:
            return found
        raise UnsupportedAlgorithm(f"unsupported EC curve {public.curve.name}")
    if isinstance(public, rsa.RSAPublicKey):
        return KeySpec.parse(f"RSA-{public.key_size}")
    raise UnsupportedAlgorithm(f"unsupported public key type {type(public).__name__}")


def default_hash(key: CAKey) -> SigningHash | None:
    """The hash to pass to a builder's `.sign(key, hash)` for this CA key (None for Ed25519)."""
    if isinstance(key, KMSKey):
        return default_hash_for(key.spec)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        # Match the hash to the curve for software keys of any size, as for the specs.
        by_size: dict[int, SigningHash] = {384: hashes.SHA384(), 521: hashes.SHA512()}
        return by_size.get(key.curve.key_size, hashes.SHA256())
    if isinstance(key, rsa.RSAPrivateKey):
        return hashes.SHA256()
    raise UnsupportedAlgorithm(f"unsupported CA key type {type(key).__name__}")
