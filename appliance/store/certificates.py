"""Certificates in the database: a serial is reserved before signing, then issued or abandoned, never reused.

The reservation records the TBS the HSM is about to sign, so no signed certificate goes unrecorded even if
the process dies between the signature and its commit; `mark_issued` only accepts a certificate signed over
that TBS. A one-time token offered with the reservation is burned in the same transaction (tokens.py).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from .engine import Repository, Transaction
from .errors import CertificateNotFound, InvalidTransition, SerialCollision, StoreError, TokenReplayed
from .records import (
    MAX_REASON_LENGTH,
    MAX_SERIAL,
    CertificateRecord,
    CertificateStatus,
    OneTimeToken,
    Reservation,
    check_reservation,
    check_serial,
    check_text,
    now_utc,
    utc,
)
from .schema import certificates
from .tokens import INSERT_TOKEN, token_row, token_used

STALE_REASON = "reservation left by an interrupted issuance (worker crash?)"
MAX_LIST_LIMIT = 10_000
_CHUNK = 500  # serials per UPDATE ... IN (...), well inside every backend's parameter limit

Grouped = Callable[[str, Callable[[Connection], Any]], Any]  # GroupCommit.run
_MISSING: Any = object()  # mark_issued found no row at all

RESERVED = CertificateStatus.RESERVED.value
ISSUED = CertificateStatus.ISSUED.value
ABANDONED = CertificateStatus.ABANDONED.value


class CertificateStore(Repository):
    """The certificates table (and, for a reservation's token, used_tokens), over the Store's transactions.

    `grouped` runs the issuance path's two writes (reserve, mark_issued) in a commit shared with other request
    threads (group_commit.py); without it they commit alone.
    """

    def __init__(self, read: Transaction, write: Transaction, grouped: Grouped | None = None) -> None:
        super().__init__(read, write)
        self._grouped: Grouped = grouped or self._alone

    def _alone(self, what: str, apply: Callable[[Connection], Any]) -> Any:
        with self._write(what) as conn:
            return apply(conn)

    def reserve(self, rec: Reservation, token: OneTimeToken | None = None) -> None:
        """Record a serial and its TBS before signing, so no signed certificate goes unrecorded.

        With `token`, its id is burned in the same transaction: a token is used if and only if
        its certificate was reserved (and one commit is saved on the issuance path). A token
        already used raises TokenReplayed and records nothing.
        """
        check_reservation(rec)
        token_values = token_row(token) if token is not None else None
        row = {
            "serial": str(rec.serial),
            "issuer": rec.issuer,
            "subject": rec.subject,
            "sans": list(rec.sans),
            "not_before": rec.not_before,
            "not_after": rec.not_after,
            "provisioner": rec.provisioner,
            "tbs": rec.tbs,
            "der": None,
            "status": RESERVED,
            "reserved_at": now_utc(),
            "issued_at": None,
            "status_reason": None,
            "request_id": rec.request_id,
        }
        def apply(conn: Connection) -> None:
            # Parameters passed apart from the statement: SQLAlchemy compiles it once.
            if token_values is not None:
                conn.execute(INSERT_TOKEN, token_values)
            conn.execute(_INSERT_CERTIFICATE, row)

        try:
            self._grouped("reserving a serial", apply)
        except StoreError as exc:
            # The primary keys are the only constraints valid input can break; confirm which.
            if isinstance(exc.__cause__, IntegrityError):
                if token is not None and self._token_used(token.jti):
                    raise TokenReplayed(f"token {token.jti[:8]}… was already used") from None
                if self._serial_exists(rec.serial):
                    raise SerialCollision(f"serial {rec.serial} is already recorded") from None
            raise

    def mark_issued(self, serial: int, der: bytes) -> None:
        """Attach the signed certificate; its TBS must be the one reserved (and only from reserved).

        Repeating the call with the same certificate is a no-op, so a retry after a lost commit
        acknowledgement is harmless.
        """
        check_serial(serial)
        try:
            tbs = x509.load_der_x509_certificate(der).tbs_certificate_bytes
        except (ValueError, TypeError) as exc:
            raise StoreError(f"certificate for serial {serial} is not valid DER: {exc}") from None
        values = {"m_serial": str(serial), "m_tbs": tbs, "m_der": der, "m_issued_at": now_utc()}

        def apply(conn: Connection) -> Any:  # None (done), the row found, or _MISSING
            if conn.execute(_MARK_ISSUED, values).rowcount == 1:
                return None
            return conn.execute(  # why it did not match: read in the same transaction
                sa.select(certificates.c.status, certificates.c.tbs, certificates.c.der).where(
                    certificates.c.serial == str(serial)
                )
            ).one_or_none() or _MISSING

        found = self._grouped("recording an issued certificate", apply)
        if found is None:
            return
        if found is _MISSING:
            raise CertificateNotFound(f"no reservation for serial {serial}")
        if found.status == ISSUED and found.der == der:
            return
        if found.status != RESERVED:
            raise InvalidTransition(f"certificate {serial} is {found.status}, not reserved")
        raise StoreError(
            f"certificate for serial {serial} was not signed over the reserved TBS; refused"
        )

    def mark_abandoned(self, serial: int, reason: str) -> None:
        """Close a reservation whose signature was refused or failed; the serial is never reused."""
        check_serial(serial)
        check_text(reason, "reason", MAX_REASON_LENGTH)
        with self._write("abandoning a reservation") as conn:
            done = conn.execute(
                certificates.update()
                .where(certificates.c.serial == str(serial), certificates.c.status == RESERVED)
                .values(status=ABANDONED, status_reason=reason)
            ).rowcount
            if done == 1:
                return
            status = conn.execute(
                sa.select(certificates.c.status).where(certificates.c.serial == str(serial))
            ).scalar_one_or_none()
        if status is None:
            raise CertificateNotFound(f"no reservation for serial {serial}")
        raise InvalidTransition(f"certificate {serial} is {status}, not reserved")

    def resolve_stale(self, older_than: timedelta, now: datetime | None = None) -> list[int]:
        """Abandon reservations older than the cut-off (left by a crash) and return their serials.

        `older_than` must exceed the longest a signature may take, or a slow issuance would
        find its reservation abandoned and (rightly) fail.
        """
        if older_than <= timedelta(0):
            raise ValueError("older_than must be positive")
        cutoff = (utc(now, "now") if now is not None else now_utc()) - older_than
        stale = sa.and_(certificates.c.status == RESERVED, certificates.c.reserved_at < cutoff)
        with self._write("resolving stale reservations") as conn:
            # Locked rows (PostgreSQL, MySQL; SQLite holds the write lock already), so two
            # housekeepers never both claim the same serial.
            serials = [
                s for (s,) in conn.execute(
                    sa.select(certificates.c.serial).where(stale).with_for_update()
                )
            ]
            for start in range(0, len(serials), _CHUNK):
                conn.execute(
                    certificates.update()
                    .where(stale, certificates.c.serial.in_(serials[start:start + _CHUNK]))
                    .values(status=ABANDONED, status_reason=STALE_REASON)
                )
        return sorted(int(s) for s in serials)

    def get(self, serial: int) -> CertificateRecord | None:
        """The record for `serial`, or None (also for serials no certificate can carry)."""
        if isinstance(serial, bool) or not isinstance(serial, int):
            raise TypeError(f"serial must be an int, not {type(serial).__name__}")
        if not 0 < serial <= MAX_SERIAL:
            return None
        with self._read("reading a certificate") as conn:
            row = conn.execute(
                sa.select(certificates).where(certificates.c.serial == str(serial))
            ).one_or_none()
        return None if row is None else _record(row)

    # Below this method, `list` in an annotation names it, not the builtin (mypy says so): write `builtins.list`.
    def list(self, status: str | None = None, limit: int = 100) -> list[CertificateRecord]:
        """Most recently reserved first."""
        query = sa.select(certificates)
        if status is not None:
            query = query.where(certificates.c.status == CertificateStatus(status).value)
        if not 0 < limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        query = query.order_by(certificates.c.reserved_at.desc(), certificates.c.serial).limit(limit)
        with self._read("listing certificates") as conn:
            rows = conn.execute(query).all()
        return [_record(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """Every status with its count (zeros included), for metrics and health."""
        with self._read("counting certificates") as conn:
            rows = conn.execute(
                sa.select(certificates.c.status, sa.func.count()).group_by(certificates.c.status)
            ).all()
        counts = {s.value: 0 for s in CertificateStatus}
        counts.update({status: int(n) for status, n in rows})
        return counts

    def count_issued_by_issuer(self) -> dict[str, int]:
        """Issued certificates per intermediate id, for `intermediate list`."""
        # Reserved and abandoned serials are not certificates.
        with self._read("counting certificates by issuer") as conn:
            rows = conn.execute(
                sa.select(certificates.c.issuer, sa.func.count())
                .where(certificates.c.status == ISSUED)
                .group_by(certificates.c.issuer)
            ).all()
        return {issuer: int(n) for issuer, n in rows}

    def _serial_exists(self, serial: int) -> bool:
        with self._read("reading a certificate") as conn:
            return conn.execute(
                sa.select(certificates.c.serial).where(certificates.c.serial == str(serial))
            ).first() is not None

    def _token_used(self, jti: str) -> bool:
        with self._read("reading a one-time token") as conn:
            return token_used(conn, jti)


_INSERT_CERTIFICATE = certificates.insert()
# Built once: constructing the statement cost more CPU than executing it on the issuance path.
_MARK_ISSUED = (
    certificates.update()
    .where(certificates.c.serial == sa.bindparam("m_serial"), certificates.c.status == RESERVED,
           certificates.c.tbs == sa.bindparam("m_tbs"))
    .values(status=ISSUED, der=sa.bindparam("m_der"), issued_at=sa.bindparam("m_issued_at"))
)


def _record(row: Row[Any]) -> CertificateRecord:
    return CertificateRecord(
        serial=int(row.serial),
        issuer=row.issuer,
        subject=row.subject,
        sans=tuple(row.sans),
        not_before=row.not_before,
        not_after=row.not_after,
        provisioner=row.provisioner,
        tbs=bytes(row.tbs),
        der=None if row.der is None else bytes(row.der),
        status=CertificateStatus(row.status),
        reserved_at=row.reserved_at,
        issued_at=row.issued_at,
        status_reason=row.status_reason,
        request_id=row.request_id,
    )
