"""The storage authority: one engine whose bounded transactions every repository shares.

Each aggregate has its repository (certificates.py, tokens.py, intermediates.py, revocations.py, leases.py,
crls.py, ocsp.py, acme.py, audit_checkpoints.py), given the Store's `_read` and `_write`; the Store itself only
opens, migrates, checks and closes the database.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import migrate as _migrate
from .acme import ACMEStore
from .audit_checkpoints import AuditCheckpointStore
from .certificates import CertificateStore
from .crls import CRLStore
from .engine import DEFAULT_TIMEOUT, as_store_error, create_engine, database_errors, sqlite_begin
from .group_commit import GroupCommit
from .intermediates import IntermediateStore
from .leases import LeaseStore
from .ocsp import OCSPStore
from .revocations import RevocationStore
from .ssh_certificates import SSHCertificateStore
from .tokens import TokenStore
from .urls import backend_of, normalise_url, url_from_config
from .writelock import SQLiteWriteLock


class Store:
    """The CA's database (SQLite, PostgreSQL or MySQL/MariaDB) and its repositories, one per aggregate.

    Safe to share between threads; a forked worker drops the inherited pool by itself.
    """

    def __init__(self, url: str | sa.URL, *, echo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._url = normalise_url(url)
        self._timeout = timeout
        self._engine = create_engine(self._url, timeout=timeout, statement_timeout=timeout, echo=echo,
                                     explicit_begin=True)
        self._sqlite = self.backend == "sqlite"  # one writer at a time (writelock.py), BEGIN sent by us (sqlite_begin)
        self._write_lock_pid = 0
        self._write_lock_obj: AbstractContextManager[Any] = nullcontext()
        # One repository per aggregate, all over the transactions below (one engine, one write lock).
        # The two writes of every issuance share commits between request threads (group_commit.py).
        self._group = GroupCommit(self._write, lambda exc, what: as_store_error(exc, what, self._url), timeout)
        self.certificates = CertificateStore(self._read, self._write, self._group.run)
        self.tokens = TokenStore(self._read, self._write)
        self.intermediates = IntermediateStore(self._read, self._write)
        self.revocations = RevocationStore(self._read, self._write)
        self.leases = LeaseStore(self._read, self._write)
        self.crls = CRLStore(self._read, self._write)
        self.ocsp = OCSPStore(self._read, self._write)
        self.acme = ACMEStore(self._read, self._write)  # ACME accounts, nonces, orders (see acme.py)
        self.audit_checkpoints = AuditCheckpointStore(self._read, self._write)  # signed audit chain heads
        self.ssh = SSHCertificateStore(self._read, self._write)  # SSH certificates and their revocations

    @property
    def _write_lock(self) -> AbstractContextManager[Any]:
        # A lock copied by fork may be held by a thread that does not exist in the child.
        if self._sqlite and self._write_lock_pid != os.getpid():
            database = self._url.database
            path = Path(database) if database and database != ":memory:" else None
            self._write_lock_obj, self._write_lock_pid = SQLiteWriteLock(path, self._timeout), os.getpid()
        return self._write_lock_obj

    @classmethod
    def from_config(
        cls, db: Mapping[str, Any], base_dir: Path, *, echo: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> Store:
        """Open the database named by ca.json's `db` block (relative sqlite paths from `base_dir`)."""
        return cls(url_from_config(db, base_dir), echo=echo, timeout=timeout)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL with any password masked, fit for logs and /health."""
        return self._url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        """`sqlite`, `postgresql` or `mysql` (MariaDB included)."""
        return backend_of(self._url)

    # -- life cycle -------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to this release's head; run by `hsmca db migrate`, safe to repeat."""
        # Its own engine without the statement limit: a migration may rewrite a large table.
        engine = create_engine(self._url, timeout=self._timeout, statement_timeout=None, pooled=False)
        try:
            with database_errors("migrating the schema", self._url):
                _migrate.upgrade(engine)
        finally:
            engine.dispose()

    def schema_revision(self) -> str | None:
        """The revision the database is at (None when it was never migrated)."""
        with self._read("reading the schema revision") as conn:
            return _migrate.current_revision(conn)

    def check_schema(self) -> None:
        """Raise StoreError unless the database is at the head revision this code expects."""
        with self._read("checking the schema revision") as conn:
            _migrate.check(conn)

    def ping(self) -> None:
        """Raise StoreUnavailable when the database does not answer (for /health)."""
        with self._read("checking the database") as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()

    def close(self) -> None:
        """Close pooled connections; the Store can still be used and reconnects on demand."""
        self._engine.dispose()

    # -- transactions (what every repository is given) ------------------------------------------

    @contextmanager
    def _read(self, what: str) -> Iterator[Connection]:
        with database_errors(what, self._url), self._engine.connect() as conn, conn.begin():
            if self._sqlite:
                sqlite_begin(conn, immediate=False)
            yield conn

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        with self._write_lock, database_errors(what, self._url), self._engine.connect() as conn, conn.begin():
            if self._sqlite:
                sqlite_begin(conn, immediate=True)
            yield conn
