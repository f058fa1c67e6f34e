"""RFC 8555 §6.7 problem documents: one exception carrying the error type, a detail and the HTTP status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.audit import scrub

ACME_ERROR = "urn:ietf:params:acme:error:"

# The status each type usually travels with (RFC 8555 §6.7 does not fix them; these are Boulder's and step-ca's).
_STATUS: dict[str, int] = {
    "accountDoesNotExist": 400, "alreadyRevoked": 400, "badCSR": 400, "badNonce": 400, "badPublicKey": 400,
    "badRevocationReason": 400, "badSignatureAlgorithm": 400, "caa": 403, "compound": 400, "connection": 400,
    "dns": 400, "externalAccountRequired": 403, "incorrectResponse": 403, "invalidContact": 400,
    "malformed": 400, "orderNotReady": 403, "rateLimited": 429, "rejectedIdentifier": 400,
    "serverInternal": 500, "tls": 400, "unauthorized": 403, "unsupportedContact": 400,
    "unsupportedIdentifier": 400, "userActionRequired": 403,
}


@dataclass(frozen=True)
class Subproblem:
    """One identifier's own failure inside a compound problem (RFC 8555 §6.7.1)."""

    kind: str
    detail: str
    identifier: dict[str, str]

    def document(self) -> dict[str, Any]:
        return {"type": ACME_ERROR + self.kind, "detail": scrub(self.detail), "identifier": self.identifier}


class Problem(Exception):
    """An ACME error for the client: `kind` is the type after `urn:ietf:params:acme:error:`."""

    def __init__(self, kind: str, detail: str, status: int | None = None, *,
                 subproblems: Sequence[Subproblem] = (), headers: dict[str, str] | None = None,
                 extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.status = status or _STATUS.get(kind, 400)
        self.subproblems = tuple(subproblems)
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def document(self) -> dict[str, Any]:
        body: dict[str, Any] = {"type": ACME_ERROR + self.kind, "detail": scrub(self.detail), "status": self.status}
        if self.subproblems:
            body["subproblems"] = [s.document() for s in self.subproblems]
        body.update(self.extra)
        return body


def from_subproblems(subproblems: Sequence[Subproblem], summary: str) -> Problem:
    """One subproblem is the problem itself; several make a compound problem of the first's type when all agree."""
    if len(subproblems) == 1:
        only = subproblems[0]
        return Problem(only.kind, f"{only.identifier['value']}: {only.detail}", subproblems=subproblems)
    kinds = {s.kind for s in subproblems}
    kind = kinds.pop() if len(kinds) == 1 else "compound"
    details = "; ".join(f"{s.identifier['value']}: {s.detail}" for s in subproblems)
    return Problem(kind, f"{summary}: {details}", subproblems=subproblems)
