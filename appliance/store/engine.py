"""Engines with every wait bounded, SQLite made safe for many processes, and errors made 503-able."""

from __future__ import annotations

import functools
import math
import os
import sqlite3
import weakref
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from .errors import StoreError, StoreUnavailable
from .urls import backend_of

DEFAULT_TIMEOUT = 5.0
# Execution option that asks SQLite for a write lock at BEGIN (see _sqlite_begin).
WRITE = "hsmca_write"
_MAX_REASON = 300

# Store._read / Store._write: a context manager giving one transaction, named for error messages.
Transaction = Callable[[str], AbstractContextManager[Connection]]


class Repository:
    """One aggregate's tables over the Store's transactions, so every repository shares its engine, its
    timeouts and (on SQLite) its write lock: `write` takes the lock, `read` never does."""

    def __init__(self, read: Transaction, write: Transaction) -> None:
        self._read = read
        self._write = write


def create_engine(
    url: URL,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    statement_timeout: float | None = DEFAULT_TIMEOUT,
    echo: bool = False,
    pooled: bool = True,
    explicit_begin: bool = False,
) -> Engine:
    """An engine for `url` (already normalised) whose connects, statements and lock waits time out.

    `statement_timeout=None` lifts the per-statement limit (migrations may legitimately run long). On SQLite,
    `explicit_begin=True` leaves BEGIN to the caller (`sqlite_begin` after every `conn.begin()`: the Store
    does); otherwise an engine event emits it.
    """
    if timeout <= 0:
        raise StoreError("database timeout must be positive")
    backend = backend_of(url)
    kwargs: dict[str, Any] = {
        "echo": echo,
        # Statement parameters (tokens' ids, certificate bodies) never reach error texts or logs.
        "hide_parameters": True,
    }
    if not pooled:
        kwargs["poolclass"] = NullPool
    else:
        kwargs["pool_timeout"] = timeout
        if backend != "sqlite":
            kwargs["pool_pre_ping"] = True  # survive a database fail-over or restart
            kwargs["pool_recycle"] = 1800  # below MySQL's and proxies' idle cut-offs
    if backend == "sqlite":
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": timeout}
    elif backend == "postgresql":
        kwargs["connect_args"] = _postgresql_args(url, timeout, statement_timeout)
    else:
        kwargs["connect_args"] = _mysql_args(url, timeout, statement_timeout)
    try:
        engine = sa.create_engine(url, **kwargs)
    except (SQLAlchemyError, ImportError) as exc:
        raise StoreError(
            f"cannot use database {url.render_as_string(hide_password=True)}: {exc}"
        ) from None
    if backend == "sqlite":
        _configure_sqlite(engine, timeout, begin_event=not explicit_begin)
    elif backend == "mysql":
        _configure_mysql(engine, timeout, statement_timeout)
    if pooled:
        _dispose_after_fork(engine)
    return engine


def _postgresql_args(url: URL, timeout: float, statement_timeout: float | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "connect_timeout": max(2, math.ceil(timeout)),  # libpq counts whole seconds, minimum 2
        "application_name": "hsmca",
        # Notice a peer that vanished while we wait for its answer, instead of TCP's ~15 minutes.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    # Settings given in the URL win over these defaults.
    args = {k: v for k, v in args.items() if k not in url.query}
    if statement_timeout is not None:
        limits = (
            f"-c statement_timeout={int(statement_timeout * 1000)}"
            f" -c lock_timeout={int(statement_timeout * 1000)}"
        )
        given = url.query.get("options")
        if isinstance(given, tuple):
            given = " ".join(given)
        args["options"] = f"{given} {limits}" if given else limits
    return args


def _mysql_args(url: URL, timeout: float, statement_timeout: float | None) -> dict[str, Any]:
    args: dict[str, Any] = {
        "connect_timeout": timeout,
        "write_timeout": timeout,
        "charset": "utf8mb4",
    }
    if statement_timeout is not None:
        # The server's own limit fires first, so a slow statement ends with its error, not a
        # dropped socket.
        args["read_timeout"] = statement_timeout + timeout
    return {k: v for k, v in args.items() if k not in url.query}


def _configure_mysql(engine: Engine, timeout: float, statement_timeout: float | None) -> None:
    if statement_timeout is None:
        return
    seconds = max(1, math.ceil(statement_timeout))

    @event.listens_for(engine, "connect")
    def _session_limits(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"SET SESSION innodb_lock_wait_timeout = {seconds}")
            if "mariadb" in dbapi_connection.get_server_info().lower():
                cursor.execute(f"SET SESSION max_statement_time = {float(statement_timeout)}")
            else:  # MySQL limits SELECTs only
                cursor.execute(f"SET SESSION max_execution_time = {int(statement_timeout * 1000)}")
        finally:
            cursor.close()


def _configure_sqlite(engine: Engine, timeout: float, *, begin_event: bool) -> None:
    """WAL lets readers run beside the single writer; synchronous=FULL because a reservation
    must survive a power cut once the HSM has been asked to sign."""

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        # pysqlite's own transaction handling would skip BEGIN before SELECTs and DDL;
        # BEGIN is emitted explicitly instead (sqlite_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    if begin_event:
        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            sqlite_begin(conn, immediate=conn.get_execution_options().get(WRITE, False))


def sqlite_begin(conn: Connection, *, immediate: bool) -> None:
    """Open the SQLite transaction that SQLAlchemy's `conn.begin()` stands for.

    A writer takes the write lock up front: a deferred transaction that reads and then writes can fail with
    SQLITE_BUSY at once, without waiting on busy_timeout. Sent on the driver's connection, not through
    exec_driver_sql, and by the Store rather than from a `begin` event: the statement needs no result, and any
    engine event makes SQLAlchemy dispatch events around every statement (measured: 27 µs a transaction).
    """
    statement = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    try:
        conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:  # what exec_driver_sql would have raised (e.g. OperationalError: locked)
        raise DBAPIError.instance(statement, (), exc, sqlite3.Error) from exc


def _dispose_after_fork(engine: Engine) -> None:
    """A forked process must not share its parent's sockets or SQLite handles."""
    os.register_at_fork(after_in_child=functools.partial(_forget_pool, weakref.ref(engine)))


def _forget_pool(ref: weakref.ref[Engine]) -> None:
    engine = ref()
    if engine is not None:
        engine.dispose(close=False)


def describe(exc: BaseException, url: URL | None = None) -> str:
    """The driver's complaint in one line: no SQL, no parameters, no password."""
    orig = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    text = f"{type(orig).__name__}: {lines[0] if lines else 'no detail'}"
    if url is not None and url.password:
        text = text.replace(str(url.password), "***")
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


@contextmanager
def database_errors(what: str, url: URL | None = None) -> Iterator[None]:
    """Every driver or pool failure becomes StoreUnavailable; domain errors pass through."""
    try:
        yield
    except StoreError:
        raise
    except SQLAlchemyError as exc:
        raise as_store_error(exc, what, url) from exc


def as_store_error(exc: BaseException, what: str, url: URL | None = None) -> BaseException:
    """What `database_errors` raises for `exc` (a driver failure becomes StoreUnavailable, caused by it)."""
    if not isinstance(exc, SQLAlchemyError) or isinstance(exc, StoreError):
        return exc
    error = StoreUnavailable(f"database unavailable while {what}: {describe(exc, url)}")
    error.__cause__ = exc
    return error
