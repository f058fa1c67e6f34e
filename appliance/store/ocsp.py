"""Signed OCSP responses kept in the database (signed at a certificate's first request, or pre-signed).

One row per certificate (its SHA-1 CertID response, what RFC 5019 clients ask for). A revocation deletes
the row in its own transaction (see revocations.py); a reader still joins the revocations table, so a
"good" response signed just before a revocation and stored just after it is never served.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from .engine import Repository
from .records import CertificateStatus, check_serial, now_utc, utc
from .revocations import RevocationReason
from .schema import certificates, ocsp_responses, revocations

STATUSES = ("good", "revoked")

_o = ocsp_responses.c
_c = certificates.c
_r = revocations.c


@dataclass(frozen=True, slots=True)
class CachedResponse:
    serial: int
    issuer: str
    status: str  # good | revoked
    this_update: datetime
    next_update: datetime
    der: bytes
    revoked: bool  # a revocation exists now (whatever `status` says)


@dataclass(frozen=True, slots=True)
class CertificateStatusRow:
    """What a responder needs to know about one serial: who issued it, whether it was issued, revoked."""

    serial: int
    issuer: str
    issued: bool
    revoked_at: datetime | None
    reason_code: RevocationReason | None


_CACHED = (sa.select(_o.serial, _o.issuer, _o.status, _o.this_update, _o.next_update, _o.der,
                     _r.serial.label("revoked"))
           .select_from(ocsp_responses.outerjoin(revocations, _r.serial == _o.serial))
           .where(_o.serial == sa.bindparam("s")))
_STATUS = (sa.select(_c.serial, _c.issuer, _c.status, _r.revoked_at, _r.reason_code)
           .select_from(certificates.outerjoin(revocations, _r.serial == _c.serial))
           .where(_c.serial == sa.bindparam("s")))


class OCSPStore(Repository):
    """The ocsp_responses table (read with the certificates and revocations), over the Store's transactions."""

    def cached(self, serial: int) -> CachedResponse | None:
        """The stored response for `serial`, with whether it is revoked now (one query, on every OCSP request)."""
        check_serial(serial)
        with self._read("reading a cached OCSP response") as conn:
            row = conn.execute(_CACHED, {"s": str(serial)}).one_or_none()
        if row is None:
            return None
        return CachedResponse(int(row.serial), row.issuer, row.status, row.this_update, row.next_update,
                              bytes(row.der), row.revoked is not None)

    def status(self, serial: int) -> CertificateStatusRow | None:
        """Issuer, issuance and revocation of `serial` in one query (what a response says)."""
        # None for a serial never reserved.
        check_serial(serial)
        with self._read("reading a certificate's status") as conn:
            row = conn.execute(_STATUS, {"s": str(serial)}).one_or_none()
        if row is None:
            return None
        return CertificateStatusRow(int(row.serial), row.issuer, row.status == CertificateStatus.ISSUED.value,
                                    row.revoked_at,
                                    None if row.reason_code is None else RevocationReason(row.reason_code))

    def put(self, serial: int, issuer: str, status: str, this_update: datetime,
            next_update: datetime, der: bytes) -> bool:
        """Store or replace a response; False (nothing stored) for a "good" one of a revoked serial."""
        check_serial(serial)
        if status not in STATUSES:
            raise ValueError(f"OCSP status must be one of {STATUSES}, not {status!r}")
        row = {"serial": str(serial), "issuer": issuer, "status": status,
               "this_update": utc(this_update, "this_update"), "next_update": utc(next_update, "next_update"),
               "der": der}
        with self._write("storing an OCSP response") as conn:
            if status == "good" and conn.execute(sa.select(_r.serial).where(_r.serial == str(serial))).first():
                return False
            # Delete + insert: portable (no dialect upsert), and the write lock / row lock serialises refreshers.
            conn.execute(ocsp_responses.delete().where(_o.serial == str(serial)))
            conn.execute(ocsp_responses.insert(), row)
        return True

    def due(self, before: datetime, limit: int, now: datetime | None = None) -> list[int]:
        """Unexpired certificates whose stored response's nextUpdate is before `before`, soonest first."""
        # Soonest first is the next_update index's order.
        query = (sa.select(_o.serial).select_from(ocsp_responses.join(certificates, _c.serial == _o.serial))
                 .where(_o.next_update < utc(before, "before"), _c.not_after > utc(now or now_utc(), "now"))
                 .order_by(_o.next_update).limit(limit))
        with self._read("listing OCSP responses due") as conn:
            rows = conn.execute(query).all()
        return [int(s) for (s,) in rows]

    def missing(self, limit: int, *, reserved_since: datetime | None = None,
                now: datetime | None = None) -> list[int]:
        """Unexpired issued or revoked certificates with no stored response (what pre-signing covers)."""
        # Issued ones first (only those reserved since `reserved_since` if given, which the
        # (status, reserved_at) index finds without a scan), then revoked ones.
        moment = utc(now or now_utc(), "now")
        query = (sa.select(_c.serial).select_from(certificates.outerjoin(ocsp_responses, _o.serial == _c.serial))
                 .where(_c.status == CertificateStatus.ISSUED.value, _o.serial.is_(None), _c.not_after > moment))
        if reserved_since is not None:
            query = query.where(_c.reserved_at >= utc(reserved_since, "reserved_since"))
        revoked = (sa.select(_r.serial).select_from(revocations.outerjoin(ocsp_responses, _o.serial == _r.serial))
                   .where(_o.serial.is_(None), _r.not_after > moment))
        with self._read("listing certificates without an OCSP response") as conn:
            found = [int(s) for (s,) in conn.execute(query.limit(limit)).all()]
            if len(found) < limit:
                found += [int(s) for (s,) in conn.execute(revoked.limit(limit - len(found))).all()
                          if int(s) not in found]
        return found

    def purge_expired(self, now: datetime | None = None) -> int:
        """Drop responses whose certificate has expired (nobody needs them re-signed)."""
        moment = utc(now or now_utc(), "now")
        expired = sa.select(_c.serial).where(_c.not_after <= moment)
        with self._write("purging OCSP responses of expired certificates") as conn:
            return int(conn.execute(ocsp_responses.delete().where(_o.serial.in_(expired))).rowcount)
