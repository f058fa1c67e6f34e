"""Renew and rekey: the rules that decide whether a certificate may be replaced, and with what.

A certificate vouches for its holder only while this CA stands behind it, so before anything is
issued the presented certificate must be exactly one this CA recorded (same DER in the store),
signed by one of its intermediates, not revoked, and not past its expiry plus the configured grace
(`authority.renewalGracePeriod`, default none). The new certificate repeats the subject and the
SANs and keeps the lifetime (policy's maximum still caps it, policy's name rules still apply), and
is issued like any other: reservation first, signature through kms/, audit record.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.audit import AuditEvent
from appliance.ca.issuer import LeafProfile
from appliance.errors import BadRequest, CAError, Forbidden, PolicyDenied, ServiceUnavailable, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners.x5c import X5CToken
from appliance.store import OneTimeToken, StoreError
from policy import Policy, Request, key_info
from policy.validity import BACKDATE

if TYPE_CHECKING:
    from appliance.ra.authority import Authority, RequestContext, SignResult

NOT_YET_LEEWAY = timedelta(minutes=1)
TOKEN_SPENDER = "x5c:renew"  # the `provisioner` recorded with a burned renew token's id


@dataclass(frozen=True)
class Credential:
    """How the caller proved possession of the certificate's key: TLS client auth or an x5c token."""

    certificate: x509.Certificate
    token: X5CToken | None = None

    @property
    def via(self) -> str:
        return "x5c-token" if self.token else "mtls"


def renew(authority: Authority, cred: Credential, ctx: RequestContext, *, action: str = "x509.renew",
          csr: x509.CertificateSigningRequest | None = None) -> SignResult:
    """Issue the successor of `cred.certificate` (with the CSR's key when rekeying)."""
    from appliance.ra.authority import SignResult

    old = cred.certificate
    names = _names(old)
    provisioner: str | None = None
    try:
        now = datetime.now(timezone.utc)
        try:
            provisioner = check_renewable(authority, old, now)
            if csr is not None:
                _check_csr(csr, old, names)
            profile = _decide(authority, provisioner, old, names, csr, now)
        except CAError:
            _burn(authority, cred)
            raise
        issuer = authority.issuer
        token = cred.token
        cert = issuer.issue(profile, provisioner=provisioner, request_id=ctx.request_id,
                            token=OneTimeToken(token.token_id, TOKEN_SPENDER, token.expires_at) if token else None)
    except CAError as exc:
        _audit(authority, action, "denied" if exc.status < 500 else "error", ctx, cred, names, provisioner,
               reasons=exc.reasons, status=exc.status)
        raise
    _audit(authority, action, "allowed", ctx, cred, names, provisioner, serial=str(cert.serial_number),
           status=201, issuer=issuer.id)
    return SignResult(cert, (cert, *issuer.chain))


def check_renewable(authority: Authority, cert: x509.Certificate, now: datetime) -> str:
    """Refuse unless this CA issued `cert` and still stands behind it; return its provisioner."""
    provisioner = check_issued(authority, cert, now, grace=authority.config.authority.renewal_grace)
    try:
        revoked = authority.store.revocations.get(cert.serial_number)
    except StoreError as exc:
        raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
    if revoked is not None:
        raise Unauthorized(f"certificate {cert.serial_number} was revoked at {revoked.revoked_at.isoformat()} "
                           f"({revoked.reason_code.name.lower()}); it cannot be renewed")
    return provisioner


def check_issued(authority: Authority, cert: x509.Certificate, now: datetime, *,
                 grace: timedelta = timedelta(0)) -> str:
    """This CA recorded exactly this certificate, one of its intermediates signed it, and it is
    within its validity (plus `grace` after expiry); return the provisioner that issued it.

    The TLS handshake does not check a client certificate's dates (appliance/api/peer.py), so every
    use of one as a credential goes through here.
    """
    serial = cert.serial_number
    try:
        record = authority.store.certificates.get(serial) if 0 < serial < 2**159 else None
        if record is None or record.der != cert.public_bytes(Encoding.DER):
            raise Unauthorized(f"certificate {serial} was not issued by this CA")
        _check_issuer(authority, cert, record.issuer)
    except StoreError as exc:
        raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
    if now > cert.not_valid_after_utc + grace:
        after = f" (renewal grace {grace})" if grace else ""
        raise Unauthorized(f"certificate {serial} expired at {cert.not_valid_after_utc.isoformat()}{after}")
    if now < cert.not_valid_before_utc - NOT_YET_LEEWAY:
        raise Unauthorized(f"certificate {serial} is not valid before {cert.not_valid_before_utc.isoformat()}")
    return record.provisioner


def _check_issuer(authority: Authority, cert: x509.Certificate, issuer_id: str) -> None:
    rec = authority.store.intermediates.get(issuer_id)
    if rec is None or rec.certificate is None:
        raise Unauthorized(f"certificate {cert.serial_number} was issued by an intermediate this CA does not hold")
    intermediate = x509.load_der_x509_certificate(rec.certificate)
    try:
        cert.verify_directly_issued_by(intermediate)
    except (ValueError, TypeError, InvalidSignature):
        raise Unauthorized(f"certificate {cert.serial_number} does not chain to this CA's intermediate "
                           f"{intermediate.subject.rfc4514_string()}") from None


def _names(cert: x509.Certificate) -> RequestedNames:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return RequestedNames()
    return RequestedNames.from_general_names(san)


def _common_name(subject: x509.Name) -> str:
    cns = subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else ""


def _check_csr(csr: x509.CertificateSigningRequest, old: x509.Certificate, names: RequestedNames) -> None:
    """A rekey CSR may change the key only: the same common name and exactly the same SANs."""
    if not csr.is_signature_valid:
        raise BadRequest("invalid csr: its signature does not verify")
    cn, want = _common_name(csr.subject), _common_name(old.subject)
    if cn and cn != want:
        raise Forbidden(f"certificate request common name {cn!r} differs from the certificate's {want!r}")
    try:
        ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        asked = RequestedNames.from_general_names(ext)
    except x509.ExtensionNotFound:
        asked = RequestedNames()
    except ValueError as exc:
        raise BadRequest(f"invalid csr extensions: {exc}") from None
    if _name_set(asked) != _name_set(names):
        raise Forbidden(f"certificate request names {sorted(_name_set(asked))} differ from the certificate's "
                        f"{sorted(_name_set(names))}; a rekey keeps the names")


def _name_set(names: RequestedNames) -> set[str]:
    return {s.lower() if s.startswith("dns:") else s for s in names.as_strings()}


def _policy(authority: Authority, provisioner: str) -> Policy:
    policy = authority.policy_for(provisioner)
    if policy is not None:
        return policy
    auth = authority.config.authority  # a provisioner since removed: the authority's rules alone
    return Policy.from_config(
        authority_policy=auth.policy.model_dump(exclude_none=True) if auth.policy else None,
        authority_claims=auth.claims.model_dump(exclude_none=True) if auth.claims else None)


def _decide(authority: Authority, provisioner: str, old: x509.Certificate, names: RequestedNames,
            csr: x509.CertificateSigningRequest | None, now: datetime) -> LeafProfile:
    claims = authority.config.authority.claims
    if claims is not None and claims.disableRenewal:
        raise Forbidden("renewal is disabled on this CA (authority claims.disableRenewal)")
    policy = _policy(authority, provisioner)
    key = csr.public_key() if csr is not None else old.public_key()
    # The old window was backdated like every window policy decides; its duration ignores that.
    lifetime = old.not_valid_after_utc - old.not_valid_before_utc - BACKDATE
    lifetime = min(lifetime, policy.limits.maximum.value)
    cn = _common_name(old.subject)
    judged = names.with_common_name(cn) if cn else names
    decision = policy.evaluate(Request(
        dns_names=judged.dns, ip_addresses=judged.ips, emails=judged.emails, uris=judged.uris,
        key=key_info(key), not_before=None, not_after=now + lifetime, now=now))
    if not decision.allowed:
        raise PolicyDenied("; ".join(decision.reasons), reasons=decision.reasons)
    try:
        ekus = set(old.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        ekus = set()
    return LeafProfile(common_name=cn, public_key=key,
                       not_before=decision.not_before, not_after=decision.not_after,
                       dns_names=names.dns, ip_addresses=names.ips, emails=names.emails, uris=names.uris,
                       server_auth=ExtendedKeyUsageOID.SERVER_AUTH in ekus,
                       client_auth=ExtendedKeyUsageOID.CLIENT_AUTH in ekus)


def _burn(authority: Authority, cred: Credential) -> None:
    """A refused renew token is spent too, as a refused sign token is: no probing with it."""
    if cred.token is None:
        return
    try:
        authority.store.tokens.use(cred.token.token_id, TOKEN_SPENDER, cred.token.expires_at)
    except StoreError:
        pass  # the refusal stands; the token expires within minutes anyway


def _audit(authority: Authority, action: str, decision: str, ctx: RequestContext, cred: Credential,
           names: RequestedNames, provisioner: str | None, *, reasons: tuple[str, ...] = (),
           serial: str | None = None, status: int | None = None, issuer: str | None = None) -> None:
    details = {"renewed": str(cred.certificate.serial_number), "via": cred.via}
    if issuer:
        details["issuer"] = issuer
    authority.record(AuditEvent(
        action=action, decision=decision, request_id=ctx.request_id,  # type: ignore[arg-type]
        remote_addr=ctx.remote_addr, provisioner=provisioner,
        subject=_common_name(cred.certificate.subject), sans=tuple(names.as_strings()), serial=serial,
        reasons=reasons, status=status, details=details))
