"""Alembic, driven from code: no alembic.ini at run time, the engine's connection handed in."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from .engine import WRITE
from .errors import StoreError
from .urls import backend_of

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
# Any constant works; it only has to be the same for every replica of hsmca.
_PG_LOCK_KEY = 0x68736D6361  # "hsmca"
_MYSQL_LOCK_NAME = "hsmca_migrate"
_MYSQL_LOCK_WAIT_SECONDS = 60


def alembic_config(connection: Connection | None = None) -> Config:
    """A Config pointing at the packaged scripts; env.py picks the connection up from attributes."""
    config = Config()
    # ConfigParser interpolation would read a '%' in the install path as a placeholder.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The revision this version of hsmca expects the database to be at."""
    heads = ScriptDirectory.from_config(alembic_config()).get_heads()
    if len(heads) != 1:
        raise StoreError(f"migration scripts have {len(heads)} heads, expected one: {heads}")
    return heads[0]


def known_revisions() -> set[str]:
    """Every revision this version of hsmca has a migration script for."""
    return {s.revision for s in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in the database, None for a database never migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Upgrade to head (or to `revision`, as a restore does before loading a dump taken there); replicas starting
    together wait for each other instead of colliding."""
    backend = backend_of(engine.url)
    with engine.connect() as connection:
        connection.execution_options(**{WRITE: True})  # SQLite: BEGIN IMMEDIATE serialises
        if backend == "mysql":
            _mysql_lock(connection)
        try:
            with connection.begin():
                if backend == "postgresql":
                    connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_PG_LOCK_KEY})")
                command.upgrade(alembic_config(connection), revision)
        finally:
            if backend == "mysql":
                _mysql_unlock(connection)


def _mysql_lock(connection: Connection) -> None:
    got = connection.exec_driver_sql(
        f"SELECT GET_LOCK('{_MYSQL_LOCK_NAME}', {_MYSQL_LOCK_WAIT_SECONDS})"
    ).scalar()
    connection.commit()
    if got != 1:
        raise StoreError(
            f"another process has been migrating the database for over {_MYSQL_LOCK_WAIT_SECONDS} s"
        )


def _mysql_unlock(connection: Connection) -> None:
    try:
        connection.exec_driver_sql(f"SELECT RELEASE_LOCK('{_MYSQL_LOCK_NAME}')")
        connection.commit()
    except SQLAlchemyError:
        pass  # closing the session releases the lock too; keep the migration's own error


def check(connection: Connection) -> None:
    """Refuse to serve on a schema other than the one this code was written for."""
    current = current_revision(connection)
    expected = head_revision()
    if current == expected:
        return
    if current is not None and current not in known_revisions():
        raise StoreError(
            f"database schema is at {current}, which this version of hsmca does not know "
            f"(written by a newer release?); expected {expected}"
        )
    raise StoreError(
        f"database schema is at {current or 'none (empty database)'}, expected {expected}; "
        "run `hsmca db migrate`"
    )
