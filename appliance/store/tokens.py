"""One-time tokens in the database: each token id is accepted once, by whichever replica sees it first.

A used token is a row keyed by its id, so the database's primary key decides every race. The row helpers
are shared with certificates.py, whose reservation burns the token in the certificate's own transaction.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .engine import Repository
from .errors import StoreError
from .records import MAX_JTI_LENGTH, MAX_NAME_LENGTH, OneTimeToken, check_text, now_utc, utc
from .schema import used_tokens

# Built once: passed its parameters apart, SQLAlchemy compiles it once (it runs on every issuance).
INSERT_TOKEN = used_tokens.insert()


class TokenStore(Repository):
    """The used_tokens table, over the Store's transactions."""

    def use(self, jti: str, provisioner: str, expires_at: datetime) -> bool:
        """True the first time a token id is presented, False ever after (across all replicas).

        Race-free because it is a bare INSERT on the primary key. Keep the row until the token
        can no longer be accepted: pass the expiry plus any clock-skew leeway as `expires_at`.
        """
        row = token_row(OneTimeToken(jti, provisioner, expires_at))
        try:
            with self._write("recording a one-time token") as conn:
                conn.execute(INSERT_TOKEN, row)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError) and self._used(jti):
                return False
            raise
        return True

    def purge_expired(self, now: datetime | None = None) -> int:
        """Forget tokens whose `expires_at` is before `now`; returns how many."""
        moment = utc(now, "now") if now is not None else now_utc()
        with self._write("purging expired tokens") as conn:
            return int(
                conn.execute(used_tokens.delete().where(used_tokens.c.expires_at < moment)).rowcount
            )

    def count(self) -> int:
        """How many token ids are on record (spent and not yet purged)."""
        with self._read("counting one-time tokens") as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(used_tokens)).scalar_one())

    def _used(self, jti: str) -> bool:
        with self._read("reading a one-time token") as conn:
            return token_used(conn, jti)


def token_row(token: OneTimeToken) -> dict[str, Any]:
    """The row that burns `token`, checked first so that bad input is the caller's error, not a 503."""
    check_text(token.jti, "jti", MAX_JTI_LENGTH)
    check_text(token.provisioner, "provisioner", MAX_NAME_LENGTH)
    return {"jti": token.jti, "provisioner": token.provisioner,
            "expires_at": utc(token.expires_at, "expires_at"), "used_at": now_utc()}


def token_used(conn: Connection, jti: str) -> bool:
    """Whether `jti` is recorded: tells a replayed token from another failure after an insert failed."""
    return conn.execute(sa.select(used_tokens.c.jti).where(used_tokens.c.jti == jti)).first() is not None
