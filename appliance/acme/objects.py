"""The URLs of a provisioner's ACME resources and the JSON objects RFC 8555 §7.1 gives clients."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from appliance.store.acme import AccountRecord, AuthorizationRecord, ChallengeRecord, OrderRecord


def rfc3339(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Links:
    """Every URL of one provisioner, under the base the client reached us at (`https://host:port/acme/NAME`)."""

    base: str

    @property
    def directory(self) -> str:
        return f"{self.base}/directory"

    def endpoint(self, name: str) -> str:
        """new-nonce, new-account, new-order, revoke-cert, key-change, renewal-info."""
        return f"{self.base}/{name}"

    def account(self, account_id: str) -> str:
        return f"{self.base}/account/{account_id}"

    def account_id(self, kid: str) -> str | None:
        """The account id a `kid` names, if it is one of this provisioner's account URLs."""
        prefix = f"{self.base}/account/"
        rest = kid[len(prefix):] if kid.startswith(prefix) else ""
        return rest if rest and "/" not in rest else None

    def orders(self, account_id: str) -> str:
        return f"{self.base}/account/{account_id}/orders"

    def order(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}"

    def finalize(self, order_id: str) -> str:
        return f"{self.base}/order/{order_id}/finalize"

    def certificate(self, order_id: str) -> str:
        return f"{self.base}/certificate/{order_id}"

    def authz(self, authz_id: str) -> str:
        return f"{self.base}/authz/{authz_id}"

    def challenge(self, challenge_id: str) -> str:
        return f"{self.base}/chall/{challenge_id}"


def account_json(links: Links, acct: AccountRecord) -> dict[str, Any]:
    return {"status": acct.status, "contact": list(acct.contact), "orders": links.orders(acct.id),
            "createdAt": rfc3339(acct.created_at)}


def order_json(links: Links, order: OrderRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": order.status, "expires": rfc3339(order.expires_at), "identifiers": list(order.identifiers),
        "authorizations": [links.authz(a) for a in order.authorization_ids],
        "finalize": links.finalize(order.id)}
    if order.not_before is not None:
        body["notBefore"] = rfc3339(order.not_before)
    if order.not_after is not None:
        body["notAfter"] = rfc3339(order.not_after)
    if order.error:
        body["error"] = order.error
    if order.status == "valid" and order.serial is not None:
        body["certificate"] = links.certificate(order.id)
    return body


def challenge_json(links: Links, chal: ChallengeRecord) -> dict[str, Any]:
    body: dict[str, Any] = {"type": chal.type, "url": links.challenge(chal.id), "status": chal.status,
                            "token": chal.token}
    if chal.validated_at is not None:
        body["validated"] = rfc3339(chal.validated_at)
    if chal.error:
        body["error"] = chal.error
    return body


def authz_json(links: Links, authz: AuthorizationRecord, now: datetime) -> dict[str, Any]:
    status = "expired" if authz.status in ("pending", "valid") and authz.expires_at < now else authz.status
    body: dict[str, Any] = {
        "identifier": {"type": authz.identifier_type, "value": authz.identifier_value},
        "status": status, "expires": rfc3339(authz.expires_at),
        "challenges": [challenge_json(links, c) for c in authz.challenges
                       if authz.status != "valid" or c.status == "valid"]}
    if authz.wildcard:
        body["wildcard"] = True
    return body
