"""Revocations in the database.

A revocation is its own row (the certificate's row keeps how it was issued). Revoking bumps the issuing
intermediate's `revocation_revision` and drops the certificate's pre-signed OCSP response in the same
transaction, so the CRL signer sees a new CRL is due and no replica serves a stale "good" afterwards.
Revoking again is not an error: the first revocation (its time and reason) stands.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.engine import Row
from sqlalchemy.exc import IntegrityError

from .engine import Repository
from .errors import CertificateNotFound, InvalidTransition, StoreError
from .records import MAX_NAME_LENGTH, CertificateStatus, check_serial, check_text, now_utc, utc
from .schema import certificates, intermediates, ocsp_responses, revocations

MAX_REASON_TEXT = 1024
STREAM_BATCH = 10_000  # rows fetched at a time when a CRL streams its entries


class RevocationReason(enum.IntEnum):
    """RFC 5280 §5.3.1 CRLReason (8 is removeFromCRL, which only delta CRLs use: never accepted here)."""

    UNSPECIFIED = 0
    KEY_COMPROMISE = 1
    CA_COMPROMISE = 2
    AFFILIATION_CHANGED = 3
    SUPERSEDED = 4
    CESSATION_OF_OPERATION = 5
    CERTIFICATE_HOLD = 6
    PRIVILEGE_WITHDRAWN = 9
    AA_COMPROMISE = 10

    @property
    def flag(self) -> x509.ReasonFlags:
        """cryptography's name for the reason (CRL entries, OCSP responses)."""
        return x509.ReasonFlags[self.name.lower()]


@dataclass(frozen=True, slots=True)
class RevocationRecord:
    serial: int
    issuer: str
    revoked_at: datetime
    reason_code: RevocationReason
    reason: str | None
    source: str
    not_after: datetime


@dataclass(frozen=True, slots=True)
class Revoked:
    """What `revoke` did: the revocation that stands, and whether this call made it."""

    record: RevocationRecord
    created: bool


_r = revocations.c
_SELECT = sa.select(_r.serial, _r.issuer, _r.revoked_at, _r.reason_code, _r.reason, _r.source, _r.not_after)


class RevocationStore(Repository):
    """The revocations table (and each issuer's revocation revision), over the Store's transactions."""

    def revoke(self, serial: int, *, reason_code: int = 0, reason: str | None = None, source: str,
               at: datetime | None = None) -> Revoked:
        """Revoke an issued certificate (idempotent: the first revocation stands)."""
        # CertificateNotFound for an unknown serial, InvalidTransition for one that was never issued
        # (reserved or abandoned).
        check_serial(serial)
        code = _reason(reason_code)
        if reason is not None:
            check_text(reason, "reason", MAX_REASON_TEXT, empty_ok=True)
        check_text(source, "source", MAX_NAME_LENGTH)
        at = utc(at or now_utc(), "revoked_at")
        try:
            with self._write("revoking a certificate") as conn:
                cert = conn.execute(sa.select(certificates.c.issuer, certificates.c.status, certificates.c.not_after)
                                    .where(certificates.c.serial == str(serial))).one_or_none()
                if cert is None:
                    raise CertificateNotFound(f"no certificate with serial {serial}")
                existing = conn.execute(_SELECT.where(_r.serial == str(serial))).one_or_none()
                if existing is not None:
                    return Revoked(_record(existing), False)
                if cert.status != CertificateStatus.ISSUED.value:
                    raise InvalidTransition(f"certificate {serial} is {cert.status}, not issued; nothing to revoke")
                row = {"serial": str(serial), "issuer": cert.issuer, "revoked_at": at, "reason_code": int(code),
                       "reason": reason or None, "source": source, "not_after": cert.not_after}
                conn.execute(revocations.insert(), row)
                conn.execute(intermediates.update().where(intermediates.c.id == cert.issuer)
                             .values(revocation_revision=intermediates.c.revocation_revision + 1))
                conn.execute(ocsp_responses.delete().where(ocsp_responses.c.serial == str(serial)))
                return Revoked(RevocationRecord(serial, cert.issuer, at, code, reason or None, source,
                                                cert.not_after), True)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):  # revoked by someone else at the same moment
                found = self.get(serial)
                if found is not None:
                    return Revoked(found, False)
            raise

    def get(self, serial: int) -> RevocationRecord | None:
        """The revocation of `serial`, or None when it is not revoked."""
        check_serial(serial)
        with self._read("reading a revocation") as conn:
            row = conn.execute(_SELECT.where(_r.serial == str(serial))).one_or_none()
        return None if row is None else _record(row)

    def revision(self, issuer: str) -> int:
        """The issuer's revocation revision (0 for an issuer the intermediates table does not know)."""
        with self._read("reading the revocation revision") as conn:
            value = conn.execute(sa.select(intermediates.c.revocation_revision)
                                 .where(intermediates.c.id == issuer)).scalar_one_or_none()
        return int(value or 0)

    def epoch(self) -> int:
        """A number that grows with every revocation of any intermediate (the sum of their revisions)."""
        with self._read("reading the revocation revisions") as conn:
            value = conn.execute(sa.select(sa.func.sum(intermediates.c.revocation_revision))).scalar_one_or_none()
        return int(value or 0)

    def stream(self, issuer: str, *, expired_before: datetime | None = None) -> Iterator[RevocationRecord]:
        """Every revocation of `issuer`, fetched in batches from a server-side cursor where the driver has one
        (a million rows never sit in memory as rows). With `expired_before`, certificates that expired before
        that moment are left out (RFC 5280 §5: a CRL need not list expired certificates)."""
        query = _SELECT.where(_r.issuer == issuer)
        if expired_before is not None:
            query = query.where(_r.not_after >= utc(expired_before, "expired_before"))
        with self._read("reading revocations") as conn:
            result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(query)
            for row in result:
                yield _record(row)


def _reason(code: int) -> RevocationReason:
    try:
        return RevocationReason(int(code))
    except (ValueError, TypeError):
        allowed = ", ".join(f"{r.value} ({r.name.lower()})" for r in RevocationReason)
        raise StoreError(f"revocation reason {code!r} is not an RFC 5280 reason code; use one of {allowed}") \
            from None


def _record(row: Row[Any, Any, Any, Any, Any, Any, Any] | Row[Any]) -> RevocationRecord:
    return RevocationRecord(int(row.serial), row.issuer, row.revoked_at, RevocationReason(row.reason_code),
                            row.reason, row.source, row.not_after)
