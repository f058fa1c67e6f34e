"""The portable database dump (appliance/store/dump.py) on real SQLite, PostgreSQL and MariaDB (fixtures from
test_store.py): every table's rows, every column kind, load back equal on the same backend and across backends;
a dump taken at an older revision loads and is upgraded; a newer revision and a database with rows are refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from appliance.store import Store, StoreError
from appliance.store.dump import dump_database, load_database, reset_sequences, tables_in_use
from appliance.store.migrate import head_revision, upgrade
from appliance.store.schema import UTCDateTime, metadata
from tests.integration import test_store as base
from tests.integration.test_store import Server
from tests.integration.test_store_intermediates import _alembic

server = base.server
T0 = datetime(2031, 2, 3, 4, 5, 6, 123456, tzinfo=UTC)
BLOB = bytes(range(256)) * 3
DOC = {"n": 1, "nested": [1.5, "é✓", None, True, {"k": "v"}], "empty": {}}


def _value(table: sa.Table, column: sa.Column[Any], i: int) -> Any:
    """A value of the column's kind for row i: every byte value, micro-seconds, nested JSON, non-ASCII text."""
    if column.nullable and i == 2:
        return None
    if table.name == "certificates" and column.name == "status":
        return "issued"
    type_ = column.type
    if isinstance(type_, sa.JSON):
        return {**DOC, "i": i}
    if isinstance(type_, UTCDateTime):
        return T0 + timedelta(days=i, microseconds=i)
    if isinstance(type_, sa.Boolean):
        return i % 2 == 0
    if isinstance(type_, sa.Integer):
        return (2**40 if isinstance(type_, sa.BigInteger) else 7) + i
    if isinstance(type_, sa.LargeBinary):
        return BLOB + bytes([i])
    text = f"{i}-{column.name}-é✓"
    length = getattr(column.type, "length", None)
    return text[:length] if length else text


def _fill(url: str, rows: int = 3) -> None:
    """Rows in every table of the schema, inserted through its own types (as the store writes them)."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for table in metadata.sorted_tables:
                conn.execute(table.insert(), [{c.name: _value(table, c, i) for c in table.columns}
                                              for i in range(rows)])
    finally:
        engine.dispose()


def _contents(url: str, tables: list[sa.Table] = metadata.sorted_tables) -> dict[str, list[dict[str, Any]]]:
    """The tables' rows, read through schema.py's types, in primary-key order."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return {t.name: [dict(r._mapping) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                    for t in tables}
    finally:
        engine.dispose()


def _migrated(server: Server) -> str:
    url = server.new_url()
    with Store(url) as store:
        store.migrate()
    return url


def _sqlite(tmp_path: Path, name: str = "target") -> str:
    return f"sqlite:///{tmp_path / name}.db"


def test_round_trip_on_the_same_backend_and_into_sqlite(server: Server, tmp_path: Path) -> None:
    source = _migrated(server)
    _fill(source)
    dump = dump_database(source, tmp_path / "dump")
    assert dump.revision == head_revision() and dump.backend == server.kind.replace("mariadb", "mysql")
    assert {t.name: t.rows for t in dump.tables} == {t.name: 3 for t in metadata.sorted_tables}
    header = json.loads((tmp_path / "dump" / "certificates.jsonl").read_bytes().splitlines()[0])
    assert header["columns"]["tbs"] == "bytes" and header["columns"]["not_before"] == "datetime"
    row = json.loads((tmp_path / "dump" / "certificates.jsonl").read_bytes().splitlines()[1])
    assert row["not_before"] == "2031-02-03T04:05:06.123456+00:00" and row["sans"] == {**DOC, "i": 0}
    expected = _contents(source)
    for target in (server.new_url(), _sqlite(tmp_path)):
        counts = load_database(target, tmp_path / "dump", dump.revision)
        assert counts == {t.name: 3 for t in metadata.sorted_tables}
        assert _contents(target) == expected
        with Store(target) as store:
            store.check_schema()


def test_sqlite_into_the_backend(server: Server, tmp_path: Path) -> None:
    source = f"sqlite:///{tmp_path / 'source'}.db"
    with Store(source) as store:
        store.migrate()
    _fill(source, rows=4)
    dump = dump_database(source, tmp_path / "dump")
    target = server.new_url()
    load_database(target, tmp_path / "dump", dump.revision)
    assert _contents(target) == _contents(source)


def test_a_dump_at_an_older_revision_is_loaded_there_then_upgraded(tmp_path: Path) -> None:
    source = _sqlite(tmp_path, "old")
    _alembic(source, "upgrade", "0003")  # before the ACME and audit checkpoint tables
    engine = sa.create_engine(source, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            table = metadata.tables["certificates"]
            conn.execute(table.insert(), [{c.name: _value(table, c, i) for c in table.columns} for i in range(2)])
    finally:
        engine.dispose()
    dump = dump_database(source, tmp_path / "dump")
    assert dump.revision == "0003" and "acme_orders" not in {t.name for t in dump.tables}
    target = _sqlite(tmp_path)
    load_database(target, tmp_path / "dump", "0003")
    with Store(target) as store:
        store.check_schema()  # at head now
    certificates = [metadata.tables["certificates"]]
    assert _contents(target, certificates) == _contents(source, certificates)


def test_a_newer_revision_is_refused_naming_both(tmp_path: Path) -> None:
    source = _sqlite(tmp_path, "new")
    with Store(source) as store:
        store.migrate()
    dump = dump_database(source, tmp_path / "dump")
    with pytest.raises(StoreError, match=f"revision 9999, which this release of hsmca does not know "
                                         rf"\(its newest is {head_revision()}\)"):
        load_database(_sqlite(tmp_path), tmp_path / "dump", "9999")
    engine = sa.create_engine(source, poolclass=NullPool)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(StoreError, match="at schema revision 9999, which this release"):
        dump_database(source, tmp_path / "again")
    assert dump.revision == head_revision()


def test_a_database_with_rows_is_refused_unless_replaced(tmp_path: Path) -> None:
    source = _sqlite(tmp_path, "source")
    with Store(source) as store:
        store.migrate()
    _fill(source, rows=2)
    dump = dump_database(source, tmp_path / "dump")
    target = _sqlite(tmp_path)
    with Store(target) as store:
        store.migrate()
    assert tables_in_use(target) == []  # migrated but empty: loadable
    _fill(target, rows=1)
    assert "certificates" in tables_in_use(target)
    with pytest.raises(StoreError, match="already holds rows"):
        load_database(target, tmp_path / "dump", dump.revision)
    load_database(target, tmp_path / "dump", dump.revision, replace=True)
    assert _contents(target) == _contents(source)
    assert tables_in_use(_sqlite(tmp_path, "absent")) == [] and not (tmp_path / "absent.db").exists()


def test_the_next_id_follows_rows_loaded_with_explicit_ids(server: Server) -> None:
    """PostgreSQL needs its sequences moved (reset_sequences, run by every load there); MariaDB and SQLite move
    their counters on an explicit insert by themselves."""
    engine = sa.create_engine(server.new_url(), poolclass=NullPool)
    try:
        scratch = sa.Table("scratch", sa.MetaData(), sa.Column("id", sa.Integer, primary_key=True),
                           sa.Column("v", sa.String(16)))
        with engine.begin() as conn:
            scratch.create(conn)
            conn.execute(scratch.insert(), [{"id": i, "v": "loaded"} for i in (1, 2, 7)])
            if server.kind == "postgresql":
                reset_sequences(conn, [scratch])
            conn.execute(scratch.insert().values(v="new"))
            assert conn.execute(sa.select(scratch.c.id).where(scratch.c.v == "new")).scalar_one() == 8
    finally:
        engine.dispose()


def test_upgrade_to_a_revision_then_head(tmp_path: Path) -> None:
    """migrate.upgrade(engine, revision), which a load uses before inserting."""
    engine = sa.create_engine(_sqlite(tmp_path), poolclass=NullPool)
    try:
        upgrade(engine, "0002")
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0002"
        upgrade(engine)
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == head_revision()
    finally:
        engine.dispose()
