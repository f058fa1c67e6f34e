"""Revoke: the rules that decide whether a caller may revoke a serial, and the record it leaves.

A revocation is a row in the store (which also bumps the issuer's revocation revision, so the CRL
signer in the housekeeping process publishes a new CRL within seconds, and drops any cached OCSP
response); no signature is made on the request path. Revoking twice is not an error: the first
revocation (its time and reason) stands and the caller gets the same 200.

Callers prove their right in one of two ways, each its own function so that the web layer picks one:
a one-time provisioner token whose `sub` is the serial (`revoke_with_token`), or — added with mTLS —
the certificate itself. Both end in `revoke`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal

from cryptography import x509

from appliance.audit import AuditEvent
from appliance.errors import BadRequest, CAError, Conflict, Forbidden, NotFound, ServiceUnavailable, Unauthorized
from appliance.provisioners.base import endpoint_audiences
from appliance.status.stamp import bump, stamp_path
from appliance.store import CertificateNotFound, InvalidTransition, RevocationReason, Revoked, StoreError
from appliance.store.records import MAX_SERIAL
from appliance.store.revocations import MAX_REASON_TEXT

if TYPE_CHECKING:
    from appliance.ra.authority import Authority, RequestContext

log = logging.getLogger(__name__)

ACTION = "x509.revoke"
REPLAYED = "token already used (one-time tokens cannot be replayed)"


@dataclass(frozen=True)
class RevokeRequest:
    """What the caller asks, already well-formed (see `parse_serial`, `reason_code`)."""

    serial: int
    reason_code: RevocationReason = RevocationReason.UNSPECIFIED
    reason: str | None = None
    passive: bool = True


def parse_serial(text: str) -> int:
    """step's serial: decimal (what `step ca revoke` sends), or hex with 0x; 400 for anything else."""
    value = text.strip()
    try:
        serial = int(value, 16) if value[:2].lower() == "0x" else int(value, 10)
    except ValueError:
        raise BadRequest(f"serial {text[:64]!r} is not a decimal (or 0x-prefixed hex) number") from None
    if not 0 < serial <= MAX_SERIAL:
        raise BadRequest("serial must be a positive integer of at most 20 octets")
    return serial


def reason_code(value: object) -> RevocationReason:
    """An RFC 5280 CRLReason (removeFromCRL and the unassigned 7 are refused): 400 otherwise."""
    allowed = ", ".join(f"{r.value} ({r.name.lower()})" for r in RevocationReason)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"reasonCode must be an integer, one of {allowed}")
    try:
        return RevocationReason(value)
    except ValueError:
        raise BadRequest(f"reasonCode {value} is not an RFC 5280 reason code; use one of {allowed}") from None


def check_reason_text(text: str | None) -> str | None:
    if text is not None and len(text) > MAX_REASON_TEXT:
        raise BadRequest(f"reason is longer than {MAX_REASON_TEXT} characters")
    return text or None


def revoke_with_token(authority: Authority, request: RevokeRequest, ott: str, ctx: RequestContext) -> Revoked:
    """A one-time provisioner token for `…/1.0/revoke` whose subject is this serial (step-ca's flow)."""
    provisioner: str | None = None
    try:
        prov = authority.provisioners.for_token(ott)
        auth = prov.authorize_sign(ott, endpoint_audiences(authority.config.dnsNames, "revoke"),
                                   datetime.now(timezone.utc))
        provisioner = auth.provisioner
        _burn(authority, auth.token_id, auth.provisioner, auth.token_expires_at)
        try:
            granted = parse_serial(auth.subject)
        except BadRequest:
            granted = None
        if granted != request.serial:
            raise Forbidden(f"the token grants revoking serial {auth.subject[:64]!r}, not {request.serial}")
    except CAError as exc:
        _audit(authority, ctx, request, provisioner, "denied" if exc.status < 500 else "error",
               reasons=exc.reasons, status=exc.status)
        raise
    return revoke(authority, request, source=f"provisioner:{provisioner}", ctx=ctx, provisioner=provisioner)


def revoke_with_certificate(authority: Authority, request: RevokeRequest, certificate: x509.Certificate,
                            ctx: RequestContext) -> Revoked:
    """The TLS client certificate revokes itself (step-ca's mTLS flow): no token, but only its own serial.

    The certificate must be one this CA issued and still within its validity (the handshake checked the
    chain to a root, not the dates: see appliance/api/peer.py). Already revoked: the first revocation stands.
    """
    from appliance.ra.renew import check_issued

    provisioner: str | None = None
    try:
        if certificate.serial_number != request.serial:
            raise Forbidden(f"the client certificate (serial {certificate.serial_number}) can only revoke itself, "
                            f"not serial {request.serial}")
        provisioner = check_issued(authority, certificate, datetime.now(timezone.utc))
    except CAError as exc:
        _audit(authority, ctx, request, provisioner, "denied" if exc.status < 500 else "error",
               reasons=exc.reasons, status=exc.status)
        raise
    return revoke(authority, request, source="mtls", ctx=ctx, provisioner=provisioner)


def revoke(authority: Authority, request: RevokeRequest, *, source: str, ctx: RequestContext,
           provisioner: str | None = None) -> Revoked:
    """Record the revocation of an issued certificate (the caller has been authorised) and audit it."""
    try:
        try:
            done = authority.store.revocations.revoke(request.serial, reason_code=int(request.reason_code),
                                                      reason=request.reason, source=source[:255])
        except CertificateNotFound:
            raise NotFound(f"no certificate with serial {request.serial} was issued by this CA") from None
        except InvalidTransition as exc:
            raise Conflict(str(exc)) from None
        except StoreError as exc:
            raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
    except CAError as exc:
        _audit(authority, ctx, request, provisioner, "denied" if exc.status < 500 else "error",
               reasons=exc.reasons, status=exc.status)
        raise
    rec = done.record
    if done.created:  # this host's OCSP memory must not serve "good" for it one request longer
        bump(stamp_path(authority.config.base_dir))
    _audit(authority, ctx, request, provisioner, "allowed", status=200, details={
        "issuer": rec.issuer, "source": source, "reasonCode": int(rec.reason_code),
        "alreadyRevoked": not done.created, "revokedAt": rec.revoked_at.isoformat()})
    return done


def _burn(authority: Authority, jti: str, provisioner: str, expires_at: datetime) -> None:
    try:
        first = authority.store.tokens.use(jti, provisioner, expires_at)
    except StoreError as exc:
        raise ServiceUnavailable(f"token database unavailable: {exc}") from None
    if not first:
        raise Unauthorized(REPLAYED)


def _audit(authority: Authority, ctx: RequestContext, request: RevokeRequest, provisioner: str | None,
           decision: Literal["allowed", "denied", "error"], *, reasons: tuple[str, ...] = (), status: int | None = None,
           details: dict[str, object] | None = None) -> None:
    event = AuditEvent(action=ACTION, decision=decision,
                       request_id=ctx.request_id, remote_addr=ctx.remote_addr, provisioner=provisioner,
                       serial=str(request.serial), reasons=reasons, status=status,
                       details={"reasonCode": int(request.reason_code), **(details or {})})
    try:
        authority.audit.record(event)
    except OSError as exc:  # the audit trail must not silently vanish
        log.error("cannot write the audit record: %s", exc)
        raise ServiceUnavailable(f"audit trail unavailable: {exc}") from None
