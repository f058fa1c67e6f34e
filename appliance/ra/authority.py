"""The registration authority: authenticate → check the CSR → policy → issue → store → audit.

Every sign request passes through `Authority.sign`, and every outcome, allowed or refused, leaves
one audit record with the reasons. The web layer only parses; the rules live here.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509

from appliance import metrics
from appliance.audit import AuditEvent, AuditLog, JsonLinesAudit
from appliance.ca.active import ActiveIssuer
from appliance.ca.issuer import Issuer, LeafProfile
from appliance.certutil import fingerprint, load_certificates
from appliance.config import CAConfig, TLSOptions
from appliance.errors import (
    BadRequest,
    CAError,
    Forbidden,
    NotFound,
    PolicyDenied,
    ServiceUnavailable,
    Unauthorized,
)
from appliance.names import RequestedNames, split_sans
from appliance.provisioners import Provisioner, Provisioners, SignAuthorization
from appliance.provisioners import x5c as x5c_token
from appliance.provisioners.base import endpoint_audiences, sign_audiences
from appliance.provisioners.x5c import X5CToken
from appliance.ra import renew as renewal
from appliance.ra.revoke import RevokeRequest, revoke_with_certificate, revoke_with_token
from appliance.ra.validity import parse_time_or_duration
from appliance.status.crl import PublishedCRLs
from appliance.status.ocsp import OCSPResponder
from appliance.store import CRLRecord, IntermediateRecord, OneTimeToken, Revoked, Store, StoreError
from kms import backends_health
from policy import Policy, Request, key_info

log = logging.getLogger(__name__)
_ISSUER_ID = re.compile(r"[0-9a-f]{1,128}")  # an intermediate id: its key identifier in hex

REPLAYED = "token already used (one-time tokens cannot be replayed)"


@dataclass(frozen=True)
class RequestContext:
    request_id: str | None = None
    remote_addr: str | None = None


@dataclass(frozen=True)
class SignResult:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, then the intermediate(s)


class Authority:
    def __init__(self, config: CAConfig, store: Store, audit: AuditLog, *,
                 issuer: Issuer | None = None):
        self.config = config
        self.store = store
        self.audit = audit
        self.roots = load_certificates(config.resolve(config.root))
        self.active = ActiveIssuer(config, store)
        self.crls = PublishedCRLs(store)  # the CRLs the housekeeping process signed
        self.ocsp = OCSPResponder(config, store, self.active)  # answers from the pre-signed cache
        self.provisioners = Provisioners.from_config(config.authority.provisioners)
        self.audiences = sign_audiences(config.dnsNames)
        self._policies = {p.name: self._policy_for(p) for p in self.provisioners}
        self._issuer = issuer

    @classmethod
    def from_config(cls, config: CAConfig) -> Authority:
        """Build everything but the KMS key, which opens on first use (after the fork)."""
        store = Store.from_config(config.db.model_dump(), config.base_dir)
        audit = JsonLinesAudit(config.resolve(config.audit.path))
        return cls(config, store, audit)

    def _policy_for(self, p: Provisioner) -> Policy:
        auth = self.config.authority
        return Policy.from_config(
            authority_policy=_dump(auth.policy), authority_claims=_dump(auth.claims),
            provisioner_name=p.name, provisioner_policy=_dump(p.policy),
            provisioner_claims=_dump(p.claims))

    @property
    def issuer(self) -> Issuer:
        """The intermediate that signs now (the database decides, so activation reaches every worker)."""
        return self._issuer or self.active.current()

    @property
    def intermediates(self) -> list[x509.Certificate]:
        """The intermediates clients may need, the active one first (`/intermediates`)."""
        return [self._issuer.certificate] if self._issuer else self.active.published()

    @property
    def tls_options(self) -> TLSOptions:
        return self.config.tls

    def root_by_fingerprint(self, sha256_hex: str) -> x509.Certificate | None:
        want = sha256_hex.replace("-", "").replace(":", "").lower()
        return next((r for r in self.roots if fingerprint(r) == want), None)

    # --- signing -------------------------------------------------------------------------

    def sign(self, csr: x509.CertificateSigningRequest, ott: str, not_before: str | None,
             not_after: str | None, ctx: RequestContext) -> SignResult:
        auth: SignAuthorization | None = None
        names: RequestedNames | None = None
        try:
            now = datetime.now(timezone.utc)
            if not csr.is_signature_valid:
                raise BadRequest("invalid csr: its signature does not verify")
            provisioner = self.provisioners.for_token(ott)
            auth = provisioner.authorize_sign(ott, self.audiences, now)
            try:
                names = self._check_csr(csr, auth)
                profile = self._decide(provisioner, auth, names, csr, not_before, not_after, now)
            except CAError:
                self._burn(auth)  # a refused token is spent too: no probing the policy with it
                raise
            issuer = self.issuer
            cert = issuer.issue(profile, provisioner=auth.provisioner, request_id=ctx.request_id,
                                token=OneTimeToken(auth.token_id, auth.provisioner, auth.token_expires_at))
        except CAError as exc:
            self._audit("x509.sign", "denied" if exc.status < 500 else "error", ctx, auth, names,
                        reasons=exc.reasons, status=exc.status)
            raise
        self._audit("x509.sign", "allowed", ctx, auth, names, serial=str(cert.serial_number),
                    status=201, issuer=issuer.id)
        return SignResult(cert, (cert, *issuer.chain))

    def renew(self, certificate: x509.Certificate, token: X5CToken | None, ctx: RequestContext,
              csr: x509.CertificateSigningRequest | None = None) -> SignResult:
        """Renew (or, with `csr`, rekey) a certificate its holder proved to own (appliance/ra/renew.py)."""
        cred = renewal.Credential(certificate, token)
        return renewal.renew(self, cred, ctx, csr=csr, action="x509.rekey" if csr is not None else "x509.renew")

    def verify_renew_token(self, token: str, endpoint: str) -> X5CToken:
        """An x5c bearer token for `/1.0/<endpoint>`, signed by the key of the certificate it carries."""
        return x5c_token.verify(token, endpoint_audiences(self.config.dnsNames, endpoint),
                                datetime.now(timezone.utc))

    def policy_for(self, provisioner: str) -> Policy | None:
        """The policy a provisioner's certificates are judged by (None for an unknown name)."""
        return self._policies.get(provisioner)

    def record(self, event: AuditEvent) -> None:
        """Write an audit record; a trail that cannot be written stops the request (503)."""
        try:
            self.audit.record(event)
        except OSError as exc:  # the audit trail must not silently vanish
            log.error("cannot write the audit record: %s", exc)
            raise ServiceUnavailable(f"audit trail unavailable: {exc}") from None

    def revoke_with_token(self, request: RevokeRequest, ott: str, ctx: RequestContext) -> Revoked:
        """Revoke `request.serial` on the word of a one-time token whose subject is that serial."""
        return revoke_with_token(self, request, ott, ctx)

    def revoke_with_certificate(self, request: RevokeRequest, certificate: x509.Certificate,
                                ctx: RequestContext) -> Revoked:
        """Revoke `request.serial` on the word of that very certificate (mTLS)."""
        return revoke_with_certificate(self, request, certificate, ctx)

    def intermediate(self, issuer_id: str) -> IntermediateRecord:
        """The intermediate `issuer_id` names (its key identifier in lower-case hex), else 404."""
        if not _ISSUER_ID.fullmatch(issuer_id):
            raise NotFound(f"no intermediate {issuer_id[:40]!r}: ids are lower-case hex key identifiers")
        try:
            rec = self.store.intermediates.get(issuer_id)
        except StoreError as exc:
            raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
        if rec is None:
            raise NotFound(f"no intermediate {issuer_id}")
        return rec

    def current_crl(self, issuer_id: str | None = None) -> CRLRecord:
        """The latest CRL of `issuer_id`, by default of the active intermediate (503 before the first)."""
        if issuer_id is None:
            try:
                active = self.store.intermediates.active_id(datetime.now(timezone.utc))
            except StoreError as exc:
                raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
            if active is None:
                raise ServiceUnavailable("no active intermediate, so no CRL to serve")
            issuer_id = active[0]
        return self.crls.latest(issuer_id)

    def reject(self, action: str, ctx: RequestContext, error: CAError) -> None:
        """Audit a request the web layer refused before it reached the rules (bad JSON, size)."""
        self._audit(action, "denied", ctx, None, None, reasons=error.reasons, status=error.status)

    def _decide(self, provisioner: Provisioner, auth: SignAuthorization, names: RequestedNames,
                csr: x509.CertificateSigningRequest, not_before: str | None, not_after: str | None,
                now: datetime) -> LeafProfile:
        """What the certificate will hold, once policy agrees to the names the token granted."""
        nb = parse_time_or_duration(not_before, now, "notBefore")
        na = parse_time_or_duration(not_after, now, "notAfter")
        decision = self._policies[provisioner.name].evaluate(Request(
            dns_names=names.dns, ip_addresses=names.ips, emails=names.emails, uris=names.uris,
            key=key_info(csr.public_key()), not_before=nb, not_after=na, now=now))
        if not decision.allowed:
            raise PolicyDenied("; ".join(decision.reasons), reasons=decision.reasons)
        names = names.canonical()
        return LeafProfile(
            common_name=names.canonical_common_name(auth.subject), public_key=csr.public_key(),
            not_before=decision.not_before, not_after=decision.not_after,
            dns_names=names.dns, ip_addresses=names.ips, emails=names.emails, uris=names.uris)

    def _burn(self, auth: SignAuthorization) -> None:
        """Spend the token of a refused request; a replay is reported as such."""
        try:
            first = self.store.tokens.use(auth.token_id, auth.provisioner, auth.token_expires_at)
        except StoreError as exc:
            raise ServiceUnavailable(f"token database unavailable: {exc}") from None
        if not first:
            raise Unauthorized(REPLAYED) from None

    def _check_csr(self, csr: x509.CertificateSigningRequest, auth: SignAuthorization) -> RequestedNames:
        """The CSR may only ask for what the token grants (step-ca's CN and SAN validators)."""
        cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        if cns and cns[0].value != auth.subject:
            raise Forbidden(f"certificate request common name {cns[0].value!r} differs from the "
                            f"token subject {auth.subject!r}")
        granted = split_sans(auth.sans)
        try:
            ext = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            ext = None
        except ValueError as exc:
            raise BadRequest(f"invalid csr extensions: {exc}") from None
        if ext is not None:
            asked = RequestedNames.from_general_names(ext)
            mismatch = granted.mismatch(asked)
            if mismatch:
                raise Forbidden(f"certificate request names differ from the token's: {mismatch}")
        return granted.with_common_name(auth.subject)

    def _audit(self, action: str, decision: Any, ctx: RequestContext, auth: SignAuthorization | None,
               names: RequestedNames | None, *, reasons: tuple[str, ...] = (),
               serial: str | None = None, status: int | None = None, issuer: str | None = None) -> None:
        try:
            self.audit.record(AuditEvent(
                action=action, decision=decision, request_id=ctx.request_id,
                remote_addr=ctx.remote_addr, provisioner=auth.provisioner if auth else None,
                subject=auth.subject if auth else None,
                sans=tuple(names.as_strings()) if names else (), serial=serial,
                reasons=reasons, status=status, details={"issuer": issuer} if issuer else {}))
        except OSError as exc:  # the audit trail must not silently vanish
            log.error("cannot write the audit record: %s", exc)
            raise ServiceUnavailable(f"audit trail unavailable: {exc}") from None

    # --- the CA's own certificates ---------------------------------------------------------

    def issue_server_certificate(self, dns_names: list[str], public_key: Any,
                                 lifetime: timedelta) -> SignResult:
        """The HTTPS listener's certificate: issued by the intermediate, recorded, audited."""
        names = split_sans(dns_names)
        now = datetime.now(timezone.utc)
        profile = LeafProfile(common_name=dns_names[0], public_key=public_key,
                              not_before=now - timedelta(minutes=1), not_after=now + lifetime,
                              dns_names=names.dns, ip_addresses=names.ips, client_auth=False)
        ctx = RequestContext(request_id="server-tls")
        issuer = self.issuer
        cert = issuer.issue(profile, provisioner="hsmca:server", request_id=ctx.request_id)
        self._audit("x509.sign.server", "allowed", ctx, None, names, serial=str(cert.serial_number),
                    status=201, issuer=issuer.id)
        return SignResult(cert, (cert, *issuer.chain))

    def health(self) -> dict[str, Any]:
        """"ok" or "unavailable: why" per dependency; the signing backends this worker has opened.

        A backend is only asked once a key on it has been opened (after the first issuance in
        this worker), so /health never opens a KMS session of its own. Each check also sets
        `hsmca_kms_backend_up`, so a CA that signs nothing still reports its backends' state.
        """
        detail: dict[str, Any] = {"db": "ok", "kms": "ok"}
        try:
            self.store.ping()
        except StoreError as exc:
            detail["db"] = f"unavailable: {exc}"
        reports = backends_health()
        metrics.backends_checked((str(r.get("backend") or "unknown"), _backend_ok(r)) for r in reports)
        down = [r for r in reports if not _backend_ok(r)]
        if down:
            detail["kms"] = "unavailable: " + "; ".join(
                f"{r.get('backend')}: {r.get('detail') or r.get('status')}" for r in down)
        detail["kmsBackends"] = reports
        return detail

    def close(self) -> None:
        self.store.close()


def _backend_ok(report: dict[str, Any]) -> bool:
    return report.get("ok") is True or report.get("status") == "ok"


def _dump(model: Any) -> dict[str, Any] | None:
    return None if model is None else model.model_dump(exclude_none=True)
