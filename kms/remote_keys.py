"""Adapters for keys in a remote KMS: cryptography private keys whose `sign` is a network call.

The digest is computed here and only the digest travels (Ed25519 excepted: it signs the whole
message), as for PKCS#11. Every signature is verified locally before it is returned: a wrong
signature from a remote service is caught here, never handed to a client.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.utils import Buffer

from kms.digest import check_pss, digest
from kms.errors import SigningFailed, UnsupportedAlgorithm
from kms.keyspec import KeySpec
from kms.signer import ECPublicHalf, Ed25519PublicHalf, KMSKey, RSAPublicHalf

Scheme = Literal["ecdsa", "pkcs1v15", "pss"]


class RemoteSigner(Protocol):
    """What a backend provides for one key: sign a digest, or (Ed25519) a whole message."""

    def sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm, scheme: Scheme,
                    message: bytes | None) -> bytes:
        """ECDSA: a DER signature; RSA: the raw signature bytes.

        `message` is what was hashed (None when the caller passed Prehashed): for a backend that
        must be sent the message itself (a test server that ignores digest mode), never needed in
        production.
        """
        ...

    def sign_message(self, data: bytes) -> bytes: ...


class RemoteKey(KMSKey):
    def __init__(self, *, uri: str, spec: KeySpec, public: Any, signer: RemoteSigner, backend: str) -> None:
        super().__init__(uri=uri, spec=spec)
        self._public = public
        self._signer = signer
        self.backend = backend


class RemoteECKey(RemoteKey, ECPublicHalf, ec.EllipticCurvePrivateKey):
    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("EC keys sign with ECDSA only")
        h, d = digest(bytes(data), signature_algorithm.algorithm)
        signature = self._signer.sign_digest(d, h, "ecdsa", _message(data, signature_algorithm.algorithm))
        try:
            self._public.verify(signature, d, ec.ECDSA(utils.Prehashed(h)))
        except (InvalidSignature, ValueError):
            raise SigningFailed(f"{self.backend} returned an ECDSA signature that does not verify") from None
        return signature


class RemoteRSAKey(RemoteKey, RSAPublicHalf, rsa.RSAPrivateKey):
    def sign(self, data: Buffer, padding_: padding.AsymmetricPadding, algorithm: object) -> bytes:
        h, d = digest(bytes(data), algorithm)
        if isinstance(padding_, padding.PKCS1v15):
            signature = self._signer.sign_digest(d, h, "pkcs1v15", _message(data, algorithm))
        elif isinstance(padding_, padding.PSS):
            check_pss(padding_, h)
            signature = self._signer.sign_digest(d, h, "pss", _message(data, algorithm))
        else:
            raise UnsupportedAlgorithm(f"RSA padding {padding_.name} is not a signature padding")
        try:
            self._public.verify(signature, d, padding_, utils.Prehashed(h))
        except InvalidSignature:
            raise SigningFailed(f"{self.backend} returned an RSA signature that does not verify") from None
        return signature


class RemoteEd25519Key(RemoteKey, Ed25519PublicHalf, ed25519.Ed25519PrivateKey):
    def sign(self, data: Buffer) -> bytes:
        signature = self._signer.sign_message(bytes(data))
        try:
            self._public.verify(signature, bytes(data))
        except InvalidSignature:
            raise SigningFailed(f"{self.backend} returned an Ed25519 signature that does not verify") from None
        return signature


def _message(data: Buffer, algorithm: object) -> bytes | None:
    return None if isinstance(algorithm, utils.Prehashed) else bytes(data)


REMOTE_ADAPTERS: dict[str, type[RemoteKey]] = {"EC": RemoteECKey, "RSA": RemoteRSAKey, "OKP": RemoteEd25519Key}
