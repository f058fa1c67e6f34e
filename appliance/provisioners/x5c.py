"""The x5c renew token: a JWT that carries a certificate (`x5cInsecure`) and is signed by its key.

It is how a client proves possession of a certificate's key when no TLS client certificate can
reach the CA (a TLS-terminating load balancer in between). "Insecure" is step-ca's word for "the
header's chain is not trusted by itself": this module only proves that the token was signed by
the key of the certificate it carries; whether this CA issued that certificate, and whether it
may still be renewed, is the renewal rules' business (appliance/ra/renew.py).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from appliance.errors import Unauthorized
from appliance.provisioners import jose
from appliance.provisioners.base import TOKEN_LEEWAY, strip_port, token_times

LEEWAY = TOKEN_LEEWAY
MAX_LIFETIME = timedelta(hours=1)  # a renew token is minted just before use; a longer one smells
MAX_JTI_LENGTH = 256
MAX_CHAIN = 4


@dataclass(frozen=True)
class X5CToken:
    """A verified renew token: the certificate it vouches for, and its one-time id to burn."""

    certificate: x509.Certificate
    token_id: str
    expires_at: datetime  # the last moment it could be accepted (expiry + leeway)


def _leaf(header: dict[str, Any]) -> x509.Certificate:
    chain = header.get("x5cInsecure")
    if not isinstance(chain, list) or not chain or len(chain) > MAX_CHAIN \
            or not all(isinstance(c, str) for c in chain):
        raise Unauthorized("token header 'x5cInsecure' must be a list of 1 to "
                           f"{MAX_CHAIN} base64 DER certificates, leaf first")
    try:
        return x509.load_der_x509_certificate(base64.b64decode(chain[0], validate=True))
    except (ValueError, binascii.Error):
        raise Unauthorized("token header 'x5cInsecure' does not start with a DER certificate") from None


def _public_jwk(cert: x509.Certificate) -> jose.PublicKey:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return ECKey.import_key(key)
    if isinstance(key, rsa.RSAPublicKey):
        return RSAKey.import_key(key)
    if isinstance(key, ed25519.Ed25519PublicKey):
        return OKPKey.import_key(key)
    raise Unauthorized("the token's certificate has a key type that cannot sign tokens")


def _subject_names(cert: x509.Certificate) -> set[str]:
    names = {str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    names.update(str(v) for v in san.get_values_for_type(x509.DNSName))
    names.update(str(v) for v in san.get_values_for_type(x509.IPAddress))
    names.update(str(v) for v in san.get_values_for_type(x509.RFC822Name))
    names.update(str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier))
    return names


def verify(token: str, audiences: frozenset[str], now: datetime) -> X5CToken:
    """Signature by the carried certificate's own key, then audience, times, subject and jti."""
    try:
        header, _ = jose.peek(token)
    except jose.JOSEError as exc:
        raise Unauthorized(f"invalid bearer token: {exc}") from None
    cert = _leaf(header)
    try:
        _, claims = jose.verify_token(token, _public_jwk(cert))
    except jose.JOSEError as exc:
        raise Unauthorized(f"bearer token is not signed by the key of the certificate it carries: {exc}") \
            from None
    expires, not_before, issued_at = token_times(claims, now)
    if expires - (issued_at or not_before or now) > MAX_LIFETIME:
        raise Unauthorized(f"token lifetime exceeds {int(MAX_LIFETIME.total_seconds())} seconds")
    aud = claims.get("aud")
    got = [aud] if isinstance(aud, str) else aud
    if not isinstance(got, list) or not all(isinstance(a, str) for a in got) \
            or not any(strip_port(a) in audiences for a in got):
        raise Unauthorized(f"token audience {aud!r} is not this CA's endpoint "
                           f"(expected one of {sorted(audiences)})")
    sub = claims.get("sub")
    if sub not in (None, "") and sub not in _subject_names(cert):
        raise Unauthorized(f"token subject {sub!r} is not a name of the certificate it carries")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise Unauthorized(f"token must carry a one-time id (jti) of 1 to {MAX_JTI_LENGTH} characters")
    return X5CToken(cert, jti, expires + LEEWAY)
