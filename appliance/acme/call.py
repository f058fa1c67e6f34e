"""One ACME request as the state machine sees it, the answer it gives the web layer, and the narrow
interface through which ACME reaches the registration authority."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from cryptography import x509

from appliance.acme.jws import VerifiedJWS
from appliance.acme.objects import Links
from appliance.acme.problems import Problem
from appliance.audit import AuditEvent
from appliance.provisioners import AuditNote, Provisioners
from appliance.provisioners.acme import ACMEProvisioner
from appliance.ra.pipeline import Issued, RequestContext
from appliance.ra.revoke import RevokeRequest
from appliance.store import Revoked, Store
from appliance.store.acme import AccountRecord, ACMEStore
from policy import Policy


class Registration(Protocol):
    """What ACME asks of the registration authority, and nothing more: issue through the one pipeline,
    revoke, the policy a provisioner's orders are judged by, a leaf's chain, and the audit trail."""

    @property
    def provisioners(self) -> Provisioners: ...

    def issue(self, credential: object, ctx: RequestContext, *, action: str,
              note: AuditNote | None = None) -> Issued: ...

    def revoke(self, request: RevokeRequest, *, source: str, ctx: RequestContext,
               provisioner: str | None = None) -> Revoked: ...

    def policy_for(self, provisioner: str) -> Policy | None: ...

    def chain(self, issuer_id: str) -> tuple[x509.Certificate, ...]: ...

    def record(self, event: AuditEvent) -> None: ...


@dataclass(frozen=True)
class Call:
    """An authenticated request: the JWS, and the account it named (None for a `jwk`-signed request)."""

    ra: Registration
    sa: Store
    provisioner: ACMEProvisioner
    links: Links
    ctx: RequestContext
    jws: VerifiedJWS
    account: AccountRecord | None

    @property
    def store(self) -> ACMEStore:
        return self.sa.acme

    @property
    def acct(self) -> AccountRecord:
        if self.account is None:  # the route asked for `kid`, so this cannot happen
            raise Problem("malformed", "this request must be signed by an account (kid)")
        return self.account

    @property
    def now(self) -> datetime:
        return datetime.now(UTC)


@dataclass
class Answer:
    """What to send: status, a JSON body (or raw bytes with a content type), and headers."""

    status: int = 200
    body: dict[str, Any] | None = None
    raw: bytes | None = None
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)  # extra Link header values
