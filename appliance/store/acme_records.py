"""ACME records as the store hands them out (see acme.py), and the errors its operations raise."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .errors import StoreError


class EABKeyUsed(StoreError):
    """The external account binding key is unknown to the provisioner, or bound an account already."""


class AccountKeyInUse(StoreError):
    """Another account of the provisioner already has that key (its id is `account_id`)."""

    def __init__(self, account_id: str) -> None:
        super().__init__(f"the key is already bound to account {account_id}")
        self.account_id = account_id


def new_id() -> str:
    """128 random bits, base64url: unguessable object ids (they appear in URLs)."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True)
class AccountRecord:
    id: str
    provisioner: str
    thumbprint: str
    jwk: dict[str, Any]
    status: str
    contact: tuple[str, ...]
    created_at: datetime


@dataclass(frozen=True)
class EABKey:
    key_id: str
    provisioner: str
    hmac_key: str  # base64url, as the operator hands it to the client
    reference: str | None
    created_at: datetime
    account_id: str | None
    bound_at: datetime | None


@dataclass(frozen=True)
class ChallengeRecord:
    id: str
    authz_id: str
    type: str
    token: str
    status: str
    validated_at: datetime | None = None
    error: dict[str, Any] | None = None
    attempts: int = 0
    claimed_at: datetime | None = None


@dataclass(frozen=True)
class AuthorizationRecord:
    id: str
    order_id: str
    account_id: str
    identifier_type: str
    identifier_value: str
    wildcard: bool
    status: str
    expires_at: datetime
    challenges: tuple[ChallengeRecord, ...] = ()


@dataclass(frozen=True)
class OrderRecord:
    id: str
    account_id: str
    status: str
    identifiers: tuple[dict[str, str], ...]
    not_before: datetime | None
    not_after: datetime | None
    expires_at: datetime
    error: dict[str, Any] | None
    serial: int | None
    created_at: datetime
    authorization_ids: tuple[str, ...] = field(default=())
