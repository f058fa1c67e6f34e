"""The registration authority: the entry points that lead into the one issuance pipeline (pipeline.py).

Each entry point only builds the credential it was given (a one-time token and CSR, a certificate vouching
for its successor, a finalized ACME order, the CA's own request) and names the action it is audited as;
`Pipeline.issue` does the rest, the same way for all. Revocation's rules are in revoke.py. The web layer
only parses; the rules live here and below.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate, SSHCertPublicKeyTypes

from appliance import metrics
from appliance.audit import AuditEvent, AuditLog, JsonLinesAudit
from appliance.audit.seal import Checkpoint
from appliance.audit.setup import open_audit
from appliance.ca.active import ActiveIssuer
from appliance.ca.issuer import Issuer
from appliance.ca.ssh import SSHCA
from appliance.certutil import fingerprint, load_certificates
from appliance.config import CAConfig, TLSOptions
from appliance.errors import CAError, NotFound, ServiceUnavailable
from appliance.names import split_sans
from appliance.provisioners import AuditNote, Provisioners, TokenCredential
from appliance.provisioners.base import SSHSignCredential, endpoint_audiences, sign_audiences
from appliance.provisioners.internal import AUDIT_KEY, OCSP_RESPONDER, SERVER, InternalCredential
from appliance.provisioners.sshpop import SSHPOPCredential
from appliance.provisioners.x5c import CertificateCredential, RenewalProvisioner, X5CToken, check_issued
from appliance.provisioners.x5c import verify as verify_x5c_token
from appliance.ra import revoke as revocation
from appliance.ra.pipeline import Issued, Pipeline, RequestContext, write_audit
from appliance.ra.rules import Rules
from appliance.ra.ssh_revoke import SSHRevocations
from appliance.status.crl import PublishedCRLs
from appliance.status.ocsp import OCSPResponder
from appliance.store import CRLRecord, IntermediateRecord, Revoked, Store, StoreError
from appliance.store.audit_checkpoints import StoredCheckpoint
from kms import backends_health
from policy import Policy

log = logging.getLogger(__name__)
_ISSUER_ID = re.compile(r"[0-9a-f]{1,128}")  # an intermediate id: its key identifier in hex

__all__ = ["Authority", "Issued", "RequestContext", "SSHSignRequest"]


@dataclass(frozen=True)
class SSHSignRequest:
    """`POST /1.0/ssh/sign`'s body, parsed (step's field names)."""

    ott: str
    public_key: SSHCertPublicKeyTypes
    cert_type: str = ""
    key_id: str = ""
    principals: tuple[str, ...] = ()
    valid_after: str | None = None
    valid_before: str | None = None


class Authority:
    def __init__(self, config: CAConfig, store: Store, audit: AuditLog, *,
                 issuer: Issuer | None = None):
        self.config = config
        self.store = store
        self.audit = audit
        self.roots = load_certificates(config.resolve(config.root))
        self.active = ActiveIssuer(config, store)
        self.crls = PublishedCRLs(store)  # the CRLs the housekeeping process signed
        self.ocsp = OCSPResponder(config, store, self.active)  # answers from the stored responses
        auth = config.authority
        renewal = RenewalProvisioner(store, grace=auth.renewal_grace, claims=auth.claims,
                                     provisioner_claims={p.name: p.claims for p in auth.provisioners})
        self.provisioners = Provisioners.from_config(auth.provisioners, renewal=renewal)
        for prov in self.provisioners:  # SSHPOP holds certificates to this CA's record of them
            bind = getattr(prov, "bind_store", None)
            if bind is not None:
                bind(store)
        self.audiences = sign_audiences(config.dnsNames)
        self.rules = Rules(config, self.provisioners.internal)
        self._issuer = issuer
        self.ssh = SSHCA(config)
        self.ssh_audiences = endpoint_audiences(config.dnsNames, "ssh/sign")
        self.pipeline = Pipeline(store, audit, self.provisioners, self.rules, self, ssh_ca=self.ssh)
        self.ssh_revocations = SSHRevocations(store, audit, self.provisioners, self.ssh,
                                              endpoint_audiences(config.dnsNames, "ssh/revoke"))
        self.revocations = revocation.Revocations(store, audit, self.provisioners, config)

    @classmethod
    def from_config(cls, config: CAConfig) -> Authority:
        """Build everything but the KMS key, which opens on first use (after the fork)."""
        store = Store.from_config(config.db.model_dump(), config.base_dir)
        return cls(config, store, audit_for(config, store))

    # --- what the pipeline asks of the authority: which intermediate signs ------------------------

    def current(self) -> Issuer:
        """The intermediate that signs now (the database decides, so activation reaches every worker)."""
        return self._issuer or self.active.current()

    def by_id(self, issuer_id: str) -> Issuer:
        if self._issuer is not None and self._issuer.id == issuer_id:
            return self._issuer
        rec = self.intermediate(issuer_id)
        if rec.certificate is None:
            raise ServiceUnavailable(f"intermediate {rec.name!r} has no certificate yet")
        return self.active.issuer_for(rec)

    # --- entry points ----------------------------------------------------------------------------

    @property
    def issuer(self) -> Issuer:
        return self.current()

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

    def issue(self, credential: object, ctx: RequestContext, *, action: str,
              note: AuditNote | None = None) -> Issued:
        """Any credential through the pipeline (what ACME calls when an order is finalized)."""
        return self.pipeline.issue(credential, ctx, action=action, note=note)

    def sign(self, csr: x509.CertificateSigningRequest, ott: str, not_before: str | None,
             not_after: str | None, ctx: RequestContext) -> Issued:
        """`POST /1.0/sign`: a one-time token and a CSR."""
        return self.issue(TokenCredential(ott, csr, self.audiences, not_before, not_after), ctx, action="x509.sign")

    def sign_ssh(self, request: SSHSignRequest, ctx: RequestContext) -> SSHCertificate:
        """`POST /1.0/ssh/sign`: a one-time token with `step.ssh` and the public key to certify."""
        return self.pipeline.issue_ssh(SSHSignCredential(
            token=request.ott, public_key=request.public_key, audiences=self.ssh_audiences,
            cert_type=request.cert_type, key_id=request.key_id, principals=request.principals,
            valid_after=request.valid_after, valid_before=request.valid_before), ctx)

    def ssh_host_exists(self, principal: str) -> bool:
        """`/ssh/check-host`: a current host certificate names this principal."""
        return self.store.ssh.host_has_principal(principal)

    def ssh_hosts(self, client: x509.Certificate) -> list[str]:
        """`/ssh/hosts`, for a client whose X.509 certificate this CA issued and stands behind: the principals of
        the current host certificates."""
        check_issued(self.store, client, datetime.now(timezone.utc))
        return list(dict.fromkeys(p for h in self.store.ssh.current_hosts() for p in h.principals))

    def renew_ssh(self, ott: str, ctx: RequestContext, public_key: SSHCertPublicKeyTypes | None = None
                  ) -> SSHCertificate:
        """`POST /1.0/ssh/renew` (or, with `public_key`, `/ssh/rekey`): an SSHPOP token proves the host holds its
        current certificate."""
        action: Literal["renew", "rekey"] = "rekey" if public_key is not None else "renew"
        return self.pipeline.issue_ssh(SSHPOPCredential(
            token=ott, audiences=endpoint_audiences(self.config.dnsNames, f"ssh/{action}"), action=action,
            public_key=public_key), ctx, action=f"ssh.{action}")

    def renew(self, certificate: x509.Certificate, token: X5CToken | None, ctx: RequestContext,
              csr: x509.CertificateSigningRequest | None = None) -> Issued:
        """Renew (or, with `csr`, rekey) a certificate its holder proved to own."""
        cred = CertificateCredential(certificate, token, csr)
        return self.issue(cred, ctx, action="x509.rekey" if csr is not None else "x509.renew",
                          note=cred.audit_note())

    def verify_renew_token(self, token: str, endpoint: str) -> X5CToken:
        """An x5c bearer token for `/1.0/<endpoint>`, signed by the key of the certificate it carries."""
        return verify_x5c_token(token, endpoint_audiences(self.config.dnsNames, endpoint),
                                datetime.now(timezone.utc))

    def issue_server_certificate(self, dns_names: list[str], public_key: CertificatePublicKeyTypes,
                                 lifetime: timedelta) -> Issued:
        """The HTTPS listener's certificate, from the internal provisioner."""
        return self.issue(InternalCredential(SERVER, dns_names[0], public_key, lifetime, split_sans(dns_names),
                                             ext_key_usage=(x509.ExtendedKeyUsageOID.SERVER_AUTH,)),
                          RequestContext(request_id="server-tls"),
                          action="x509.sign.server")

    def issue_ocsp_responder_certificate(self, rec: IntermediateRecord, public_key: CertificatePublicKeyTypes,
                                         lifetime: timedelta, key_uri: str) -> Issued:
        """A delegated OCSP responder's certificate (RFC 6960 §4.2.2.2), issued by the intermediate `rec`."""
        name = _named_after(rec, "OCSP Responder")
        nocheck = x509.Extension(x509.OCSPNoCheck.oid, False, x509.OCSPNoCheck())  # relying parties do not check it
        return self.issue(InternalCredential(OCSP_RESPONDER, name, public_key, lifetime, extensions=(nocheck,),
                                             ext_key_usage=(x509.ExtendedKeyUsageOID.OCSP_SIGNING,),
                                             issuer=rec.id, details={"key": key_uri}),
                          RequestContext(), action="x509.sign.ocsp-responder")

    def issue_audit_certificate(self, rec: IntermediateRecord, public_key: CertificatePublicKeyTypes,
                                lifetime: timedelta, key_uri: str) -> Issued:
        """The audit key's certificate: it names the key an auditor pins to check checkpoints (`hsmca audit verify`)."""
        return self.issue(InternalCredential(AUDIT_KEY, _named_after(rec, "Audit Key"), public_key, lifetime,
                                             issuer=rec.id, details={"key": key_uri}),
                          RequestContext(), action="x509.sign.audit-key")

    def policy_for(self, provisioner: str) -> Policy | None:
        """The policy a provisioner's certificates are judged by (None for an unknown name)."""
        return self.rules.policy_for(provisioner)

    def chain(self, issuer_id: str) -> tuple[x509.Certificate, ...]:
        """The intermediate that signed a leaf, then any certificate served after it (a cross-certificate)."""
        if self._issuer is not None and self._issuer.id == issuer_id:  # an in-process issuer (tests)
            return self._issuer.chain
        rec = self.store.intermediates.get(issuer_id)
        if rec is None or rec.certificate is None:
            return ()
        extra = tuple(x509.load_pem_x509_certificates(rec.chain)) if rec.chain else ()
        return (x509.load_der_x509_certificate(rec.certificate), *extra)

    def record(self, event: AuditEvent) -> None:
        """Write an audit record; a trail that cannot be written stops the request (503)."""
        write_audit(self.audit, event)

    def reject(self, action: str, ctx: RequestContext, error: CAError) -> None:
        """Audit a request the web layer refused before it reached the rules (bad JSON, size)."""
        self.record(AuditEvent(action=action, decision="denied", request_id=ctx.request_id,
                               remote_addr=ctx.remote_addr, reasons=error.reasons, status=error.status))

    def revoke_with_token(self, request: revocation.RevokeRequest, ott: str, ctx: RequestContext) -> Revoked:
        """Revoke `request.serial` on the word of a one-time token whose subject is that serial."""
        return self.revocations.with_token(request, ott, ctx)

    def revoke_with_certificate(self, request: revocation.RevokeRequest, certificate: x509.Certificate,
                                ctx: RequestContext) -> Revoked:
        """Revoke `request.serial` on the word of that very certificate (mTLS)."""
        return self.revocations.with_certificate(request, certificate, ctx)

    def revoke(self, request: revocation.RevokeRequest, *, source: str, ctx: RequestContext,
               provisioner: str | None = None) -> Revoked:
        """Record a revocation the caller has authorised (ACME's revokeCert)."""
        return self.revocations.revoke(request, source=source, ctx=ctx, provisioner=provisioner)

    def intermediate(self, issuer_id: str) -> IntermediateRecord:
        """The intermediate `issuer_id` names (its key identifier in lower-case hex), else 404."""
        if not _ISSUER_ID.fullmatch(issuer_id):
            raise NotFound(f"no intermediate {issuer_id[:40]!r}: ids are lower-case hex key identifiers")
        rec = self.store.intermediates.get(issuer_id)
        if rec is None:
            raise NotFound(f"no intermediate {issuer_id}")
        return rec

    def current_crl(self, issuer_id: str | None = None) -> CRLRecord:
        """The latest CRL of `issuer_id`, by default of the active intermediate (503 before the first)."""
        if issuer_id is None:
            active = self.store.intermediates.active_id(datetime.now(timezone.utc))
            if active is None:
                raise ServiceUnavailable("no active intermediate, so no CRL to serve")
            issuer_id = active[0]
        return self.crls.latest(issuer_id)

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
        """Seal this process's audit stream (a checkpoint, stored in the database), then close the database."""
        close = getattr(self.audit, "close", None)
        if close is not None:
            close()
        self.store.close()


def _named_after(rec: IntermediateRecord, role: str) -> str:
    """`<intermediate's CN> <role>`: the common name of one of the CA's own certificates issued by `rec`."""
    if rec.certificate is None:
        raise ServiceUnavailable(f"intermediate {rec.name!r} has no certificate yet")
    cn = x509.load_der_x509_certificate(rec.certificate).subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    return f"{cn[0].value!s} {role}" if cn else role


def audit_for(config: CAConfig, store: Store) -> JsonLinesAudit:
    """The audit trail of ca.json, its checkpoints also stored in the database (`hsmca audit verify --db`)."""

    def keep(cp: Checkpoint) -> None:
        st = cp.statement
        store.audit_checkpoints.add(StoredCheckpoint(
            stream=st.stream, seq=st.seq, head=st.head,
            time=datetime.strptime(st.time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc),
            reason=cp.reason, statement=st.text(), signatures=[dict(s) for s in cp.signatures]))

    return open_audit(config, on_checkpoint=keep)


def _backend_ok(report: dict[str, Any]) -> bool:
    return report.get("ok") is True or report.get("status") == "ok"
