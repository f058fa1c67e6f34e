"""JOSE for provisioners, on joserfc: keys, the step-style encrypted provisioner key, tokens.

One place decides which algorithms a key may sign with (an allow-list derived from the key, never
from the token's header), so `alg: none` and HS256-with-the-public-key cannot get through.
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from joserfc import jwe, jwt
from joserfc.errors import JoseError
from joserfc.jwe import JWERegistry
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry
from joserfc.registry import HeaderParameter, is_list_str, is_str

from appliance.errors import BadRequest

PublicKey = ECKey | RSAKey | OKPKey

# The encrypted provisioner key, as step-ca stores it (see shared/reference/step-api.md).
PBES2_ALG = "PBES2-HS256+A128KW"
PBES2_ENC = "A256GCM"
PBES2_COUNT = 100_000
_JWE_REGISTRY = JWERegistry(algorithms=[PBES2_ALG, PBES2_ENC])

_EC_ALGS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
_RSA_ALGS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"]


class JOSEError(Exception):
    """A key, an encrypted key or a token that cannot be used; the message says why."""


def import_jwk(data: dict[str, Any]) -> PublicKey:
    """Import a JWK (public or private) of a kind a provisioner may have."""
    kty = data.get("kty")
    try:
        if kty == "EC":
            return ECKey.import_key(data)
        if kty == "RSA":
            return RSAKey.import_key(data)
        if kty == "OKP":
            return OKPKey.import_key(data)
    except (JoseError, ValueError, TypeError) as exc:
        raise JOSEError(f"invalid {kty} JWK: {exc}") from None
    raise JOSEError(f"unsupported JWK key type {kty!r} (EC, RSA or OKP)")


def import_public_key(key: PublicKeyTypes) -> PublicKey:
    """A cryptography public key (a certificate's, a PEM file's) as a JWK that can verify tokens."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)
    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(key)
    raise JOSEError(f"a {type(key).__name__} cannot verify tokens (EC, RSA or Ed25519 keys can)")


def allowed_algorithms(key: PublicKey) -> list[str]:
    """The signature algorithms this key may use, from its type alone."""
    if isinstance(key, ECKey):
        alg = _EC_ALGS.get(key.curve_name)
        if alg is None:
            raise JOSEError(f"unsupported EC curve {key.curve_name}")
        return [alg]
    if isinstance(key, RSAKey):
        return list(_RSA_ALGS)
    if isinstance(key, OKPKey) and key.curve_name == "Ed25519":
        return ["EdDSA"]
    raise JOSEError("unsupported key type for signing tokens")


def generate_provisioner_key() -> ECKey:
    """A P-256 key, as `step ca provisioner add` makes by default."""
    return ECKey.generate_key("P-256", private=True)


def public_jwk(key: PublicKey) -> dict[str, Any]:
    """The public JWK as step-ca publishes it: use, kty, kid (thumbprint), crv, alg, x, y."""
    data: dict[str, Any] = {"use": "sig", **key.as_dict(private=False)}
    data["kid"] = key.thumbprint()
    data["alg"] = allowed_algorithms(key)[0]
    data.pop("key_ops", None)
    return data


def private_jwk_json(key: PublicKey) -> bytes:
    data = key.as_dict(private=True)
    data.update({"use": "sig", "kid": key.thumbprint(), "alg": allowed_algorithms(key)[0]})
    return json.dumps(data).encode()


def _password_key(password: bytes) -> OctKey:
    # joserfc warns about "short keys"; for PBES2 the input is a passphrase, stretched by p2c.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return OctKey.import_key(password)


def encrypt_jwk(key: PublicKey, password: bytes) -> str:
    """The private JWK as a compact JWE under the password (PBES2-HS256+A128KW, A256GCM)."""
    protected = {"alg": PBES2_ALG, "enc": PBES2_ENC, "cty": "jwk+json", "p2c": PBES2_COUNT}
    return jwe.encrypt_compact(
        protected, private_jwk_json(key), _password_key(password), registry=_JWE_REGISTRY
    )


def decrypt_jwk(token: str, password: bytes) -> PublicKey:
    """Decrypt a step-style encrypted key; a wrong password gives a clear error, not a trace."""
    try:
        obj = jwe.decrypt_compact(token, _password_key(password), registry=_JWE_REGISTRY)
    except JoseError as exc:
        raise JOSEError(f"cannot decrypt the provisioner key (wrong password?): {exc}") from None
    except ValueError as exc:
        raise JOSEError(f"malformed encrypted key: {exc}") from None
    try:
        data = json.loads(obj.plaintext or b"")
    except (ValueError, RecursionError):
        raise JOSEError("the encrypted key does not hold a JSON Web Key") from None
    return import_jwk(data)


# step's renew token carries its certificate chain in this header (see appliance/provisioners/x5c.py).
X5C_INSECURE = "x5cInsecure"
SSHPOP = "sshpop"  # step's SSHPOP token: the base64 of the SSH certificate whose key signs it
MAX_HEADER_LENGTH = 12 * 1024


def _registry(algorithms: list[str]) -> JWSRegistry:
    """joserfc refuses header names it does not know; `x5cInsecure` is step's, so it is declared."""
    registry = JWSRegistry(header_registry={X5C_INSECURE: HeaderParameter("step's certificate chain", is_list_str),
                                            SSHPOP: HeaderParameter("step's SSH certificate", is_str)},
                           algorithms=algorithms)
    registry.max_header_length = MAX_HEADER_LENGTH  # a chain of DER certificates is a few KiB
    return registry


def sign_token(key: PublicKey, claims: dict[str, Any], *, kid: str | None = None,
               header: dict[str, Any] | None = None) -> str:
    hdr = {"alg": allowed_algorithms(key)[0], "typ": "JWT", "kid": kid or key.thumbprint()}
    hdr.update(header or {})
    return jwt.encode(hdr, claims, key, algorithms=[hdr["alg"]], registry=_registry([hdr["alg"]]))


def _b64json(part: str) -> dict[str, Any]:
    padded = part + "=" * (-len(part) % 4)
    value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims *without* verifying: only to choose which provisioner verifies it."""
    parts = token.split(".")
    if len(parts) != 3:
        raise JOSEError("the token is not a compact JWS (header.payload.signature)")
    try:
        return _b64json(parts[0]), _b64json(parts[1])
    except RecursionError:  # json.loads recurses once per level: a hostile input, not a bad credential
        raise BadRequest("the token's header or payload is JSON nested too deeply") from None
    except (ValueError, UnicodeError):
        raise JOSEError("the token's header or payload is not base64url-encoded JSON") from None


def verify_token(token: str, key: PublicKey, algorithms: list[str] | None = None
                 ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Check the signature with `key`, allowing only the algorithms that key may use (narrowed to `algorithms`,
    a published key's own `alg`, when given)."""
    header, _ = peek(token)
    algs = [a for a in allowed_algorithms(key) if algorithms is None or a in algorithms]
    if header.get("alg") not in algs:
        raise JOSEError(f"token algorithm {header.get('alg')!r} is not allowed for this key "
                        f"(allowed: {', '.join(algs)})")
    try:
        tok = jwt.decode(token, key, algorithms=algs, registry=_registry(algs))
    except JoseError as exc:
        raise JOSEError(f"token signature is not valid: {exc.error or exc}") from None
    except (ValueError, TypeError) as exc:  # TypeError: joserfc on a header such as `"crit": null`
        raise JOSEError(f"malformed token: {exc}") from None
    return dict(tok.header), dict(tok.claims)


def now() -> int:
    return int(time.time())
