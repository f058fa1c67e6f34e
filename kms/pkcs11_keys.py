"""PKCS#11 key adapters: cryptography private keys whose `sign` runs inside the token.

The digest is computed here and only the digest goes to the token (CKM_ECDSA, CKM_RSA_PKCS over
DigestInfo, CKM_RSA_PKCS_PSS), so the same mechanisms work on every HSM, whatever hash-and-sign
combinations it lists. Ed25519 is the exception: CKM_EDDSA signs the whole message.
"""

from __future__ import annotations

from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.utils import Buffer
from pkcs11 import MGF, Attribute, Mechanism

from kms.digest import check_pss, digest, digest_info
from kms.errors import KMSError, SigningFailed, UnsupportedAlgorithm
from kms.keyspec import KeySpec
from kms.pkcs11_session import KeyRef, TokenSession
from kms.signer import ECPublicHalf, Ed25519PublicHalf, KMSKey, RSAPublicHalf

# CKA_EC_PARAMS: DER of the curve's namedCurve OID (RFC 5480 §2.1.1.1; RFC 8410 §3 for Ed25519).
EC_PARAMS: dict[KeySpec, bytes] = {
    KeySpec.EC_P256: bytes.fromhex("06082a8648ce3d030107"),   # 1.2.840.10045.3.1.7
    KeySpec.EC_P384: bytes.fromhex("06052b81040022"),         # 1.3.132.0.34
    KeySpec.ED25519: bytes.fromhex("06032b6570"),             # 1.3.101.112
}
# PKCS#11 3.0 also allows Ed25519 params as PrintableString "edwards25519".
_ED25519_NAMED = b"\x13\x0cedwards25519"

_P11_HASH: dict[str, tuple[Mechanism, MGF]] = {
    "sha224": (Mechanism.SHA224, MGF.SHA224),
    "sha256": (Mechanism.SHA256, MGF.SHA256),
    "sha384": (Mechanism.SHA384, MGF.SHA384),
    "sha512": (Mechanism.SHA512, MGF.SHA512),
}


class Pkcs11Key(KMSKey):
    """What the three families share: the token session, how to find the key, the public key."""

    backend = "pkcs11"

    def __init__(self, *, tokens: TokenSession, ref: KeyRef, uri: str, spec: KeySpec,
                 public: Any, timeout: float) -> None:
        super().__init__(uri=uri, spec=spec)
        self._tokens = tokens
        self._ref = ref
        self._public = public
        self._timeout = timeout

    def protection(self) -> dict[str, bool]:
        """The private key's protection attributes as the token reports them (for the ceremony's record)."""
        names = {Attribute.SENSITIVE: "sensitive", Attribute.ALWAYS_SENSITIVE: "alwaysSensitive",
                 Attribute.EXTRACTABLE: "extractable", Attribute.NEVER_EXTRACTABLE: "neverExtractable",
                 Attribute.LOCAL: "generatedOnToken"}

        def op(session: Any) -> dict[str, bool]:
            attrs = self._tokens.find(session, self._ref).get_attributes(list(names))
            return {names[a]: bool(v) for a, v in attrs.items()}
        return self._tokens.call(op, failure=KMSError)

    def _sign_in_token(self, data: bytes, mechanism: Mechanism, param: Any = None) -> bytes:
        def op(session: Any) -> bytes:
            key = self._tokens.find(session, self._ref)
            return bytes(key.sign(data, mechanism=mechanism, mechanism_param=param))
        return self._tokens.call(op, failure=SigningFailed, timeout=self._timeout)


class Pkcs11ECKey(Pkcs11Key, ECPublicHalf, ec.EllipticCurvePrivateKey):
    def sign(self, data: Buffer, signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise UnsupportedAlgorithm("EC keys sign with ECDSA only")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise UnsupportedAlgorithm("deterministic ECDSA (RFC 6979) is not available in the HSM")
        _, d = digest(bytes(data), signature_algorithm.algorithm)
        raw = self._sign_in_token(d, Mechanism.ECDSA)
        size = (self.key_size + 7) // 8
        if len(raw) != 2 * size:
            raise SigningFailed(f"the token returned a {len(raw)}-byte ECDSA signature; "
                                f"expected {2 * size} (r||s)")
        r, s = int.from_bytes(raw[:size], "big"), int.from_bytes(raw[size:], "big")
        return utils.encode_dss_signature(r, s)


class Pkcs11RSAKey(Pkcs11Key, RSAPublicHalf, rsa.RSAPrivateKey):
    def sign(self, data: Buffer, padding_: padding.AsymmetricPadding, algorithm: object) -> bytes:
        # `algorithm` is typed as widely as any cryptography version's ABC; digest() accepts only
        # a hash or Prehashed (never NoDigestInfo: that would make the HSM a raw RSA oracle).
        h, d = digest(bytes(data), algorithm)
        if isinstance(padding_, padding.PKCS1v15):
            signature = self._sign_in_token(digest_info(h, d), Mechanism.RSA_PKCS)
        elif isinstance(padding_, padding.PSS):
            salt = check_pss(padding_, h)
            mech_hash, mgf = _P11_HASH[h.name]
            signature = self._sign_in_token(d, Mechanism.RSA_PKCS_PSS, (mech_hash, mgf, salt))
        else:
            raise UnsupportedAlgorithm(f"RSA padding {padding_.name} is not a signature padding")
        # A faulty RSA-CRT signature reveals the key's factors (Boneh-DeMillo-Lipton), so a
        # wrong one never leaves this process; verifying costs a few percent of signing.
        try:
            self._public.verify(signature, d, padding_, utils.Prehashed(h))
        except InvalidSignature:
            raise SigningFailed("the token returned an RSA signature that does not verify") from None
        return signature


class Pkcs11Ed25519Key(Pkcs11Key, Ed25519PublicHalf, ed25519.Ed25519PrivateKey):
    def sign(self, data: Buffer) -> bytes:
        return self._sign_in_token(bytes(data), Mechanism.EDDSA)


ADAPTERS: dict[str, type[Pkcs11Key]] = {"EC": Pkcs11ECKey, "RSA": Pkcs11RSAKey, "OKP": Pkcs11Ed25519Key}


def ec_public_key(params: bytes, point: bytes) -> tuple[KeySpec, Any]:
    """(spec, public key) from CKA_EC_PARAMS and CKA_EC_POINT (DER OCTET STRING or raw)."""
    params = bytes(params)
    if params == _ED25519_NAMED:
        params = EC_PARAMS[KeySpec.ED25519]
    spec = next((s for s, p in EC_PARAMS.items() if p == params), None)
    if spec is None:
        raise UnsupportedAlgorithm(f"unsupported curve (CKA_EC_PARAMS {params.hex()}); "
                                   "supported: P-256, P-384, Ed25519")
    if spec is KeySpec.ED25519:
        raw = _unwrap_octet_string(bytes(point), 32)
        return spec, ed25519.Ed25519PublicKey.from_public_bytes(raw)
    curve: ec.EllipticCurve = ec.SECP256R1() if spec is KeySpec.EC_P256 else ec.SECP384R1()
    raw = _unwrap_octet_string(bytes(point), 1 + 2 * ((curve.key_size + 7) // 8))
    return spec, ec.EllipticCurvePublicKey.from_encoded_point(curve, raw)


def rsa_public_key(modulus: bytes, exponent: bytes) -> tuple[KeySpec, rsa.RSAPublicKey]:
    public = rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"),
                                  int.from_bytes(modulus, "big")).public_key()
    return KeySpec.parse(f"RSA-{public.key_size}"), public


def _unwrap_octet_string(data: bytes, raw_len: int) -> bytes:
    """PKCS#11 says DER OCTET STRING; some modules return the bare value. Accept both."""
    if len(data) == raw_len:
        return data
    if len(data) >= 2 and data[0] == 0x04:
        if data[1] < 0x80:
            header = 2
            length = data[1]
        else:
            n = data[1] & 0x7F
            header, length = 2 + n, int.from_bytes(data[2:2 + n], "big")
        if length == raw_len and len(data) == header + length:
            return data[header:]
    raise KMSError(f"cannot decode the token's public point ({len(data)} bytes)")
