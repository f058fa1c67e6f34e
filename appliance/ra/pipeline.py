"""The one issuance pipeline: every certificate the CA signs passes these steps, in this order.

    authorize → csr → template → policy → profile → lint → record → sign → issued   (then the audit record)

`authorize` finds the provisioner for the credential and lets it turn the credential into an
`IssuanceRequest` (who is asking, and for what); `csr` holds the CSR to what was granted; `template` lets the
provisioner's certificate template (if it has one) shape the request (templates.py); `policy` judges
names, key and validity; `profile` decides what the certificate holds and which intermediate signs it;
`lint` reads the exact to-be-signed bytes as a verifier would, against that intermediate (ca/lint.py);
`record` stores the serial and the to-be-signed body and spends the one-time token in one transaction;
`sign` has the KMS sign exactly those bytes; `issued` attaches the certificate to its record. A request
refused before `record` spends its token all the same (no probing the policy with one token). Every
outcome leaves one audit record naming the steps it passed, so an auditor sees that JWK sign, renew,
rekey, ACME finalize and the CA's own certificates all went the same way.

An SSH certificate (`Pipeline.issue_ssh`) takes the same path where it applies: authorize → template → policy →
profile → lint → record → sign → issued, the same token spending and the same one audit record (no CSR; its
template is the provisioner's `options.ssh`).
The steps of the two kinds (`_x509`, `_ssh`) are the only callers of `Issuer.record_and_sign` and
`SSHCA.record_and_sign`, and only `_run` runs them (a test walks the code to keep it so).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate

from appliance import metrics
from appliance.audit import AuditEvent, AuditLog
from appliance.ca.issuer import Issuer, LeafProfile, key_usage
from appliance.ca.lint import lint
from appliance.ca.ssh import SSHCA, USER_EXTENSIONS, SSHProfile
from appliance.ca.ssh import lint as ssh_lint
from appliance.certutil import read_extensions
from appliance.errors import BadRequest, CAError, Forbidden, PolicyDenied, ServiceUnavailable, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners import Provisioner, Provisioners
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest
from appliance.ra import templates
from appliance.ra.templates import Template
from appliance.store import OneTimeToken, Reservation, Store, StoreError, TokenReplayed, as_ca_error
from appliance.store.ssh_certificates import SSHReservation
from policy import Policy, SSHRequest, key_info

log = logging.getLogger(__name__)

STEPS = ("authorize", "csr", "template", "policy", "profile", "lint", "record", "sign", "issued")
REPLAYED = "token already used (one-time tokens cannot be replayed)"
_T = TypeVar("_T")


def _wire(cert: SSHCertificate) -> bytes:
    """The certificate's SSH wire blob (what `-cert.pub` holds in base64 after the type)."""
    import base64

    return base64.b64decode(cert.public_bytes().split()[1])


@dataclass(frozen=True)
class RequestContext:
    """Where a request came from, for the audit trail."""

    request_id: str | None = None
    remote_addr: str | None = None


@dataclass(frozen=True)
class Issued:
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]  # leaf first, then the intermediate and what follows it


class Issuers(Protocol):
    """Which intermediate signs: the active one, or a named one (the CA's own certificates)."""

    def current(self) -> Issuer: ...

    def by_id(self, issuer_id: str) -> Issuer: ...


class Policies(Protocol):
    """The rules a provisioner's requests are held to: its policy, and its certificate template."""

    def for_request(self, provisioner: Provisioner, request: IssuanceRequest) -> Policy: ...

    def template_for(self, provisioner: Provisioner, request: IssuanceRequest) -> Template | None: ...

    def ssh_enabled(self, provisioner: Provisioner, request: IssuanceRequest) -> bool: ...

    def ssh_template_for(self, provisioner: Provisioner, request: IssuanceRequest) -> Template | None: ...


@dataclass
class _Trace:
    """The steps one request passed, and what the audit record will say about it."""

    action: str
    ctx: RequestContext
    note: AuditNote
    steps: list[str] = field(default_factory=list)
    provisioner: str | None = None
    names: RequestedNames | None = None

    def enter(self, step: str) -> None:
        self.steps.append(step)

    def event(self, decision: Literal["allowed", "denied", "error"], *, status: int,
              reasons: tuple[str, ...] = (), serial: int | None = None,
              issuer: str | None = None) -> AuditEvent:
        details: dict[str, Any] = {**self.note.details, "steps": list(self.steps)}
        if issuer:
            details["issuer"] = issuer
        sans = tuple(self.names.as_strings()) if self.names is not None else self.note.sans
        return AuditEvent(action=self.action, decision=decision, request_id=self.ctx.request_id,
                          remote_addr=self.ctx.remote_addr, provisioner=self.provisioner,
                          subject=self.note.subject, sans=sans, serial=str(serial) if serial else None,
                          reasons=reasons, status=status, details=details)


class Pipeline:
    def __init__(self, store: Store, audit: AuditLog, provisioners: Provisioners, policies: Policies,
                 issuers: Issuers, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 ssh_ca: SSHCA | None = None) -> None:
        self.store = store
        self.ssh_ca = ssh_ca
        self.audit = audit
        self.provisioners = provisioners
        self.policies = policies
        self.issuers = issuers
        self.clock = clock

    def issue(self, credential: object, ctx: RequestContext, *, action: str,
              note: AuditNote | None = None) -> Issued:
        """Run every step for one credential; the refusal (a CAError) or the certificate, audited either way."""
        return self._run(credential, ctx, action, note, self._x509)

    def issue_ssh(self, credential: object, ctx: RequestContext, *, action: str = "ssh.sign",
                  note: AuditNote | None = None) -> SSHCertificate:
        """The same for an SSH certificate: authorize → template → policy → profile → lint → record → sign →
        issued."""
        return self._run(credential, ctx, action, note, self._ssh)

    def _run(self, credential: object, ctx: RequestContext, action: str, note: AuditNote | None,
             steps: Callable[[Provisioner, IssuanceRequest, datetime, _Trace, list[int], RequestContext],
                             tuple[_T, int, str | None]]) -> _T:
        """Authorize, run the certificate kind's steps, and write the one audit record, whatever happens."""
        note = note or AuditNote()
        trace = _Trace(action, ctx, note)
        recorded: list[int] = []
        try:
            now = self.clock()
            trace.enter("authorize")
            provisioner = self.provisioners.find(credential)
            request = provisioner.authorize(credential, now)
            trace.provisioner = request.provisioner
            trace.note = _merge(note, request.audit)
            trace.names = request.names
            result, serial, issuer_id = steps(provisioner, request, now, trace, recorded, ctx)
        except Exception as exc:
            error = exc if isinstance(exc, CAError) else as_ca_error(exc) if isinstance(exc, StoreError) else None
            status = error.status if error is not None else 500
            reasons = error.reasons if error is not None else (f"internal error ({type(exc).__name__})",)
            decision: Literal["denied", "error"] = "denied" if status < 500 else "error"
            write_audit(self.audit, trace.event(decision, status=status, reasons=reasons,
                                           serial=recorded[0] if recorded else None))
            exc.audited = True  # type: ignore[attr-defined]  # the web layer must not audit it twice
            exc.step = trace.steps[-1] if trace.steps else None  # type: ignore[attr-defined]
            raise
        metrics.certificate_issued(request.provisioner)
        write_audit(self.audit, trace.event("allowed", status=201, serial=serial, issuer=issuer_id))
        return result

    def _x509(self, provisioner: Provisioner, request: IssuanceRequest, now: datetime, trace: _Trace,
              recorded: list[int], ctx: RequestContext) -> tuple[Issued, int, str | None]:
        if request.ssh is not None:
            raise BadRequest("an SSH certificate request goes to /1.0/ssh/sign")
        try:
            trace.enter("csr")
            _check_csr(request)
            trace.enter("template")
            template = self.policies.template_for(provisioner, request)
            if template is not None:
                request = templates.apply(request, template.render(
                    templates.variables(request, provisioner.name, provisioner.type)))
                trace.names = request.names
            trace.enter("policy")
            decided = self._judge(self.policies.for_request(provisioner, request), request, now)
            trace.enter("profile")
            issuer = self._issuer(request)
            profile = _profile(request, decided, issuer)
            trace.names = profile.names
        except CAError:
            self._spend_refused(request)
            raise

        def record(serial: int, tbs: bytes) -> None:
            trace.enter("lint")
            try:
                lint(tbs, issuer.certificate)
            except CAError:
                self._spend_refused(request)
                raise
            trace.enter("record")
            self._record(serial, tbs, profile, issuer, request, ctx)
            recorded.append(serial)
            trace.enter("sign")

        try:
            cert = issuer.record_and_sign(profile, record)
        except CAError as exc:
            if recorded:
                self._abandon(recorded[0], exc.message)
            raise
        trace.enter("issued")
        self.store.certificates.mark_issued(cert.serial_number, cert.public_bytes(Encoding.DER))
        return Issued(cert, (cert, *issuer.chain)), cert.serial_number, issuer.id

    def _ssh(self, provisioner: Provisioner, request: IssuanceRequest, now: datetime, trace: _Trace,
             recorded: list[int], ctx: RequestContext) -> tuple[SSHCertificate, int, str | None]:
        ssh = request.ssh
        if ssh is None:
            raise BadRequest("not an SSH certificate request")
        trace.names = None  # the audit record lists the principals (the request's audit note), not X.509 names
        if self.ssh_ca is None:
            raise BadRequest("this CA signs no SSH certificates")
        ssh_ca = self.ssh_ca
        try:
            if not self.policies.ssh_enabled(provisioner, request):
                raise Forbidden(f"provisioner {request.provisioner!r} may not sign SSH certificates "
                                "(claims.enableSSHCA is not true for it or the authority)")
            trace.enter("template")
            template = self.policies.ssh_template_for(provisioner, request)
            if template is not None:
                request = templates.apply_ssh(request, template.render_ssh(
                    templates.ssh_variables(request, provisioner.name, provisioner.type)))
                trace.note = _merge(trace.note, request.audit)
                ssh = request.ssh
                assert ssh is not None
            trace.enter("policy")
            policy = self.policies.for_request(provisioner, request)
            decision = policy.evaluate_ssh(SSHRequest(
                cert_type=ssh.cert_type, principals=tuple(ssh.principals), key=key_info(request.public_key),
                valid_after=request.window.not_before, valid_before=request.window.not_after, now=now))
            if not decision.allowed:
                raise PolicyDenied("; ".join(decision.reasons), reasons=decision.reasons)
            trace.enter("profile")
            extensions = dict(ssh.extensions) if ssh.extensions or ssh.cert_type == "host" else \
                {name: "" for name in USER_EXTENSIONS}
            profile = SSHProfile(cert_type=ssh.cert_type, key_id=ssh.key_id, principals=tuple(ssh.principals),
                                 public_key=request.public_key,  # type: ignore[arg-type]
                                 valid_after=decision.not_before, valid_before=decision.not_after,
                                 critical_options=dict(ssh.critical_options), extensions=extensions)
            trace.enter("lint")
            ssh_lint(profile)
        except CAError:
            self._spend_refused(request)
            raise

        def record(serial: int, ca_key: str, tbs: bytes) -> None:
            trace.enter("record")
            try:
                self.store.ssh.reserve(SSHReservation(
                    serial=serial, cert_type=profile.cert_type, key_id=profile.key_id, principals=profile.principals,
                    valid_after=profile.valid_after, valid_before=profile.valid_before,
                    provisioner=request.provisioner, ca_key=ca_key, tbs=tbs, request_id=ctx.request_id),
                    request.token)
            except TokenReplayed:
                raise Unauthorized(REPLAYED) from None
            recorded.append(serial)
            trace.enter("sign")

        try:
            cert = ssh_ca.record_and_sign(profile, record)
        except CAError as exc:
            if recorded:
                self.store.ssh.mark_abandoned(recorded[0], exc.message[:1000])
            raise
        trace.enter("issued")
        self.store.ssh.mark_issued(cert.serial, _wire(cert))
        return cert, cert.serial, None

    def _judge(self, policy: Policy, request: IssuanceRequest, now: datetime) -> tuple[datetime, datetime]:
        window = request.window
        not_after = window.not_after
        if window.lifetime is not None and not_after is None:
            not_after = now + min(window.lifetime, policy.limits.maximum.value)
        decision = policy.evaluate(request.names.policy_request(
            key_info(request.public_key), not_before=window.not_before, not_after=not_after, now=now))
        if not decision.allowed:
            raise PolicyDenied("; ".join(decision.reasons), reasons=decision.reasons)
        return decision.not_before, decision.not_after

    def _issuer(self, request: IssuanceRequest) -> Issuer:
        return self.issuers.by_id(request.issuer) if request.issuer else self.issuers.current()

    def _record(self, serial: int, tbs: bytes, profile: LeafProfile, issuer: Issuer, request: IssuanceRequest,
                ctx: RequestContext) -> None:
        try:
            self.store.certificates.reserve(Reservation(
                serial=serial, issuer=issuer.id, subject=profile.subject_text(), sans=profile.names.as_strings(),
                not_before=profile.not_before, not_after=profile.not_after, provisioner=request.provisioner,
                tbs=tbs, request_id=ctx.request_id), request.token)
        except TokenReplayed:
            raise Unauthorized(REPLAYED) from None

    def _spend_refused(self, request: IssuanceRequest) -> None:
        """A refused request spends its token too; a replay is reported as such, whatever else was wrong."""
        if request.token is not None:
            spend(self.store, request.token)

    def _abandon(self, serial: int, reason: str) -> None:
        try:
            self.store.certificates.mark_abandoned(serial, reason[:1000])
        except StoreError:
            log.warning("could not mark reservation %s abandoned; the housekeeping sweep will", serial)


def spend(store: Store, token: OneTimeToken) -> None:
    """Use up a one-time token outside a reservation (a refusal, a revocation); Unauthorized if it was used."""
    if not store.tokens.use(token.jti, token.provisioner, token.expires_at):
        raise Unauthorized(REPLAYED)


def _check_csr(request: IssuanceRequest) -> None:
    """The CSR may only ask for what the credential grants (step-ca's CN and SAN validators)."""
    csr = request.csr
    if csr is None:
        return
    if not csr.is_signature_valid:
        raise BadRequest("invalid csr: its signature does not verify")
    if request.csr_rule is CSRRule.NONE:
        return
    cns = csr.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    cn = str(cns[0].value) if cns else ""
    if cn and cn != request.common_name:
        what = "the token subject" if request.csr_rule is CSRRule.TOKEN else "the certificate's"
        raise Forbidden(f"certificate request common name {cn!r} differs from {what} {request.common_name!r}")
    try:
        ext = read_extensions(csr).get_extension_for_class(x509.SubjectAlternativeName).value
        asked = RequestedNames.from_general_names(ext)
    except x509.ExtensionNotFound:
        asked = None
    except ValueError as exc:
        raise BadRequest(f"invalid csr extensions: {exc}") from None
    if request.csr_rule is CSRRule.TOKEN:
        if asked is not None:
            mismatch = (request.csr_names or request.names).mismatch(asked)
            if mismatch:
                raise Forbidden(f"certificate request names differ from the token's: {mismatch}")
        return
    have, want = (asked or RequestedNames()).comparable(), (request.csr_names or request.names).comparable()
    if have != want:
        raise Forbidden(f"certificate request names {sorted(have)} differ from the certificate's "
                        f"{sorted(want)}; a rekey keeps the names")


def _profile(request: IssuanceRequest, window: tuple[datetime, datetime], issuer: Issuer) -> LeafProfile:
    """What the certificate will hold: the names policy judged, in the one spelling it judged them in."""
    names = request.names.canonical()
    not_before, not_after = window
    if request.window.not_after is None:  # a defaulted end never outlives the intermediate that signs
        not_after = min(not_after, issuer.certificate.not_valid_after_utc)
        if request.window.latest is not None:  # nor the credential that vouched for it
            not_after = min(not_after, request.window.latest)
    try:
        usage = key_usage(request.public_key, request.key_usage) if request.key_usage is not None else None
    except ValueError as exc:
        raise BadRequest(f"key usage: {exc}") from None
    return LeafProfile(common_name=names.canonical_common_name(request.common_name) if request.common_name else "",
                       public_key=request.public_key, not_before=not_before, not_after=not_after, names=names,
                       ext_key_usage=request.ext_key_usage, key_usage=usage, subject_extra=request.subject_extra,
                       extra_extensions=request.extensions)


def _merge(first: AuditNote, then: AuditNote) -> AuditNote:
    return AuditNote(subject=then.subject if then.subject is not None else first.subject,
                     details={**first.details, **then.details}, sans=then.sans or first.sans)


def write_audit(audit: AuditLog, event: AuditEvent) -> None:
    """Write an audit record; a trail that cannot be written stops the request (503)."""
    try:
        audit.record(event)
    except OSError as exc:  # the audit trail must not silently vanish
        log.error("cannot write the audit record: %s", exc)
        raise ServiceUnavailable(f"audit trail unavailable: {exc}") from None
