"""SSH certificates in the database: reserved with their to-be-signed body before the KMS signs, then issued or
abandoned, and revoked on the row (the KRL is built from the revoked serials per CA key).

As for X.509 (certificates.py): no signed certificate goes unrecorded even if the process dies between the
signature and its commit, `mark_issued` only accepts a certificate signed over the reserved body, and a one-time
token offered with the reservation is burned in the same transaction.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from .engine import Repository
from .errors import CertificateNotFound, InvalidTransition, SerialCollision, StoreError, TokenReplayed
from .records import (
    MAX_BLOB_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REASON_LENGTH,
    MAX_REQUEST_ID_LENGTH,
    MAX_SUBJECT_LENGTH,
    CertificateStatus,
    OneTimeToken,
    check_text,
    now_utc,
    utc,
)
from .schema import ssh_certificates as table
from .tokens import INSERT_TOKEN, token_row, token_used

MAX_SSH_SERIAL = 2**64 - 1
STALE_REASON = "reservation left by an interrupted issuance (worker crash?)"
MAX_PRINCIPALS = 256
RESERVED = CertificateStatus.RESERVED.value
ISSUED = CertificateStatus.ISSUED.value
ABANDONED = CertificateStatus.ABANDONED.value


@dataclass(frozen=True, slots=True)
class SSHReservation:
    """What the CA records before it asks the KMS to sign an SSH certificate."""

    serial: int
    cert_type: Literal["user", "host"]
    key_id: str
    principals: Sequence[str]
    valid_after: datetime
    valid_before: datetime
    provisioner: str
    ca_key: str  # SHA-256 hex of the CA key's SSH blob
    tbs: bytes
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class SSHCertificateRecord:
    serial: int
    cert_type: str
    key_id: str
    principals: tuple[str, ...]
    valid_after: datetime
    valid_before: datetime
    provisioner: str
    ca_key: str
    status: str
    certificate: bytes | None
    reserved_at: datetime
    issued_at: datetime | None
    revoked_at: datetime | None
    revocation_reason: str | None


def check_ssh_serial(serial: int) -> int:
    if isinstance(serial, bool) or not isinstance(serial, int):
        raise TypeError(f"serial must be an int, not {type(serial).__name__}")
    if not 0 < serial <= MAX_SSH_SERIAL:
        raise ValueError("an SSH certificate serial is a positive 64-bit integer")
    return serial


def _check(rec: SSHReservation) -> None:
    check_ssh_serial(rec.serial)
    if rec.cert_type not in ("user", "host"):
        raise ValueError("cert_type must be 'user' or 'host'")
    check_text(rec.key_id, "key_id", MAX_SUBJECT_LENGTH, empty_ok=True)
    check_text(rec.provisioner, "provisioner", MAX_NAME_LENGTH)
    check_text(rec.ca_key, "ca_key", 64)
    if isinstance(rec.principals, str) or len(rec.principals) > MAX_PRINCIPALS or \
            not all(isinstance(p, str) and p for p in rec.principals):
        raise TypeError(f"principals must be a sequence of at most {MAX_PRINCIPALS} non-empty strings")
    if utc(rec.valid_before, "valid_before") < utc(rec.valid_after, "valid_after"):
        raise ValueError("valid_before is before valid_after")
    if not isinstance(rec.tbs, bytes) or not rec.tbs or len(rec.tbs) > MAX_BLOB_LENGTH:
        raise ValueError("tbs must be non-empty bytes")
    if rec.request_id is not None:
        check_text(rec.request_id, "request_id", MAX_REQUEST_ID_LENGTH)


def signed_over(certificate: bytes, tbs: bytes) -> bool:
    """The certificate is `tbs` followed by exactly one SSH string (its signature): it was signed over `tbs`."""
    rest = certificate[len(tbs):]
    if not certificate.startswith(tbs) or len(rest) < 4:
        return False
    (length,) = struct.unpack(">I", rest[:4])
    return length == len(rest) - 4


class SSHCertificateStore(Repository):
    """The ssh_certificates table (and, for a reservation's token, used_tokens)."""

    def reserve(self, rec: SSHReservation, token: OneTimeToken | None = None) -> None:
        """Record a serial and its to-be-signed body before signing; burn `token` in the same transaction."""
        _check(rec)
        token_values = token_row(token) if token is not None else None
        row = {"serial": str(rec.serial), "cert_type": rec.cert_type, "key_id": rec.key_id,
               "principals": list(rec.principals), "valid_after": rec.valid_after, "valid_before": rec.valid_before,
               "provisioner": rec.provisioner, "ca_key": rec.ca_key, "tbs": rec.tbs, "certificate": None,
               "status": RESERVED, "reserved_at": now_utc(), "issued_at": None, "status_reason": None,
               "request_id": rec.request_id, "revoked_at": None, "revocation_reason": None}
        try:
            with self._write("reserving an SSH serial") as conn:
                if token_values is not None:
                    conn.execute(INSERT_TOKEN, token_values)
                conn.execute(table.insert(), row)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                with self._read("reading a one-time token") as conn:
                    if token is not None and token_used(conn, token.jti):
                        raise TokenReplayed(f"token {token.jti[:8]}… was already used") from None
                if self.get(rec.serial) is not None:
                    raise SerialCollision(f"SSH serial {rec.serial} is already recorded") from None
            raise

    def mark_issued(self, serial: int, certificate: bytes) -> None:
        """Attach the signed certificate (its SSH wire blob); it must have been signed over the reserved body."""
        check_ssh_serial(serial)
        with self._write("recording an issued SSH certificate") as conn:
            found = conn.execute(sa.select(table.c.status, table.c.tbs, table.c.certificate)
                                 .where(table.c.serial == str(serial))).one_or_none()
            if found is None:
                raise CertificateNotFound(f"no reservation for SSH serial {serial}")
            if found.status == ISSUED and found.certificate == certificate:
                return
            if found.status != RESERVED:
                raise InvalidTransition(f"SSH certificate {serial} is {found.status}, not reserved")
            if not signed_over(certificate, found.tbs):
                raise StoreError(f"SSH certificate {serial} was not signed over the reserved body; refused")
            conn.execute(table.update().where(table.c.serial == str(serial), table.c.status == RESERVED)
                         .values(status=ISSUED, certificate=certificate, issued_at=now_utc()))

    def mark_abandoned(self, serial: int, reason: str) -> None:
        check_ssh_serial(serial)
        check_text(reason, "reason", MAX_REASON_LENGTH)
        with self._write("abandoning an SSH reservation") as conn:
            conn.execute(table.update().where(table.c.serial == str(serial), table.c.status == RESERVED)
                         .values(status=ABANDONED, status_reason=reason))

    def resolve_stale(self, older_than: timedelta, now: datetime | None = None) -> list[int]:
        """Abandon reservations older than the cut-off (left by a crash between record and sign, or between sign
        and `mark_issued`); their bodies stay on record, and `revoke` accepts them, since one may have been signed."""
        if older_than <= timedelta(0):
            raise ValueError("older_than must be positive")
        cutoff = (utc(now, "now") if now is not None else now_utc()) - older_than
        stale = sa.and_(table.c.status == RESERVED, table.c.reserved_at < cutoff)
        with self._write("resolving stale SSH reservations") as conn:
            serials = [s for (s,) in conn.execute(sa.select(table.c.serial).where(stale).with_for_update())]
            if serials:
                conn.execute(table.update().where(stale, table.c.serial.in_(serials))
                             .values(status=ABANDONED, status_reason=STALE_REASON))
        return sorted(int(s) for s in serials)

    def get(self, serial: int) -> SSHCertificateRecord | None:
        check_ssh_serial(serial)
        with self._read("reading an SSH certificate") as conn:
            row = conn.execute(sa.select(table).where(table.c.serial == str(serial))).one_or_none()
        return _record(row) if row is not None else None

    def revoke(self, serial: int, reason: str, at: datetime | None = None) -> bool:
        """Revoke an issued SSH certificate; False when it was revoked already. CertificateNotFound otherwise."""
        check_ssh_serial(serial)
        check_text(reason, "reason", MAX_REASON_LENGTH, empty_ok=True)
        when = utc(at, "at") if at is not None else now_utc()
        with self._write("revoking an SSH certificate") as conn:
            done = conn.execute(table.update().where(table.c.serial == str(serial),
                                                     table.c.status.in_((ISSUED, ABANDONED)),
                                                     table.c.revoked_at.is_(None))
                                .values(revoked_at=when, revocation_reason=reason)).rowcount
            if done:
                return True
            row = conn.execute(sa.select(table.c.status, table.c.revoked_at)
                               .where(table.c.serial == str(serial))).one_or_none()
        if row is None or row.status == RESERVED:
            raise CertificateNotFound(f"no issued SSH certificate with serial {serial}")
        return False

    def revoked(self) -> dict[str, list[int]]:
        """Revoked serials by CA key (SHA-256 hex of its blob), for the KRL; expired ones are kept (a KRL is
        small, and a clock that runs late on a host must not bring a revoked certificate back)."""
        out: dict[str, list[int]] = {}
        with self._read("reading SSH revocations") as conn:
            for ca_key, serial in conn.execute(sa.select(table.c.ca_key, table.c.serial)
                                               .where(table.c.revoked_at.is_not(None))):
                out.setdefault(ca_key, []).append(int(serial))
        return {k: sorted(v) for k, v in out.items()}

    def current_hosts(self, now: datetime | None = None, limit: int = 10_000) -> list[SSHCertificateRecord]:
        """Issued, unrevoked host certificates valid now (newest first): what `/ssh/hosts` and `/ssh/check-host`
        answer from."""
        when = utc(now, "now") if now is not None else now_utc()
        with self._read("reading SSH host certificates") as conn:
            rows = conn.execute(sa.select(table).where(
                table.c.cert_type == "host", table.c.status == ISSUED, table.c.revoked_at.is_(None),
                table.c.valid_after <= when, table.c.valid_before > when).order_by(table.c.issued_at.desc())
                .limit(limit)).all()
        return [_record(r) for r in rows]

    def host_has_principal(self, principal: str, now: datetime | None = None) -> bool:
        """Does a current host certificate name `principal`? The principals column is JSON text, so the database
        narrows by the quoted name (LIKE, escaped) and the few rows found are checked exactly here."""
        when = utc(now, "now") if now is not None else now_utc()
        quoted = json.dumps(principal)
        pattern = "%" + quoted.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._read("reading SSH host certificates") as conn:
            rows = conn.execute(sa.select(table.c.principals).where(
                table.c.cert_type == "host", table.c.status == ISSUED, table.c.revoked_at.is_(None),
                table.c.valid_after <= when, table.c.valid_before > when,
                sa.cast(table.c.principals, sa.Text).like(pattern, escape="\\")).limit(100)).all()
        return any(principal in row.principals for row in rows)

    def count_by_status(self) -> dict[str, int]:
        with self._read("counting SSH certificates") as conn:
            rows = conn.execute(sa.select(table.c.status, sa.func.count()).group_by(table.c.status))
            return {str(status): int(n) for status, n in rows}


def _record(row: Row[Any]) -> SSHCertificateRecord:
    return SSHCertificateRecord(
        serial=int(row.serial), cert_type=row.cert_type, key_id=row.key_id, principals=tuple(row.principals),
        valid_after=row.valid_after, valid_before=row.valid_before, provisioner=row.provisioner, ca_key=row.ca_key,
        status=row.status, certificate=row.certificate, reserved_at=row.reserved_at, issued_at=row.issued_at,
        revoked_at=row.revoked_at, revocation_reason=row.revocation_reason)


__all__ = ["SSHCertificateRecord", "SSHCertificateStore", "SSHReservation", "signed_over"]
