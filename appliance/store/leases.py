"""Leases: work that one replica at a time should do (sign a CRL, refresh OCSP responses).

A holder takes a named lease for `ttl` and renews it by taking it again before it expires; anyone may take
an expired one. The database decides every race (the lease is a row with a primary key), so replicas need
no other coordination. A holder that dies simply stops renewing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from .engine import Repository
from .errors import StoreError
from .records import MAX_NAME_LENGTH, check_text, now_utc, utc
from .schema import leases

_l = leases.c


class LeaseStore(Repository):
    """The leases table, over the Store's transactions."""

    def take(self, name: str, holder: str, ttl: timedelta, now: datetime | None = None) -> bool:
        """Take or renew the lease `name` for `holder` until now + ttl; False if someone else holds it."""
        check_text(name, "lease name", MAX_NAME_LENGTH)
        check_text(holder, "lease holder", MAX_NAME_LENGTH)
        now = utc(now or now_utc(), "now")
        until = now + ttl
        try:
            with self._write("taking a lease") as conn:
                # Renew ours, or take one that has expired: one conditional UPDATE decides between replicas.
                done = conn.execute(leases.update()
                                    .where(_l.name == name, sa.or_(_l.holder == holder, _l.expires_at <= now))
                                    .values(holder=holder, expires_at=until)).rowcount
                if done == 1:
                    return True
                if conn.execute(sa.select(_l.name).where(_l.name == name)).first() is not None:
                    return False
                conn.execute(leases.insert(), {"name": name, "holder": holder, "expires_at": until})
                return True
        except StoreError as exc:
            if _lost_race(exc.__cause__):
                return False
            raise

    def release(self, name: str, holder: str) -> None:
        """Give the lease up now (if `holder` has it), so another replica need not wait for it to expire."""
        with self._write("releasing a lease") as conn:
            conn.execute(leases.delete().where(_l.name == name, _l.holder == holder))

    def holder(self, name: str, now: datetime | None = None) -> str | None:
        """Who holds `name` now (None when free or expired)."""
        moment = now or now_utc()
        with self._read("reading a lease") as conn:
            row = conn.execute(sa.select(_l.holder, _l.expires_at).where(_l.name == name)).one_or_none()
        return None if row is None or row.expires_at <= utc(moment, "now") else str(row.holder)


def _lost_race(exc: BaseException | None) -> bool:
    """Another replica took the lease in the same instant: it inserted the row first, or (InnoDB, whose
    gap locks make racing insert-if-absent transactions deadlock) the database chose us as the victim."""
    if isinstance(exc, sa.exc.IntegrityError):
        return True
    code = getattr(getattr(exc, "orig", None), "args", (None,))[0] if isinstance(exc, sa.exc.OperationalError) else None
    return code in (1213, 1205)  # ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT
