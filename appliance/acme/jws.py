"""ACME's JWS (RFC 8555 §6.2): flattened JSON, a protected header naming `alg`, `nonce`, `url` and exactly one
of `jwk` or `kid`, checked in an order that never trusts the header alone.

The algorithm allowed is derived from the key (ES256 for P-256, ES384 for P-384, RS256 for RSA, EdDSA for
Ed25519); a header asking for anything else is `badSignatureAlgorithm`, whatever the key. The signature is
checked by joserfc; the nonce is consumed last (by the caller's `consume_nonce`), so a forged request cannot
burn a client's nonce.
"""

from __future__ import annotations

import base64
import binascii
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.registry import HeaderParameter, is_str

from appliance.acme.problems import Problem
from appliance.provisioners import jose

ALGORITHMS = ("ES256", "ES384", "RS256", "EdDSA")
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
_REGISTRY_HEADERS = {"nonce": HeaderParameter("ACME nonce", is_str), "url": HeaderParameter("ACME URL", is_str)}


@dataclass(frozen=True)
class ParsedJWS:
    """The request body split, before any signature is checked."""

    protected_b64: str
    payload_b64: str
    signature_b64: str
    header: dict[str, Any]

    @property
    def url(self) -> str | None:
        value = self.header.get("url")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class VerifiedJWS:
    header: dict[str, Any]
    payload: bytes  # b"" for POST-as-GET
    key: jose.PublicKey
    jwk: dict[str, Any]  # the public key, as a dict (stored with the account)
    thumbprint: str  # RFC 7638, base64url SHA-256

    @property
    def kid(self) -> str | None:
        value = self.header.get("kid")
        return value if isinstance(value, str) else None

    @property
    def post_as_get(self) -> bool:
        return self.payload == b""

    def json(self) -> dict[str, Any]:
        """The payload as a JSON object (malformed otherwise)."""
        try:
            value = json.loads(self.payload)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise Problem("malformed", f"the JWS payload is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise Problem("malformed", "the JWS payload must be a JSON object")
        return value


def b64decode(text: str, what: str) -> bytes:
    if not isinstance(text, str) or "=" in text:
        raise Problem("malformed", f"{what} must be unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise Problem("malformed", f"{what} is not base64url") from None


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def parse(body: bytes) -> ParsedJWS:
    """A flattened JWS JSON serialization: protected, payload, signature, and nothing else (§6.2)."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Problem("malformed", "the request body is not JSON (expected a flattened JWS)") from None
    if not isinstance(obj, dict):
        raise Problem("malformed", "the request body must be a flattened JWS JSON object")
    if "signatures" in obj:
        raise Problem("malformed", "the general JWS serialization is not allowed; send the flattened form")
    if "header" in obj:
        raise Problem("malformed", "the JWS must not have an unprotected header")
    missing = [k for k in ("protected", "payload", "signature") if not isinstance(obj.get(k), str)]
    if missing:
        raise Problem("malformed", f"the JWS lacks {', '.join(missing)}")
    extra = sorted(set(obj) - {"protected", "payload", "signature"})
    if extra:
        raise Problem("malformed", f"unexpected JWS members: {', '.join(extra)}")
    try:
        header = json.loads(b64decode(obj["protected"], "the protected header"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Problem("malformed", "the protected header is not JSON") from None
    if not isinstance(header, dict):
        raise Problem("malformed", "the protected header must be a JSON object")
    return ParsedJWS(obj["protected"], obj["payload"], obj["signature"], header)


def check_header(parsed: ParsedJWS, request_url: str, *, want: str) -> None:
    """alg, url, and `want` ("jwk", "kid" or "either") before any key is looked up."""
    h = parsed.header
    alg = h.get("alg")
    if alg not in ALGORITHMS:
        raise Problem("badSignatureAlgorithm", f"JWS algorithm {alg!r} is not supported; use one of "
                      f"{', '.join(ALGORITHMS)}", extra={"algorithms": list(ALGORITHMS)})
    if not isinstance(h.get("nonce"), str) or not h["nonce"]:
        raise Problem("badNonce", "the JWS protected header has no nonce; get one from newNonce")
    url = parsed.url
    if url is None:
        raise Problem("malformed", "the JWS protected header has no url")
    if url != request_url:
        raise Problem("unauthorized", f"the JWS header url {url[:200]!r} is not the URL this request was sent "
                      f"to ({request_url})")
    has_jwk, has_kid = "jwk" in h, "kid" in h
    if has_jwk == has_kid:
        raise Problem("malformed", "the JWS protected header must have exactly one of jwk and kid")
    if want == "jwk" and not has_jwk:
        raise Problem("malformed", "this request must be signed with the account key in the jwk header, not kid")
    if want == "kid" and not has_kid:
        raise Problem("malformed", "this request must name its account with kid (the account URL), not jwk")
    if has_kid and not isinstance(h["kid"], str):
        raise Problem("malformed", "the JWS kid must be the account URL (a string)")


def account_key(jwk: object) -> jose.PublicKey:
    """An account key from a JWK: EC P-256/P-384, RSA 2048–8192 or Ed25519, public part only."""
    if not isinstance(jwk, dict):
        raise Problem("malformed", "the JWS jwk must be a JSON object")
    if "d" in jwk:
        raise Problem("badPublicKey", "the jwk header contains a private key; send the public key only")
    try:
        key = jose.import_jwk(jwk)
    except jose.JOSEError as exc:
        raise Problem("badPublicKey", f"unusable account key: {exc}") from None
    if isinstance(key, ECKey) and key.curve_name not in ("P-256", "P-384"):
        raise Problem("badPublicKey", f"EC account keys must be P-256 or P-384, not {key.curve_name}")
    if isinstance(key, OKPKey) and key.curve_name != "Ed25519":
        raise Problem("badPublicKey", f"OKP account keys must be Ed25519, not {key.curve_name}")
    if isinstance(key, RSAKey):
        bits = key.raw_value.key_size  # public or private, cryptography's RSA keys know their size
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise Problem("badPublicKey", f"RSA account keys must have {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, "
                          f"not {bits}")
    return key


def algorithm_for(key: jose.PublicKey) -> str:
    if isinstance(key, ECKey):
        return "ES256" if key.curve_name == "P-256" else "ES384"
    if isinstance(key, RSAKey):
        return "RS256"
    return "EdDSA"


def verify(parsed: ParsedJWS, key: jose.PublicKey) -> VerifiedJWS:
    """Check the signature with `key`, allowing only the algorithm that key's type implies."""
    alg = algorithm_for(key)
    if parsed.header.get("alg") != alg:
        raise Problem("badSignatureAlgorithm", f"JWS algorithm {parsed.header.get('alg')!r} does not fit the "
                      f"account key (a {key.key_type} key signs with {alg})", extra={"algorithms": [alg]})
    registry = jws.JWSRegistry(header_registry=dict(_REGISTRY_HEADERS), algorithms=[alg])
    # An RSA-8192 jwk header is ~1.5 KiB; a CSR payload a few KiB (the body itself is size-limited upstream).
    registry.max_header_length = 16 * 1024
    registry.max_payload_length = 256 * 1024
    registry.max_signature_length = 2048
    value: jws.FlattenedJSONSerialization = {
        "protected": parsed.protected_b64, "payload": parsed.payload_b64, "signature": parsed.signature_b64}
    try:
        with warnings.catch_warnings():  # joserfc flags "EdDSA" (RFC 9864); RFC 8555 clients still send it
            warnings.simplefilter("ignore")
            result = jws.deserialize_json(value, key, algorithms=[alg], registry=registry)
    except JoseError as exc:
        raise Problem("malformed", f"the JWS signature does not verify: {exc.error or exc}") from None
    except (ValueError, TypeError) as exc:
        raise Problem("malformed", f"the JWS cannot be verified: {exc}") from None
    payload = result.payload if isinstance(result.payload, bytes) else b""
    public = key.as_dict(private=False)
    public.pop("kid", None)
    return VerifiedJWS(dict(parsed.header), payload, key, public, key.thumbprint())


def verify_request(body: bytes, request_url: str, *, want: str,
                   key_for_kid: Callable[[str], jose.PublicKey],
                   consume_nonce: Callable[[str], bool]) -> VerifiedJWS:
    """The whole §6.2 check: structure, alg, url, key (jwk, or the account `kid` names), signature, nonce."""
    parsed = parse(body)
    check_header(parsed, request_url, want=want)
    key = key_for_kid(parsed.header["kid"]) if "kid" in parsed.header else account_key(parsed.header["jwk"])
    verified = verify(parsed, key)
    if not consume_nonce(parsed.header["nonce"]):
        raise Problem("badNonce", "the JWS nonce was already used, has expired or was not issued by this CA; "
                      "retry with the nonce from this response's Replay-Nonce header")
    return verified
