"""Proxy keys: see the to-be-signed bytes a cryptography builder hands to `.sign()`, before the KMS does.

cryptography's builders offer no "TBS only" call: they hand the TBS to the key's `.sign()`. A proxy of the
KMS key adapter (same ABC, so the builders accept it) gets those bytes first: the issuer records them
before forwarding them to the real key (record before sign, in one build), CRLs keep them to verify the
signature without re-encoding a million entries, and every signature is timed here, the one place all CA
signatures pass. (Hand-written: no library offers this.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from appliance import metrics
from kms.signer import CAKey

SignFn = Callable[[bytes, Callable[[], bytes]], bytes]


class _ECProxy(ec.EllipticCurvePrivateKey):
    def __init__(self, key: ec.EllipticCurvePrivateKey, on_sign: SignFn):
        self._key, self._on_sign = key, on_sign

    def sign(self, data: Any, signature_algorithm: Any) -> bytes:
        return self._on_sign(bytes(data), lambda: self._key.sign(data, signature_algorithm))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._key.curve

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def exchange(self, algorithm: Any, peer_public_key: Any) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: Any) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> _ECProxy:
        return self

    def __deepcopy__(self, memo: Any) -> _ECProxy:
        return self


class _RSAProxy(rsa.RSAPrivateKey):
    def __init__(self, key: rsa.RSAPrivateKey, on_sign: SignFn):
        self._key, self._on_sign = key, on_sign

    def sign(self, data: Any, padding: Any, algorithm: Any) -> bytes:
        return self._on_sign(bytes(data), lambda: self._key.sign(data, padding, algorithm))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._key.public_key()

    @property
    def key_size(self) -> int:
        return self._key.key_size

    def decrypt(self, ciphertext: bytes, padding: Any) -> bytes:
        raise NotImplementedError

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        raise NotImplementedError

    def private_bytes(self, *args: Any) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> _RSAProxy:
        return self

    def __deepcopy__(self, memo: Any) -> _RSAProxy:
        return self


class _Ed25519Proxy(ed25519.Ed25519PrivateKey):
    def __init__(self, key: ed25519.Ed25519PrivateKey, on_sign: SignFn):
        self._key, self._on_sign = key, on_sign

    def sign(self, data: Any) -> bytes:
        return self._on_sign(bytes(data), lambda: self._key.sign(data))

    def public_key(self) -> ed25519.Ed25519PublicKey:
        return self._key.public_key()

    def private_bytes(self, *args: Any) -> bytes:
        raise NotImplementedError

    def private_bytes_raw(self) -> bytes:
        raise NotImplementedError

    def __copy__(self) -> _Ed25519Proxy:
        return self

    def __deepcopy__(self, memo: Any) -> _Ed25519Proxy:
        return self


def proxy(key: CAKey, on_sign: SignFn) -> CAKey:
    """`key`, with every signature going through `on_sign(data, sign)` (which may call `sign()` or not)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return _ECProxy(key, on_sign)
    if isinstance(key, rsa.RSAPrivateKey):
        return _RSAProxy(key, on_sign)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return _Ed25519Proxy(key, on_sign)
    raise TypeError(f"unsupported CA key type {type(key).__name__}")


def timed(key: CAKey) -> CAKey:
    """A key that signs whatever it is given, timed (OCSP responses: nothing to record first)."""
    backend = metrics.backend_of(key)
    return proxy(key, lambda _data, real: metrics.timed_signature(backend, real))


def recording(key: CAKey, seen: list[tuple[bytes, bytes]]) -> CAKey:
    """A key that signs whatever it is given, timed, and appends (data, signature) to `seen`:
    the caller checks the signature over exactly those bytes, without re-encoding a large structure (a CRL)."""
    backend = metrics.backend_of(key)

    def on_sign(data: bytes, real: Callable[[], bytes]) -> bytes:
        signature = metrics.timed_signature(backend, real)
        seen.append((data, signature))
        return signature

    return proxy(key, on_sign)
