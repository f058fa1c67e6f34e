"""Renew and rekey by the certificate itself: the x5c renew token, and the provisioner that authorizes them.

The x5c renew token is a JWT that carries a certificate (`x5cInsecure`) and is signed by its key.

It is how a client proves possession of a certificate's key when no TLS client certificate can
reach the CA (a TLS-terminating load balancer in between). "Insecure" is step-ca's word for "the
header's chain is not trusted by itself": this module only proves that the token was signed by
the key of the certificate it carries; whether this CA issued that certificate, and whether it
may still be renewed, is `RenewalProvisioner`'s business (below).

The X5C provisioner (a token whose `x5c` chain verifies to configured roots authorizes a new certificate) is
x5c_roots.py.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.certutil import read_extensions
from appliance.errors import Forbidden, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners import jose
from appliance.provisioners.base import TOKEN_LEEWAY, strip_port, token_times
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest, Window
from appliance.store import OneTimeToken, Store
from appliance.store.records import MAX_SERIAL
from policy import Claims, PolicyConfig
from policy.validity import BACKDATE

if TYPE_CHECKING:
    from appliance.provisioners.base import Provisioner
    from appliance.provisioners.registry import Provisioners

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
    try:
        return jose.import_public_key(cert.public_key())
    except (ValueError, UnsupportedAlgorithm):
        raise Unauthorized("the token's certificate has a public key this CA cannot read") from None
    except jose.JOSEError:
        raise Unauthorized("the token's certificate has a key type that cannot sign tokens") from None


def _subject_names(cert: x509.Certificate) -> set[str]:
    try:
        names = {str(a.value) for a in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)}
        san = read_extensions(cert).get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return names
    except ValueError as exc:
        raise Unauthorized(f"the token's certificate cannot be read: {exc}") from None
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
    if sub is not None and not isinstance(sub, str):
        raise Unauthorized("token subject (sub) must be a string")
    if sub and sub not in _subject_names(cert):
        raise Unauthorized(f"token subject {sub!r} is not a name of the certificate it carries")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
        raise Unauthorized(f"token must carry a one-time id (jti) of 1 to {MAX_JTI_LENGTH} characters")
    return X5CToken(cert, jti, expires + LEEWAY)


# --- renewal: a certificate this CA issued vouches for its own successor -----------------------------------

NOT_YET_LEEWAY = timedelta(minutes=1)
AFTER_EXPIRY = timedelta(days=100 * 365)  # allowRenewalAfterExpiry: no end (the certificate must still be ours)
TOKEN_SPENDER = "x5c:renew"  # the `provisioner` recorded with a spent renew token's id


@dataclass(frozen=True)
class CertificateCredential:
    """A certificate whose key the caller proved to hold: by TLS client auth, or an x5c token it signed.

    With `csr`, a rekey: the same names and lifetime for the CSR's key.
    """

    certificate: x509.Certificate
    token: X5CToken | None = None
    csr: x509.CertificateSigningRequest | None = None

    @property
    def via(self) -> str:
        return "x5c-token" if self.token else "mtls"

    def locate(self, provisioners: Provisioners) -> Provisioner:
        return provisioners.renewal

    def audit_note(self) -> AuditNote:
        """Known before authorization, so a refusal names the certificate too."""
        return AuditNote(subject=common_name(self.certificate.subject),
                         details={"renewed": str(self.certificate.serial_number), "via": self.via},
                         sans=tuple(names_of(self.certificate).as_strings()))


class RenewalProvisioner:
    """Renew and rekey: the new certificate repeats the subject, the SANs, the EKUs and the lifetime of one
    this CA issued and still stands behind (same DER on record, one of its intermediates signed it, not
    revoked, not past expiry plus `grace`). It is recorded under the provisioner of the certificate it
    replaces, whose policy still judges it (the authority's alone when that provisioner was removed)."""

    type = "X5C-renew"
    name = TOKEN_SPENDER
    claims: Claims | None = None
    policy: PolicyConfig | None = None

    def __init__(self, store: Store, *, grace: timedelta = timedelta(0), claims: Claims | None = None,
                 provisioner_claims: Mapping[str, Claims | None] | None = None) -> None:
        self.store, self.grace = store, grace
        self.authority_claims = claims
        self.provisioner_claims = dict(provisioner_claims or {})

    @property
    def key_id(self) -> str:
        return TOKEN_SPENDER  # never a token's kid

    def _claim(self, provisioner: str | None, name: str) -> bool:
        """step-ca's claimer: the provisioner's claim where it sets one, else the authority's."""
        for claims in (self.provisioner_claims.get(provisioner or ""), self.authority_claims):
            value = getattr(claims, name, None) if claims is not None else None
            if value is not None:
                return bool(value)
        return False

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        assert isinstance(credential, CertificateCredential)
        old = credential.certificate
        serial = old.serial_number
        record = self.store.certificates.get(serial) if 0 < serial <= MAX_SERIAL else None
        issued_by = record.provisioner if record is not None else None
        # allowRenewalAfterExpiry (step-ca's, per provisioner or for all): an expired certificate may renew at any
        # time; renewalGracePeriod is the bounded alternative.
        grace = AFTER_EXPIRY if self._claim(issued_by, "allowRenewalAfterExpiry") else self.grace
        provisioner = check_renewable(self.store, old, now, grace=grace)
        if self._claim(provisioner, "disableRenewal"):
            own = self.provisioner_claims.get(provisioner)
            where = f"provisioner {provisioner!r}" if own is not None and own.disableRenewal is not None \
                else "this CA (authority claims)"
            raise Forbidden(f"renewal is disabled for {where}: claims.disableRenewal")
        token = credential.token
        try:
            ekus = tuple(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
        except x509.ExtensionNotFound:
            ekus = ()
        cn = common_name(old.subject)
        names = names_of(old)
        # The old window was backdated like every window policy decides; its duration ignores that.
        lifetime = old.not_valid_after_utc - old.not_valid_before_utc - BACKDATE
        csr = credential.csr
        return IssuanceRequest(
            provisioner=provisioner, common_name=cn, names=names.with_common_name(cn) if cn else names,
            public_key=csr.public_key() if csr is not None else old.public_key(),
            window=Window(lifetime=lifetime), csr=csr, csr_rule=CSRRule.SAME, csr_names=names,
            ext_key_usage=ekus,
            token=OneTimeToken(token.token_id, TOKEN_SPENDER, token.expires_at) if token else None,
            audit=credential.audit_note())

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}


def check_renewable(store: Store, cert: x509.Certificate, now: datetime, *, grace: timedelta) -> str:
    """Refuse unless this CA issued `cert` and still stands behind it; return its provisioner."""
    provisioner = check_issued(store, cert, now, grace=grace)
    revoked = store.revocations.get(cert.serial_number)
    if revoked is not None:
        raise Unauthorized(f"certificate {cert.serial_number} was revoked at {revoked.revoked_at.isoformat()} "
                           f"({revoked.reason_code.name.lower()}); it cannot be renewed")
    return provisioner


def check_issued(store: Store, cert: x509.Certificate, now: datetime, *, grace: timedelta = timedelta(0)) -> str:
    """This CA recorded exactly this certificate, one of its intermediates signed it, and it is
    within its validity (plus `grace` after expiry); return the provisioner that issued it.

    The TLS handshake does not check a client certificate's dates (appliance/api/peer.py), so every
    use of one as a credential goes through here.
    """
    serial = cert.serial_number
    record = store.certificates.get(serial) if 0 < serial <= MAX_SERIAL else None
    if record is None or record.der != cert.public_bytes(Encoding.DER):
        raise Unauthorized(f"certificate {serial} was not issued by this CA")
    rec = store.intermediates.get(record.issuer)
    if rec is None or rec.certificate is None:
        raise Unauthorized(f"certificate {serial} was issued by an intermediate this CA does not hold")
    intermediate = x509.load_der_x509_certificate(rec.certificate)
    try:
        cert.verify_directly_issued_by(intermediate)
    except (ValueError, TypeError, InvalidSignature):
        raise Unauthorized(f"certificate {serial} does not chain to this CA's intermediate "
                           f"{intermediate.subject.rfc4514_string()}") from None
    if now > cert.not_valid_after_utc + grace:
        after = f" (renewal grace {grace})" if grace else ""
        raise Unauthorized(f"certificate {serial} expired at {cert.not_valid_after_utc.isoformat()}{after}")
    if now < cert.not_valid_before_utc - NOT_YET_LEEWAY:
        raise Unauthorized(f"certificate {serial} is not valid before {cert.not_valid_before_utc.isoformat()}")
    return record.provisioner


def names_of(cert: x509.Certificate) -> RequestedNames:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return RequestedNames()
    return RequestedNames.from_general_names(san)


def common_name(subject: x509.Name) -> str:
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""
