"""Signed CRLs in the database.

Each intermediate's CRLs are numbered 1, 2, 3…; the primary key (issuer, number) makes a number
impossible to use twice, whichever replica signs. The latest row is what `/crl` serves; a poller
asks for `latest_info` (no DER: a million-entry CRL is tens of megabytes) and fetches the DER only
when the number changed. Old CRLs are pruned when a new one is added.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .engine import Repository
from .errors import StoreError
from .records import MAX_ISSUER_LENGTH, check_text, utc
from .revocations import STREAM_BATCH
from .schema import crls, revocations

KEEP = 3  # CRLs kept per issuer (the latest and two before it, for a client mid-download)

_c = crls.c


class CRLNumberTaken(StoreError):
    """Another signer stored a CRL with this number first; nothing was recorded."""


@dataclass(frozen=True, slots=True)
class CRLInfo:
    """A stored CRL without its bytes: enough to decide whether a new one is due."""

    issuer: str
    number: int
    this_update: datetime
    next_update: datetime
    revision: int  # the issuer's revocation_revision the CRL covers
    entries: int


@dataclass(frozen=True, slots=True)
class CRLRecord:
    info: CRLInfo
    der: bytes


# The columns a CRL entry needs, with `revoked_at` read as a plain DateTime: naive UTC on SQLite and MySQL
# (cryptography takes naive times as UTC), aware on PostgreSQL. Skipping the aware-datetime decorator and
# the record objects is what makes a million rows stream in seconds rather than tens of seconds.
_ENTRIES = sa.select(revocations.c.serial, sa.type_coerce(revocations.c.revoked_at, sa.DateTime()),
                     revocations.c.reason_code)

_INFO = sa.select(_c.issuer, _c.number, _c.this_update, _c.next_update, _c.revision, _c.entries)


class CRLStore(Repository):
    """The crls table, over the Store's transactions."""

    def add(self, rec: CRLRecord) -> None:
        """Store a signed CRL (CRLNumberTaken when its number is not above the issuer's highest)."""
        # The issuer's old CRLs are pruned in the same transaction (KEEP stay).
        i = rec.info
        check_text(i.issuer, "issuer", MAX_ISSUER_LENGTH)
        if i.number < 1 or i.revision < 0 or i.entries < 0:
            raise ValueError("CRL number must be positive, revision and entries not negative")
        row = {"issuer": i.issuer, "number": i.number, "this_update": utc(i.this_update, "this_update"),
               "next_update": utc(i.next_update, "next_update"), "revision": i.revision, "entries": i.entries,
               "der": rec.der}
        try:
            with self._write("storing a CRL") as conn:
                highest = conn.execute(sa.select(sa.func.max(_c.number)).where(_c.issuer == i.issuer)).scalar()
                if highest is not None and int(highest) >= i.number:
                    raise CRLNumberTaken(f"CRL number {i.number} of issuer {i.issuer} is not above the "
                                         f"highest stored ({highest})")
                conn.execute(crls.insert(), row)
                conn.execute(crls.delete().where(_c.issuer == i.issuer, _c.number <= i.number - KEEP))
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                raise CRLNumberTaken(f"CRL number {i.number} of issuer {i.issuer} is already stored") from None
            raise

    def latest_info(self, issuer: str) -> CRLInfo | None:
        """The issuer's current CRL without its bytes (cheap enough to poll every second)."""
        with self._read("reading the latest CRL") as conn:
            row = conn.execute(_INFO.where(_c.issuer == issuer).order_by(_c.number.desc()).limit(1)).one_or_none()
        return None if row is None else _info(row)

    def get(self, issuer: str, number: int) -> CRLRecord | None:
        """The issuer's CRL with this number, bytes included, or None (pruned or never stored)."""
        with self._read("reading a CRL") as conn:
            row = conn.execute(sa.select(crls).where(_c.issuer == issuer, _c.number == number)).one_or_none()
        return None if row is None else CRLRecord(_info(row), bytes(row.der))

    def next_number(self, issuer: str) -> int:
        """The number the issuer's next CRL carries: one above the highest ever stored (monotonic)."""
        with self._read("reading the CRL number") as conn:
            highest = conn.execute(sa.select(sa.func.max(_c.number)).where(_c.issuer == issuer)).scalar()
        return int(highest or 0) + 1

    def entries(self, issuer: str, *, expired_before: datetime | None = None) -> Iterator[tuple[int, datetime, int]]:
        """(serial, revoked_at as naive UTC, reason code) per revocation of `issuer`, lean enough for a
        million-entry CRL."""
        # All but certificates that expired before `expired_before`, streamed in batches from a
        # server-side cursor where the driver has one.
        query = _ENTRIES.where(revocations.c.issuer == issuer)
        if expired_before is not None:
            query = query.where(revocations.c.not_after >= utc(expired_before, "expired_before"))
        with self._read("reading revocations for a CRL") as conn:
            result = conn.execution_options(stream_results=True, yield_per=STREAM_BATCH).execute(query)
            for serial, revoked_at, code in result:
                if revoked_at.tzinfo is not None:  # PostgreSQL, in the session's zone: cryptography reads the fields
                    revoked_at = revoked_at.astimezone(UTC).replace(tzinfo=None)
                yield int(serial), revoked_at, code

    def count(self, issuer: str) -> int:
        """How many of the issuer's CRLs are stored (at most KEEP once pruning has run)."""
        with self._read("counting CRLs") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(crls).where(_c.issuer == issuer))
                       .scalar_one())


def _info(row: Any) -> CRLInfo:
    return CRLInfo(row.issuer, int(row.number), row.this_update, row.next_update, int(row.revision),
                   int(row.entries))
