"""The interface every provisioner implements, the token credential most of them take, and JWT helpers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from cryptography import x509

from appliance.certutil import read_extensions
from appliance.errors import BadRequest, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners.request import IssuanceRequest
from appliance.provisioners.validity import in_range
from appliance.store import OneTimeToken
from policy import Claims, PolicyConfig

if TYPE_CHECKING:
    from appliance.provisioners.registry import Provisioners


@dataclass(frozen=True)
class TokenGrant:
    """A verified one-time token: who it names, which names it grants, and its id (spent once)."""

    provisioner: str
    subject: str
    sans: tuple[str, ...]
    token: OneTimeToken
    claims: Mapping[str, Any] = field(default_factory=dict)  # all of them, for certificate templates


@dataclass(frozen=True)
class TokenCredential:
    """A token and the CSR it came with (`POST /1.0/sign`): JWK, X5C and K8sSA tokens, OIDC ID tokens."""

    token: str
    csr: x509.CertificateSigningRequest
    audiences: frozenset[str]
    not_before: str | None = None  # as the client wrote them: RFC 3339 or a duration from now
    not_after: str | None = None

    def locate(self, provisioners: Provisioners) -> Provisioner:
        return provisioners.for_token(self.token)


@dataclass(frozen=True)
class SSHSignCredential:
    """A token with step's `step.ssh` claim and what `POST /1.0/ssh/sign` asked for (step's field names)."""

    token: str
    public_key: Any  # an SSH-capable public key (EC, RSA, Ed25519)
    audiences: frozenset[str]
    cert_type: str = ""
    key_id: str = ""
    principals: tuple[str, ...] = ()
    valid_after: str | None = None
    valid_before: str | None = None

    def locate(self, provisioners: Provisioners) -> Provisioner:
        return provisioners.for_token(self.token)


class Provisioner(Protocol):
    """Proves who is asking and says what they asked for; never signs, stores or audits (the pipeline does)."""

    name: str
    type: str
    claims: Claims | None
    policy: PolicyConfig | None

    @property
    def key_id(self) -> str: ...

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """Turn the credential into a request; raise a CAError (401/403/400) saying why not."""

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        """The provisioner as `GET /provisioners` lists it (public data only)."""


class TokenProvisioner(Provisioner, Protocol):
    """A provisioner whose credential is a one-time token, which also authorizes revocation."""

    def verify_token(self, token: str, audiences: frozenset[str], now: datetime) -> TokenGrant:
        """Check signature, issuer, audience, times and jti; raise Unauthorized saying why not."""


def strip_port(url: str) -> str:
    """Audiences compare without the port, as step-ca does (clients reach the CA many ways)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return url
    if ":" in host:
        host = f"[{host}]"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def sign_audiences(dns_names: list[str]) -> frozenset[str]:
    """The `aud` values a sign token may carry for this CA (port stripped)."""
    return endpoint_audiences(dns_names, "sign")


def endpoint_audiences(dns_names: list[str], endpoint: str) -> frozenset[str]:
    """The `aud` values a token for `/1.0/<endpoint>` may carry (a token is good for one endpoint only)."""
    out: set[str] = set()
    for name in dns_names:
        host = f"[{name}]" if ":" in name else name
        out.update({f"https://{host}/1.0/{endpoint}", f"https://{host}/{endpoint}"})
    return frozenset(out)


def numeric_date(claims: dict[str, Any], name: str, *, required: bool) -> datetime | None:
    """A JWT NumericDate claim as an aware datetime; Unauthorized (with the claim named) when malformed,
    BadRequest when it is a number no certificate time could be (year 9999, say)."""
    value = claims.get(name)
    if value is None:
        if required:
            raise Unauthorized(f"token has no '{name}' claim")
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unauthorized(f"token claim '{name}' must be a NumericDate (seconds since the epoch)")
    try:
        when = datetime.fromtimestamp(value, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise BadRequest(f"token claim '{name}' is out of range") from None
    return in_range(when, f"token claim '{name}'")


TOKEN_LEEWAY = timedelta(minutes=1)  # clock skew allowed between client and CA


def token_audiences(claims: dict[str, Any]) -> list[str] | None:
    """The token's `aud` as a list (a string or a list of strings), None when it is neither."""
    aud = claims.get("aud")
    if isinstance(aud, str):
        return [aud]
    if isinstance(aud, list) and all(isinstance(a, str) for a in aud):
        return aud
    return None


def token_times(claims: dict[str, Any], now: datetime) -> tuple[datetime, datetime | None, datetime | None]:
    """(exp, nbf, iat) of a JWT, refused with the reason when expired, not yet valid or issued in the future."""
    expires = numeric_date(claims, "exp", required=True)
    assert expires is not None
    not_before = numeric_date(claims, "nbf", required=False)
    issued_at = numeric_date(claims, "iat", required=False)
    if now > expires + TOKEN_LEEWAY:
        raise Unauthorized(f"token expired at {expires.isoformat()}")
    if not_before is not None and now < not_before - TOKEN_LEEWAY:
        raise Unauthorized(f"token is not valid before {not_before.isoformat()}")
    if issued_at is not None and issued_at > now + TOKEN_LEEWAY:
        raise Unauthorized("token was issued in the future (iat); check the client's clock")
    return expires, not_before, issued_at


def csr_names(csr: x509.CertificateSigningRequest) -> tuple[str, RequestedNames]:
    """The CSR's common name and names (the CN among them), for provisioners whose certificate names what the
    request asks (step-ca's certificate-request template: K8sSA, an OIDC admin); BadRequest when it names nothing."""
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    common_name = str(cns[0].value) if cns else ""
    try:
        names = RequestedNames.from_general_names(
            read_extensions(csr).get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        names = RequestedNames()
    except ValueError as exc:
        raise BadRequest(f"invalid csr extensions: {exc}") from None
    if common_name:
        names = names.with_common_name(common_name)
    if not common_name and not names.as_strings():
        raise BadRequest("the certificate request names nothing (no common name, no SANs)")
    return common_name, names
