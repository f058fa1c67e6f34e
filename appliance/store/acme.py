"""ACME objects in the database: accounts, nonces, orders, authorizations, challenges.

Every change is one transaction whose WHERE clause names the state it starts from, so two replicas (or two
requests on one account) racing over the same object cannot both win: the loser's UPDATE touches no row.
An order's status follows its authorizations inside the transaction that changes them, with the order row
locked (PostgreSQL, MySQL; SQLite holds the database write lock already).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from .acme_records import (
    AccountKeyInUse,
    AccountRecord,
    AuthorizationRecord,
    ChallengeRecord,
    EABKey,
    EABKeyUsed,
    OrderRecord,
    new_id,
)
from .errors import StoreError
from .records import utc
from .schema import acme_accounts, acme_authorizations, acme_challenges, acme_eab_keys, acme_nonces, acme_orders

__all__ = ["AccountKeyInUse", "AccountRecord", "ACMEStore", "AuthorizationRecord", "ChallengeRecord", "EABKey",
           "EABKeyUsed", "OrderRecord", "new_id"]

Transaction = Callable[[str], AbstractContextManager[Connection]]

_PURGE_EVERY = 64  # one nonce insert in this many also deletes the expired ones


class ACMEStore:
    """The ACME tables, over the Store's bounded transactions (`read`, `write`)."""

    def __init__(self, read: Transaction, write: Transaction) -> None:
        self._read = read
        self._write = write
        self._inserted = 0

    # -- nonces ---------------------------------------------------------------------------------

    def new_nonce(self, now: datetime, lifetime: timedelta) -> str:
        value = secrets.token_urlsafe(24)
        with self._write("storing a nonce") as conn:
            self._insert_nonce(conn, value, utc(now, "now"), lifetime)
        return value

    def _insert_nonce(self, conn: Connection, value: str, now: datetime, lifetime: timedelta) -> None:
        """Unused nonces (a client's last, a directory reader's) expire; every so often, drop them."""
        conn.execute(acme_nonces.insert(), {"value": value, "expires_at": now + lifetime})
        self._inserted += 1
        if self._inserted % _PURGE_EVERY == 0:
            conn.execute(acme_nonces.delete().where(acme_nonces.c.expires_at < now))

    def consume_nonce(self, value: str, now: datetime) -> bool:
        """True once for a nonce this CA issued and that has not expired (whichever replica asks)."""
        if not value or len(value) > 64:
            return False
        with self._write("consuming a nonce") as conn:
            done = conn.execute(acme_nonces.delete().where(acme_nonces.c.value == value,
                                                           acme_nonces.c.expires_at >= utc(now, "now"))).rowcount
        return done == 1

    def swap_nonce(self, value: str, now: datetime, lifetime: timedelta) -> str | None:
        """Consume `value` and issue the response's nonce in one transaction (one commit per request, not two);
        None, and nothing issued, when `value` is not acceptable."""
        if not value or len(value) > 64:
            return None
        fresh = secrets.token_urlsafe(24)
        moment = utc(now, "now")
        with self._write("consuming a nonce") as conn:
            done = conn.execute(acme_nonces.delete().where(acme_nonces.c.value == value,
                                                           acme_nonces.c.expires_at >= moment)).rowcount
            if done != 1:
                return None
            self._insert_nonce(conn, fresh, moment, lifetime)
        return fresh

    # -- accounts -------------------------------------------------------------------------------

    def create_account(self, provisioner: str, thumbprint: str, jwk: dict[str, Any], contact: Sequence[str],
                       now: datetime, *, eab_key_id: str | None = None) -> tuple[AccountRecord, bool]:
        """The new account, or the one that already has this key (created False): RFC 8555 §7.3.1.

        With `eab_key_id`, that external account binding key is bound to the new account in the same
        transaction (EABKeyUsed when it is unknown or bound already, and then no account is created).
        """
        rec = AccountRecord(new_id(), provisioner, thumbprint, dict(jwk), "valid", tuple(contact), utc(now, "now"))
        try:
            with self._write("creating an ACME account") as conn:
                conn.execute(acme_accounts.insert(), {
                    "id": rec.id, "provisioner": provisioner, "thumbprint": thumbprint, "jwk": rec.jwk,
                    "status": rec.status, "contact": list(rec.contact), "created_at": rec.created_at})
                if eab_key_id is not None:
                    bound = conn.execute(acme_eab_keys.update().where(
                        acme_eab_keys.c.key_id == eab_key_id, acme_eab_keys.c.provisioner == provisioner,
                        acme_eab_keys.c.account_id.is_(None)).values(account_id=rec.id, bound_at=rec.created_at)
                    ).rowcount
                    if bound != 1:
                        raise EABKeyUsed(f"external account key {eab_key_id[:64]!r} is unknown or already bound")
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                found = self.account_by_thumbprint(provisioner, thumbprint)
                if found is not None:
                    return found, False
            raise
        return rec, True

    def account(self, account_id: str) -> AccountRecord | None:
        with self._read("reading an ACME account") as conn:
            row = conn.execute(sa.select(acme_accounts).where(acme_accounts.c.id == account_id)).one_or_none()
        return None if row is None else _account(row)

    def account_by_thumbprint(self, provisioner: str, thumbprint: str) -> AccountRecord | None:
        with self._read("reading an ACME account") as conn:
            row = conn.execute(sa.select(acme_accounts).where(
                acme_accounts.c.provisioner == provisioner, acme_accounts.c.thumbprint == thumbprint)).one_or_none()
        return None if row is None else _account(row)

    def update_account(self, account_id: str, *, contact: Sequence[str] | None = None,
                       status: str | None = None) -> AccountRecord | None:
        """Change contact and/or status of a valid account; None when it is not (or no longer) valid."""
        values: dict[str, Any] = {}
        if contact is not None:
            values["contact"] = list(contact)
        if status is not None:
            values["status"] = status
        with self._write("updating an ACME account") as conn:
            if values:
                done = conn.execute(acme_accounts.update().where(
                    acme_accounts.c.id == account_id, acme_accounts.c.status == "valid").values(**values)).rowcount
                if done != 1:
                    return None
            row = conn.execute(sa.select(acme_accounts).where(acme_accounts.c.id == account_id)).one_or_none()
        return None if row is None else _account(row)

    def change_key(self, account_id: str, old_thumbprint: str, thumbprint: str, jwk: dict[str, Any]) -> bool:
        """Roll the account over to a new key, if it still has `old_thumbprint`; AccountKeyInUse on a clash."""
        try:
            with self._write("changing an ACME account key") as conn:
                done = conn.execute(acme_accounts.update().where(
                    acme_accounts.c.id == account_id, acme_accounts.c.thumbprint == old_thumbprint,
                    acme_accounts.c.status == "valid").values(thumbprint=thumbprint, jwk=dict(jwk))).rowcount
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                current = self.account(account_id)
                holder = current and self.account_by_thumbprint(current.provisioner, thumbprint)
                if holder:
                    raise AccountKeyInUse(holder.id) from None
            raise
        return done == 1

    # -- external account binding keys ----------------------------------------------------------

    def add_eab_key(self, provisioner: str, reference: str | None, now: datetime) -> EABKey:
        key = EABKey(new_id(), provisioner, secrets.token_urlsafe(32), reference, utc(now, "now"), None, None)
        with self._write("adding an external account key") as conn:
            conn.execute(acme_eab_keys.insert(), {
                "key_id": key.key_id, "provisioner": provisioner, "hmac_key": key.hmac_key,
                "reference": reference, "created_at": key.created_at, "account_id": None, "bound_at": None})
        return key

    def eab_key(self, key_id: str) -> EABKey | None:
        with self._read("reading an external account key") as conn:
            row = conn.execute(sa.select(acme_eab_keys).where(acme_eab_keys.c.key_id == key_id)).one_or_none()
        return None if row is None else _eab(row)

    def eab_keys(self, provisioner: str | None = None) -> list[EABKey]:
        query = sa.select(acme_eab_keys).order_by(acme_eab_keys.c.created_at)
        if provisioner is not None:
            query = query.where(acme_eab_keys.c.provisioner == provisioner)
        with self._read("listing external account keys") as conn:
            return [_eab(r) for r in conn.execute(query).all()]

    def remove_eab_key(self, key_id: str) -> bool:
        with self._write("removing an external account key") as conn:
            return conn.execute(acme_eab_keys.delete().where(acme_eab_keys.c.key_id == key_id)).rowcount == 1

    # -- orders, authorizations, challenges ------------------------------------------------------

    def create_order(self, order: OrderRecord, authorizations: Sequence[AuthorizationRecord]) -> None:
        """The order with its authorizations and their challenges, all or nothing."""
        with self._write("creating an ACME order") as conn:
            conn.execute(acme_orders.insert(), {
                "id": order.id, "account_id": order.account_id, "status": order.status,
                "identifiers": list(order.identifiers), "not_before": order.not_before,
                "not_after": order.not_after, "expires_at": order.expires_at, "error": None, "serial": None,
                "created_at": order.created_at})
            for a in authorizations:
                conn.execute(acme_authorizations.insert(), {
                    "id": a.id, "order_id": order.id, "account_id": a.account_id,
                    "identifier_type": a.identifier_type, "identifier_value": a.identifier_value,
                    "wildcard": a.wildcard, "status": a.status, "expires_at": a.expires_at})
                for c in a.challenges:
                    conn.execute(acme_challenges.insert(), {
                        "id": c.id, "authz_id": a.id, "type": c.type, "token": c.token, "status": c.status,
                        "validated_at": None, "error": None, "attempts": 0, "claimed_at": None})

    def order(self, order_id: str) -> OrderRecord | None:
        with self._read("reading an ACME order") as conn:
            row = conn.execute(sa.select(acme_orders).where(acme_orders.c.id == order_id)).one_or_none()
            if row is None:
                return None
            ids = conn.execute(sa.select(acme_authorizations.c.id).where(acme_authorizations.c.order_id == order_id)
                               .order_by(acme_authorizations.c.identifier_type,
                                         acme_authorizations.c.identifier_value)).scalars().all()
        return _order(row, tuple(ids))

    def order_ids(self, account_id: str, limit: int = 1000) -> list[str]:
        with self._read("listing ACME orders") as conn:
            return list(conn.execute(sa.select(acme_orders.c.id).where(acme_orders.c.account_id == account_id)
                                     .order_by(acme_orders.c.created_at.desc()).limit(limit)).scalars())

    def order_account_for_serial(self, serial: int) -> str | None:
        """The account whose order produced certificate `serial` (revocation by account)."""
        with self._read("reading an ACME order") as conn:
            return conn.execute(sa.select(acme_orders.c.account_id)
                                .where(acme_orders.c.serial == str(serial))).scalars().first()

    def authorization(self, authz_id: str) -> AuthorizationRecord | None:
        with self._read("reading an ACME authorization") as conn:
            row = conn.execute(sa.select(acme_authorizations).where(acme_authorizations.c.id == authz_id)
                               ).one_or_none()
            if row is None:
                return None
            challenges = conn.execute(sa.select(acme_challenges).where(acme_challenges.c.authz_id == authz_id)
                                      .order_by(acme_challenges.c.type)).all()
        return _authz(row, tuple(_challenge(c) for c in challenges))

    def challenge(self, challenge_id: str) -> ChallengeRecord | None:
        with self._read("reading an ACME challenge") as conn:
            row = conn.execute(sa.select(acme_challenges).where(acme_challenges.c.id == challenge_id)).one_or_none()
        return None if row is None else _challenge(row)

    def start_challenge(self, challenge_id: str, now: datetime) -> bool:
        """pending → processing, only while its authorization is pending; False if someone else did it."""
        pending_authz = sa.select(acme_authorizations.c.id).where(
            acme_authorizations.c.id == acme_challenges.c.authz_id, acme_authorizations.c.status == "pending")
        with self._write("starting an ACME challenge") as conn:
            done = conn.execute(acme_challenges.update().where(
                acme_challenges.c.id == challenge_id, acme_challenges.c.status == "pending",
                pending_authz.exists()).values(status="processing", claimed_at=utc(now, "now"),
                                               attempts=acme_challenges.c.attempts + 1)).rowcount
        return done == 1

    def claim_stale_challenge(self, challenge_id: str, claimed_at: datetime, now: datetime) -> bool:
        """Take over a challenge left in processing (its validator died): only one claimer wins."""
        with self._write("reclaiming an ACME challenge") as conn:
            done = conn.execute(acme_challenges.update().where(
                acme_challenges.c.id == challenge_id, acme_challenges.c.status == "processing",
                acme_challenges.c.claimed_at == utc(claimed_at, "claimed_at")).values(
                claimed_at=utc(now, "now"), attempts=acme_challenges.c.attempts + 1)).rowcount
        return done == 1

    def stale_challenges(self, older_than: datetime, limit: int = 100) -> list[ChallengeRecord]:
        with self._read("listing stale ACME challenges") as conn:
            rows = conn.execute(sa.select(acme_challenges).where(
                acme_challenges.c.status == "processing",
                acme_challenges.c.claimed_at < utc(older_than, "older_than")).limit(limit)).all()
        return [_challenge(r) for r in rows]

    def complete_challenge(self, challenge_id: str, error: dict[str, Any] | None, now: datetime) -> bool:
        """processing → valid (error None) or invalid, and the authorization and order with it, atomically."""
        ok = error is None
        with self._write("recording an ACME validation") as conn:
            chal = conn.execute(sa.select(acme_challenges.c.authz_id).where(
                acme_challenges.c.id == challenge_id, acme_challenges.c.status == "processing")).one_or_none()
            if chal is None:
                return False
            order_id = conn.execute(sa.select(acme_authorizations.c.order_id).where(
                acme_authorizations.c.id == chal.authz_id)).scalar_one()
            status = conn.execute(sa.select(acme_orders.c.status).where(acme_orders.c.id == order_id)
                                  .with_for_update()).scalar_one()
            conn.execute(acme_challenges.update().where(acme_challenges.c.id == challenge_id).values(
                status="valid" if ok else "invalid", error=error, validated_at=utc(now, "now") if ok else None))
            settled = conn.execute(acme_authorizations.update().where(
                acme_authorizations.c.id == chal.authz_id, acme_authorizations.c.status == "pending").values(
                status="valid" if ok else "invalid")).rowcount
            if status != "pending" or not settled:  # a sibling challenge settled the authorization first
                return True
            if not ok:
                conn.execute(acme_orders.update().where(acme_orders.c.id == order_id).values(
                    status="invalid", error=error))
                return True
            left = conn.execute(sa.select(sa.func.count()).select_from(acme_authorizations).where(
                acme_authorizations.c.order_id == order_id, acme_authorizations.c.status != "valid")).scalar_one()
            if left == 0:
                conn.execute(acme_orders.update().where(acme_orders.c.id == order_id, acme_orders.c.status == "pending")
                             .values(status="ready"))
        return True

    def deactivate_authorization(self, authz_id: str) -> bool:
        """pending/valid → deactivated; a pending or ready order that needed it becomes invalid."""
        with self._write("deactivating an ACME authorization") as conn:
            order_id = conn.execute(sa.select(acme_authorizations.c.order_id).where(
                acme_authorizations.c.id == authz_id)).scalar_one_or_none()
            if order_id is None:
                return False
            conn.execute(sa.select(acme_orders.c.id).where(acme_orders.c.id == order_id).with_for_update())
            done = conn.execute(acme_authorizations.update().where(
                acme_authorizations.c.id == authz_id, acme_authorizations.c.status.in_(("pending", "valid")))
                .values(status="deactivated")).rowcount
            if done:
                conn.execute(acme_orders.update().where(
                    acme_orders.c.id == order_id, acme_orders.c.status.in_(("pending", "ready"))).values(
                    status="invalid", error={"type": "urn:ietf:params:acme:error:unauthorized",
                                             "detail": "an authorization of this order was deactivated"}))
        return done == 1

    def begin_finalize(self, order_id: str) -> bool:
        """ready → processing: exactly one finalize request wins."""
        with self._write("finalizing an ACME order") as conn:
            return conn.execute(acme_orders.update().where(
                acme_orders.c.id == order_id, acme_orders.c.status == "ready").values(status="processing")
            ).rowcount == 1

    def finish_order(self, order_id: str, *, serial: int | None = None, error: dict[str, Any] | None = None,
                     back_to_ready: bool = False) -> None:
        """processing → valid (with the serial), invalid (with the error) or back to ready (a bad CSR)."""
        if serial is not None:
            values: dict[str, Any] = {"status": "valid", "serial": str(serial)}
        elif back_to_ready:
            values = {"status": "ready"}
        else:
            values = {"status": "invalid", "error": error}
        with self._write("finishing an ACME order") as conn:
            conn.execute(acme_orders.update().where(acme_orders.c.id == order_id,
                                                    acme_orders.c.status == "processing").values(**values))

    def purge_expired(self, before: datetime, batch: int = 200) -> int:
        """Drop what expired before `before`: authorizations (whatever their order became) with their
        challenges, and orders that never became valid. A valid order stays: it ties its certificate to the
        account that may revoke it. One batch per call (short transactions); returns the rows deleted."""
        cutoff = utc(before, "before")
        o, a, c = acme_orders.c, acme_authorizations.c, acme_challenges.c
        with self._write("purging expired ACME objects") as conn:
            orders = [r for (r,) in conn.execute(sa.select(o.id).where(
                o.expires_at < cutoff, o.status != "valid").limit(batch))]
            authzs = [r for (r,) in conn.execute(sa.select(a.id).where(a.expires_at < cutoff).limit(batch))]
            if orders:
                authzs += [r for (r,) in conn.execute(sa.select(a.id).where(a.order_id.in_(orders)))]
            deleted = 0
            if authzs:
                deleted += conn.execute(acme_challenges.delete().where(c.authz_id.in_(authzs))).rowcount
                deleted += conn.execute(acme_authorizations.delete().where(a.id.in_(authzs))).rowcount
            if orders:
                deleted += conn.execute(acme_orders.delete().where(o.id.in_(orders))).rowcount
        return int(deleted)

    def expire_order(self, order_id: str, now: datetime) -> None:
        """A pending or ready order past its expiry is invalid (decided on read, by the first reader)."""
        with self._write("expiring an ACME order") as conn:
            conn.execute(acme_orders.update().where(
                acme_orders.c.id == order_id, acme_orders.c.status.in_(("pending", "ready")),
                acme_orders.c.expires_at < utc(now, "now")).values(
                status="invalid", error={"type": "urn:ietf:params:acme:error:malformed",
                                         "detail": "the order expired before it was finalized"}))


def _eab(row: Row[Any]) -> EABKey:
    return EABKey(row.key_id, row.provisioner, row.hmac_key, row.reference, row.created_at, row.account_id,
                  row.bound_at)


def _account(row: Row[Any]) -> AccountRecord:
    return AccountRecord(row.id, row.provisioner, row.thumbprint, dict(row.jwk), row.status,
                         tuple(row.contact or ()), row.created_at)


def _order(row: Row[Any], authz_ids: tuple[str, ...]) -> OrderRecord:
    return OrderRecord(row.id, row.account_id, row.status, tuple(row.identifiers), row.not_before, row.not_after,
                       row.expires_at, row.error, int(row.serial) if row.serial else None, row.created_at, authz_ids)


def _authz(row: Row[Any], challenges: tuple[ChallengeRecord, ...]) -> AuthorizationRecord:
    return AuthorizationRecord(row.id, row.order_id, row.account_id, row.identifier_type, row.identifier_value,
                               bool(row.wildcard), row.status, row.expires_at, challenges)


def _challenge(row: Row[Any]) -> ChallengeRecord:
    return ChallengeRecord(row.id, row.authz_id, row.type, row.token, row.status, row.validated_at, row.error,
                           int(row.attempts), row.claimed_at)
