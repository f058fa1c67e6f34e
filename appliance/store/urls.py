"""Turn ca.json's step-ca-shaped `db` block, or a URL, into a SQLAlchemy URL hsmca supports."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from .errors import StoreError

# The drivers whose timeout options the engine sets; any other driver would silently lose them.
DRIVERS = {
    "sqlite": "pysqlite",
    "postgresql": "psycopg",
    "mysql": "pymysql",
    "mariadb": "pymysql",
}
_BACKEND_OF_TYPE = {"sqlite": ("sqlite",), "postgresql": ("postgresql",), "mysql": ("mysql", "mariadb")}


def backend_of(url: URL) -> str:
    """The storage family (`sqlite`, `postgresql`, `mysql`) a URL belongs to."""
    name = url.get_backend_name()
    return "mysql" if name == "mariadb" else name


def _parse(text: str) -> URL:
    text = text.strip()
    if text.startswith("postgres://"):  # the spelling libpq and many hosting services also use
        text = "postgresql://" + text[len("postgres://"):]
    try:
        return make_url(text)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise StoreError(
            "database URL is not a SQLAlchemy URL (expected e.g. "
            "postgresql+psycopg://user:pass@host:5432/hsmca or mysql+pymysql://user:pass@host/hsmca)"
        ) from None


def normalise_url(url: str | URL) -> URL:
    """Parse, give plain `postgresql://` and `mysql://` their supported driver, refuse the rest."""
    parsed = _parse(url) if isinstance(url, str) else url
    backend = parsed.get_backend_name()
    if backend not in DRIVERS:
        raise StoreError(
            f"database backend {backend!r} is not supported; use sqlite, postgresql or mysql/mariadb"
        )
    driver = parsed.get_driver_name()
    wanted = DRIVERS[backend]
    if "+" not in parsed.drivername:
        parsed = parsed.set(drivername=f"{backend}+{wanted}")
    elif driver != wanted:
        raise StoreError(
            f"database driver {driver!r} is not supported for {backend}; use {backend}+{wanted}"
        )
    if backend == "sqlite" and parsed.database in (None, "", ":memory:"):
        # Each pooled connection would see its own empty in-memory database.
        raise StoreError("sqlite needs a database file, e.g. sqlite:////var/lib/hsmca/hsmca.db")
    if backend != "sqlite" and not parsed.database:
        raise StoreError(
            f"database URL {parsed.render_as_string(hide_password=True)} names no database"
        )
    return parsed


def url_from_config(db: Mapping[str, Any], base_dir: Path) -> URL:
    """Read `{"type": ..., "dataSource": ..., "database": ...}` as step-ca 0.19 writes it.

    For sqlite `dataSource` is a file path (relative to `base_dir`, normally the directory of
    ca.json); for the servers it is a SQLAlchemy URL. step-ca's optional `database` key names the
    database when the URL does not.
    """
    if not isinstance(db, Mapping):
        raise StoreError('"db" must be an object like {"type": "sqlite", "dataSource": "db/hsmca.db"}')
    kind = db.get("type")
    source = db.get("dataSource")
    if kind not in _BACKEND_OF_TYPE:
        raise StoreError(
            f'db.type {kind!r} is not supported; use "sqlite", "postgresql" or "mysql"'
        )
    if not isinstance(source, str) or not source.strip():
        raise StoreError(f'db.dataSource must be a non-empty string for db.type "{kind}"')
    database = db.get("database")
    if database is not None and (not isinstance(database, str) or not database):
        raise StoreError("db.database must be a non-empty string when given")

    if kind == "sqlite":
        if source.startswith("sqlite:"):
            return normalise_url(source)
        path = Path(source).expanduser()
        if not path.is_absolute():
            path = Path(base_dir) / path
        return URL.create("sqlite+pysqlite", database=str(path))

    if "://" not in source:
        raise StoreError(
            f"db.dataSource for {kind} must be a URL such as "
            + ("postgresql://user:pass@host:5432/hsmca" if kind == "postgresql"
               else "mysql://user:pass@host:3306/hsmca")
            + " (Go-style DSNs are not accepted)"
        )
    parsed = _parse(source)
    if parsed.get_backend_name() not in _BACKEND_OF_TYPE[kind]:
        raise StoreError(
            f'db.type is "{kind}" but db.dataSource is a {parsed.get_backend_name()} URL'
        )
    if database is not None:
        if parsed.database and parsed.database != database:
            raise StoreError(
                f"db.database {database!r} contradicts the database {parsed.database!r} in db.dataSource"
            )
        parsed = parsed.set(database=database)
    return normalise_url(parsed)
