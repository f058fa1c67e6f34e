"""One ACME request as the state machine sees it, and the answer it gives the web layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from appliance.acme.jws import VerifiedJWS
from appliance.acme.objects import Links
from appliance.acme.problems import Problem
from appliance.errors import ServiceUnavailable
from appliance.provisioners.acme import ACMEProvisioner
from appliance.store import StoreError
from appliance.store.acme import AccountRecord, ACMEStore

if TYPE_CHECKING:
    from appliance.ra.authority import Authority, RequestContext


@dataclass(frozen=True)
class Call:
    """An authenticated request: the JWS, and the account it named (None for a `jwk`-signed request)."""

    authority: Authority
    provisioner: ACMEProvisioner
    links: Links
    ctx: RequestContext
    jws: VerifiedJWS
    account: AccountRecord | None

    @property
    def store(self) -> ACMEStore:
        return self.authority.store.acme

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


def db(what: str, exc: StoreError) -> ServiceUnavailable:
    """A database failure as the 503 every layer uses (the web layer renders it as a problem)."""
    return ServiceUnavailable(f"database unavailable while {what}: {exc}")
