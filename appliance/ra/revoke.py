"""Revoke: the rules that decide whether a caller may revoke a serial, and the record it leaves.

A revocation is a row in the store (which also bumps the issuer's revocation revision, so the CRL
signer in the housekeeping process publishes a new CRL within seconds, and drops any cached OCSP
response); no signature is made on the request path. Revoking twice is not an error: the first
revocation (its time and reason) stands and the caller gets the same 200.

Callers prove their right in one of two ways, each its own function so that the web layer picks one:
a one-time provisioner token whose `sub` is the serial (`Revocations.with_token`), or (mTLS) the
certificate itself (`with_certificate`). Both end in `Revocations.revoke`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

from cryptography import x509

from appliance.audit import AuditEvent, AuditLog
from appliance.config import CAConfig
from appliance.errors import BadRequest, CAError, Forbidden, NotFound, Unauthorized
from appliance.provisioners import Provisioners, TokenGrant
from appliance.provisioners.base import endpoint_audiences
from appliance.provisioners.x5c import check_issued
from appliance.ra.pipeline import RequestContext, spend, write_audit
from appliance.status.stamp import bump, stamp_path
from appliance.store import (
    CertificateNotFound,
    RevocationReason,
    Revoked,
    Store,
    StoreError,
    as_ca_error,
)
from appliance.store.records import MAX_SERIAL
from appliance.store.revocations import MAX_REASON_TEXT

ACTION = "x509.revoke"


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


def verified_token(provisioners: Provisioners, ott: str, audiences: frozenset[str]) -> TokenGrant:
    """The grant of a one-time token for a revocation endpoint (X.509 or SSH), checked by its provisioner; the
    caller spends it and holds its subject to the serial."""
    prov = provisioners.for_token(ott)
    verify = getattr(prov, "verify_token", None)
    if verify is None:
        raise Unauthorized(f"provisioner {prov.name!r} ({prov.type}) does not authorize revocation by token")
    grant: TokenGrant = verify(ott, audiences, datetime.now(timezone.utc))
    return grant


class Revocations:
    """Who may revoke what, and the record a revocation leaves (store row, stamp, audit)."""

    def __init__(self, store: Store, audit: AuditLog, provisioners: Provisioners, config: CAConfig) -> None:
        self.store, self.audit, self.provisioners, self.config = store, audit, provisioners, config

    def with_token(self, request: RevokeRequest, ott: str, ctx: RequestContext) -> Revoked:
        """A one-time provisioner token for `…/1.0/revoke` whose subject is this serial (step-ca's flow)."""
        provisioner: str | None = None
        try:
            grant = verified_token(self.provisioners, ott, endpoint_audiences(self.config.dnsNames, "revoke"))
            provisioner = grant.provisioner
            spend(self.store, grant.token)
            try:
                granted = parse_serial(grant.subject)
            except BadRequest:
                granted = None
            if granted != request.serial:
                raise Forbidden(f"the token grants revoking serial {grant.subject[:64]!r}, not {request.serial}")
        except (CAError, StoreError) as exc:
            self._audit_refusal(ctx, request, provisioner, exc)
            raise
        return self.revoke(request, source=f"provisioner:{provisioner}", ctx=ctx, provisioner=provisioner)

    def with_certificate(self, request: RevokeRequest, certificate: x509.Certificate, ctx: RequestContext) -> Revoked:
        """The TLS client certificate revokes itself (step-ca's mTLS flow): no token, but only its own serial.

        The certificate must be one this CA issued and still within its validity (the handshake checked the
        chain to a root, not the dates: see appliance/api/peer.py). Already revoked: the first revocation stands.
        """
        provisioner: str | None = None
        try:
            if certificate.serial_number != request.serial:
                raise Forbidden(f"the client certificate (serial {certificate.serial_number}) can only revoke "
                                f"itself, not serial {request.serial}")
            provisioner = check_issued(self.store, certificate, datetime.now(timezone.utc))
        except (CAError, StoreError) as exc:
            self._audit_refusal(ctx, request, provisioner, exc)
            raise
        return self.revoke(request, source="mtls", ctx=ctx, provisioner=provisioner)

    def revoke(self, request: RevokeRequest, *, source: str, ctx: RequestContext,
               provisioner: str | None = None) -> Revoked:
        """Record the revocation of an issued certificate (the caller has been authorised) and audit it."""
        try:
            try:
                done = self.store.revocations.revoke(request.serial, reason_code=int(request.reason_code),
                                                     reason=request.reason, source=source[:255])
            except CertificateNotFound:
                raise NotFound(f"no certificate with serial {request.serial} was issued by this CA") from None
        except (CAError, StoreError) as exc:
            self._audit_refusal(ctx, request, provisioner, exc)
            raise
        rec = done.record
        if done.created:  # this host's OCSP memory must not serve "good" for it one request longer
            bump(stamp_path(self.config.base_dir))
        self._audit(ctx, request, provisioner, "allowed", status=200, details={
            "issuer": rec.issuer, "source": source, "reasonCode": int(rec.reason_code),
            "alreadyRevoked": not done.created, "revokedAt": rec.revoked_at.isoformat()})
        return done

    def _audit_refusal(self, ctx: RequestContext, request: RevokeRequest, provisioner: str | None,
                       exc: CAError | StoreError) -> None:
        error = exc if isinstance(exc, CAError) else as_ca_error(exc)
        self._audit(ctx, request, provisioner, "denied" if error.status < 500 else "error",
                    reasons=error.reasons, status=error.status)
        exc.audited = True  # type: ignore[union-attr]

    def _audit(self, ctx: RequestContext, request: RevokeRequest, provisioner: str | None,
               decision: Literal["allowed", "denied", "error"], *, reasons: tuple[str, ...] = (),
               status: int | None = None, details: dict[str, object] | None = None) -> None:
        write_audit(self.audit, AuditEvent(
            action=ACTION, decision=decision, request_id=ctx.request_id, remote_addr=ctx.remote_addr,
            provisioner=provisioner, serial=str(request.serial), reasons=reasons, status=status,
            details={"reasonCode": int(request.reason_code), **(details or {})}))
