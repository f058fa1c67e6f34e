"""The database as portable JSON lines, so that a backup taken on one backend restores on any other.

One file per table, `<table>.jsonl`: a header line (the table, the schema revision, each column's kind), then one
JSON object per row. The kinds make a file self-describing, so a dump never depends on the schema of the release
that reads it: bytes are base64, times ISO 8601 in UTC with microseconds (exactly what every backend keeps), JSON
columns are nested as JSON, NULL is null.

A dump reads every table inside one read-only transaction that sees one snapshot (SQLite: a deferred BEGIN on the
WAL; PostgreSQL: REPEATABLE READ; MariaDB/MySQL: START TRANSACTION WITH CONSISTENT SNAPSHOT), streaming rows, so it
runs beside a serving CA without blocking its writers. A load needs a database without hsmca rows: it migrates it
to the dump's revision, inserts the rows in foreign-key order in one transaction, moves PostgreSQL's sequences past
them, then upgrades to this release's head, which is what a migration of the original database would have done.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from . import migrate as _migrate
from .engine import DEFAULT_TIMEOUT, WRITE, create_engine, database_errors
from .errors import StoreError
from .schema import UTCDateTime, metadata
from .urls import backend_of, normalise_url

FORMAT = 1
SUFFIX = ".jsonl"
_ROWS_PER_READ = 1000
# Rows per INSERT batch, and the bytes a batch may hold (MariaDB's max_allowed_packet is 16 MiB by default).
_ROWS_PER_INSERT = 500
_BYTES_PER_INSERT = 4 * 1024 * 1024
_MAX_LINE = 256 * 1024 * 1024  # a row: a CRL of a million entries is ~45 MB, ~60 MB in base64

# What each kind of column is read and written as; the kind is named in the dump's header.
_TYPES: dict[str, Callable[[], sa.types.TypeEngine[Any]]] = {
    "string": sa.Text,
    "int": sa.BigInteger,
    "bool": sa.Boolean,
    "bytes": sa.LargeBinary,
    "datetime": UTCDateTime,
    "json": lambda: sa.JSON(none_as_null=True),
}


@dataclass(frozen=True)
class TableDump:
    name: str
    columns: dict[str, str]  # column → kind
    rows: int
    path: Path


@dataclass(frozen=True)
class DatabaseDump:
    backend: str  # sqlite, postgresql, mysql
    revision: str
    tables: list[TableDump]


def check_revision(revision: str) -> None:
    """Refuse a dump from a schema this release cannot create (a newer release's), naming both revisions."""
    if revision not in _migrate.known_revisions():
        raise StoreError(f"the dump is at schema revision {revision}, which this release of hsmca does not know "
                         f"(its newest is {_migrate.head_revision()}): restore it with the release that made it "
                         "or a newer one")


def dump_database(url: str | URL, directory: Path, *, timeout: float = DEFAULT_TIMEOUT) -> DatabaseDump:
    """Write every hsmca table of the database at `url` into `directory` (created, 0700; files 0600)."""
    url = normalise_url(url)
    backend = backend_of(url)
    if backend == "sqlite" and not Path(str(url.database)).is_file():
        raise StoreError(f"no database at {url.database}")  # connecting would create an empty one
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    engine = create_engine(url, timeout=timeout, statement_timeout=None, pooled=False)
    try:
        with database_errors("dumping the database", url), engine.connect() as conn, _snapshot(conn, backend):
            revision = _migrate.current_revision(conn)
            if revision is None:
                raise StoreError("the database has no schema yet (never migrated): there is nothing to dump")
            if revision not in _migrate.known_revisions():
                raise StoreError(f"the database is at schema revision {revision}, which this release of hsmca "
                                 f"does not know (its newest is {_migrate.head_revision()})")
            inspector = sa.inspect(conn)
            present = set(inspector.get_table_names())
            tables = [_dump_table(conn, inspector, table, revision, directory)
                      for table in metadata.sorted_tables if table.name in present]
    finally:
        engine.dispose()
    return DatabaseDump(backend, revision, tables)


@contextmanager
def _snapshot(conn: Connection, backend: str) -> Iterator[None]:
    """One read-only transaction whose every SELECT sees the same committed state."""
    if backend in ("postgresql", "mysql"):
        conn.execution_options(isolation_level="REPEATABLE READ")
    with conn.begin():  # SQLite: the engine sends a deferred BEGIN; its first read pins the snapshot
        if backend == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        elif backend == "mysql":
            conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        yield


def _kind(type_: sa.types.TypeEngine[Any], where: str) -> str:
    """The dump's name for a column type (JSON and times first: their Python types say nothing useful)."""
    if isinstance(type_, sa.JSON):
        return "json"
    if isinstance(type_, UTCDateTime | sa.DateTime):
        return "datetime"
    if isinstance(type_, sa.Boolean):
        return "bool"
    if isinstance(type_, sa.Integer):
        return "int"
    try:
        python = type_.python_type
    except NotImplementedError:
        python = object
    if python in (bytes, str):
        return "bytes" if python is bytes else "string"
    raise StoreError(f"{where}: column type {type_} cannot be dumped")


def _dump_table(conn: Connection, inspector: sa.Inspector, table: sa.Table, revision: str,
                directory: Path) -> TableDump:
    # The database's own columns (it may be at an older revision than this code); their kinds from schema.py.
    reflected = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
    columns = {name: _kind(table.c[name].type if name in table.c else type_, f"{table.name}.{name}")
               for name, type_ in reflected.items()}
    key = inspector.get_pk_constraint(table.name).get("constrained_columns") or list(columns)[:1]
    query = (sa.select(*(sa.column(name, _TYPES[kind]()) for name, kind in columns.items()))
             .select_from(sa.table(table.name)).order_by(*(sa.column(name) for name in key))
             .execution_options(yield_per=_ROWS_PER_READ))
    path = directory / f"{table.name}{SUFFIX}"
    rows = 0
    with _private(path) as out:
        out.write(_line({"format": FORMAT, "table": table.name, "revision": revision, "columns": columns}))
        for row in conn.execute(query):
            out.write(_line({name: _encode(value, columns[name]) for name, value in row._mapping.items()}))
            rows += 1
    return TableDump(table.name, columns, rows, path)


@contextmanager
def _private(path: Path) -> Iterator[IO[bytes]]:
    """A new file only its owner reads, flushed to disk when closed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb", buffering=1024 * 1024) as out:
        yield out
        out.flush()
        os.fsync(out.fileno())


def _line(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def _encode(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "bytes":
        return base64.b64encode(value).decode("ascii")
    if kind == "datetime":
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def _decode(value: Any, kind: str) -> Any:
    """The value of a dumped cell, checked against its kind (a hand-edited dump fails here, not in the driver)."""
    if value is None or kind == "json":
        return value
    if kind == "bytes" and isinstance(value, str):
        return base64.b64decode(value, validate=True)
    if kind == "datetime" and isinstance(value, str):
        when = datetime.fromisoformat(value)
        if when.tzinfo is None:
            raise ValueError(f"time {value!r} has no zone")
        return when
    expected = {"string": str, "int": int, "bool": bool}.get(kind)
    if expected is not None and isinstance(value, expected) and (kind == "bool" or not isinstance(value, bool)):
        return value
    raise ValueError(f"{value!r} is not a {kind} value")


# -- loading --------------------------------------------------------------------------------------------------------


def read_header(path: Path) -> tuple[str, str, dict[str, str]]:
    """(table, revision, columns) from a table file's first line."""
    with path.open("rb") as f:
        first = f.readline(1024 * 1024)
    try:
        header = json.loads(first)
        table, revision, columns = header["table"], header["revision"], header["columns"]
        if header.get("format") != FORMAT:
            raise StoreError(f"{path.name}: dump format {header.get('format')!r}, this release reads {FORMAT}")
        if not (isinstance(table, str) and isinstance(revision, str) and isinstance(columns, dict)
                and all(isinstance(c, str) and k in _TYPES for c, k in columns.items())):
            raise ValueError("bad header fields")
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{path.name}: not a table dump ({exc})") from None
    if f"{table}{SUFFIX}" != path.name:
        raise StoreError(f"{path.name} holds table {table!r}")
    return table, revision, columns


def tables_in_use(url: str | URL, *, timeout: float = DEFAULT_TIMEOUT) -> list[str]:
    """hsmca's tables in the database that hold rows (none for a SQLite file that does not exist yet)."""
    url = normalise_url(url)
    if backend_of(url) == "sqlite" and not Path(str(url.database)).exists():
        return []
    engine = create_engine(url, timeout=timeout, statement_timeout=None, pooled=False)
    try:
        with database_errors("looking into the database", url), engine.connect() as conn:
            present = set(sa.inspect(conn).get_table_names())
            return [t.name for t in metadata.sorted_tables if t.name in present
                    and conn.execute(sa.select(sa.literal(1)).select_from(sa.table(t.name)).limit(1)).first()]
    finally:
        engine.dispose()


def load_database(url: str | URL, directory: Path, revision: str, *, replace: bool = False,
                  timeout: float = DEFAULT_TIMEOUT) -> dict[str, int]:
    """Load the dump in `directory` (taken at `revision`) into the database at `url`; rows loaded per table.

    The database must hold no hsmca rows unless `replace`; hsmca's tables there are dropped first either way.
    """
    url = normalise_url(url)
    check_revision(revision)
    files: dict[str, tuple[Path, dict[str, str]]] = {}
    for path in sorted(directory.glob(f"*{SUFFIX}")):
        table, at, columns = read_header(path)
        if at != revision:
            raise StoreError(f"{path.name} was dumped at schema revision {at}, the rest at {revision}")
        files[table] = (path, columns)
    engine = create_engine(url, timeout=timeout, statement_timeout=None, pooled=False)
    try:
        with database_errors("loading the database", url):
            used = tables_in_use(url, timeout=timeout)
            if used and not replace:
                raise StoreError(f"the database {url.render_as_string(hide_password=True)} already holds rows "
                                 f"({', '.join(used)})")
            drop_tables(engine, set(files))
            _migrate.upgrade(engine, revision)
            counts = _insert(engine, files, revision)
            _migrate.upgrade(engine)
    finally:
        engine.dispose()
    return counts


def drop_tables(engine: Engine, also: Iterable[str] = ()) -> None:
    """Drop hsmca's tables (schema.py's, `also`, and Alembic's stamp), leaving any other application's."""
    names = {t.name for t in metadata.sorted_tables} | set(also) | {"alembic_version"}
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})
        with conn.begin():
            present = sa.MetaData()
            present.reflect(conn, only=lambda name, _meta: name in names)
            present.drop_all(conn)


def _insert(engine: Engine, files: dict[str, tuple[Path, dict[str, str]]], revision: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    with engine.connect() as conn:
        conn.execution_options(**{WRITE: True})  # SQLite: BEGIN IMMEDIATE
        with conn.begin():
            target = sa.MetaData()
            target.reflect(conn)
            missing = sorted(set(files) - set(target.tables))
            if missing:
                raise StoreError(f"schema revision {revision} has no table {', '.join(missing)}")
            for table in target.sorted_tables:  # parents before the rows that refer to them
                if table.name in files:
                    path, columns = files[table.name]
                    counts[table.name] = _insert_table(conn, table, path, columns)
            if backend_of(engine.url) == "postgresql":
                reset_sequences(conn, target.sorted_tables)
    return counts


def _insert_table(conn: Connection, table: sa.Table, path: Path, columns: dict[str, str]) -> int:
    unknown = [name for name in columns if name not in table.c]
    if unknown:
        raise StoreError(f"{path.name}: table {table.name} has no column {', '.join(unknown)}")
    into = sa.Table(table.name, sa.MetaData(), *(sa.Column(name, _TYPES[kind]()) for name, kind in columns.items()))
    batch: list[dict[str, Any]] = []
    size = rows = 0
    with path.open("rb") as f:
        f.readline(1024 * 1024)  # the header
        for number, raw in enumerate(iter(lambda: f.readline(_MAX_LINE + 1), b""), start=2):
            if len(raw) > _MAX_LINE:
                raise StoreError(f"{path.name} line {number}: longer than {_MAX_LINE} bytes")
            batch.append(_row(raw, columns, path.name, number))
            size += len(raw)
            rows += 1
            if len(batch) >= _ROWS_PER_INSERT or size >= _BYTES_PER_INSERT:
                conn.execute(into.insert(), batch)
                batch, size = [], 0
    if batch:
        conn.execute(into.insert(), batch)
    return rows


def _row(raw: bytes, columns: dict[str, str], name: str, number: int) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
        if not isinstance(obj, dict):
            raise ValueError("not a JSON object")
        extra = set(obj) - set(columns)
        if extra:
            raise ValueError(f"columns not in the header: {', '.join(sorted(extra))}")
        return {column: _decode(obj.get(column), kind) for column, kind in columns.items()}
    except (ValueError, binascii.Error) as exc:
        raise StoreError(f"{name} line {number}: {exc}") from None


def reset_sequences(conn: Connection, tables: list[sa.Table]) -> None:
    """PostgreSQL: move every serial/identity column's sequence past the rows loaded with explicit values, so the
    next insert does not collide (MariaDB and SQLite move their counters on an explicit insert by themselves)."""
    quote = conn.dialect.identifier_preparer.quote
    for table in tables:
        for column in table.columns:
            if not isinstance(column.type, sa.Integer):
                continue
            sequence = conn.execute(sa.text("SELECT pg_get_serial_sequence(:table, :column)"),
                                    {"table": quote(table.name), "column": column.name}).scalar()
            if sequence is not None:
                conn.execute(sa.text(f"SELECT setval(:sequence, COALESCE((SELECT MAX({quote(column.name)}) "
                                     f"FROM {quote(table.name)}), 0) + 1, false)"), {"sequence": sequence})
