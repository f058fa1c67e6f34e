"""Opening the store: ca.json's `db` block, URLs hsmca refuses, and databases that do not answer."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.store import Reservation, Store, StoreError, StoreUnavailable


def test_sqlite_path_is_relative_to_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()
    with Store.from_config({"type": "sqlite", "dataSource": "db/hsmca.db"}, tmp_path) as store:
        assert store.backend == "sqlite"
        store.migrate()
        store.check_schema()
    assert (tmp_path / "db" / "hsmca.db").is_file()


def test_sqlite_uses_wal_and_waits_for_locks(tmp_path: Path) -> None:
    with Store.from_config({"type": "sqlite", "dataSource": str(tmp_path / "a.db")}, Path("/")) as store:
        store.ping()
        engine = store._engine  # the pragmas are per connection: look at a pooled one
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 5000
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


@pytest.mark.parametrize(
    ("db", "expected"),
    [
        ({"type": "postgresql", "dataSource": "postgresql://u:pw@db.corp:5432/hsmca"},
         "postgresql+psycopg://u:***@db.corp:5432/hsmca"),
        ({"type": "postgresql", "dataSource": "postgres://u@db.corp/", "database": "ca"},
         "postgresql+psycopg://u@db.corp/ca"),
        ({"type": "postgresql", "dataSource": "postgresql+psycopg://u@db.corp/hsmca?sslmode=require"},
         "postgresql+psycopg://u@db.corp/hsmca?sslmode=require"),
        ({"type": "mysql", "dataSource": "mysql://root@db.corp:3306/hsmca"},
         "mysql+pymysql://root@db.corp:3306/hsmca"),
        ({"type": "mysql", "dataSource": "mariadb://root@db.corp/hsmca"},
         "mariadb+pymysql://root@db.corp/hsmca"),
    ],
)
def test_server_urls_get_the_supported_driver(db: dict[str, str], expected: str) -> None:
    store = Store.from_config(db, Path("/etc/hsmca"))
    try:
        assert store.url == expected
        assert "pw" not in repr(store)
    finally:
        store.close()


@pytest.mark.parametrize(
    ("db", "message"),
    [
        ({"type": "badgerv2", "dataSource": "/var/lib/step/db"}, "db.type 'badgerv2' is not supported"),
        ({"dataSource": "x.db"}, "db.type None is not supported"),
        ({"type": "sqlite"}, "db.dataSource must be a non-empty string"),
        ({"type": "mysql", "dataSource": "user:pw@tcp(127.0.0.1:3306)/"}, "Go-style DSNs are not accepted"),
        ({"type": "mysql", "dataSource": "postgresql://u@h/db"}, 'db.type is "mysql" but db.dataSource is a postgresql URL'),  # noqa: E501
        ({"type": "postgresql", "dataSource": "postgresql+asyncpg://u@h/db"}, "driver 'asyncpg' is not supported"),
        ({"type": "postgresql", "dataSource": "postgresql://u@h/"}, "names no database"),
        ({"type": "postgresql", "dataSource": "postgresql://u@h/a", "database": "b"}, "contradicts"),
        ({"type": "postgresql", "dataSource": "postgresql://u:p@h:notaport/db"}, "not a SQLAlchemy URL"),
    ],
)
def test_bad_db_config_is_a_clear_store_error(db: dict[str, str], message: str) -> None:
    with pytest.raises(StoreError, match=message) as info:
        Store.from_config(db, Path("/etc/hsmca"))
    assert not isinstance(info.value, StoreUnavailable)


def test_bad_urls_are_refused() -> None:
    for url, message in [
        ("oracle://u@h/db", "backend 'oracle' is not supported"),
        ("sqlite://", "sqlite needs a database file"),
        ("not a url", "not a SQLAlchemy URL"),
    ]:
        with pytest.raises(StoreError, match=message):
            Store(url)
    with pytest.raises(StoreError):
        Store.from_config("sqlite:///x.db", Path("/"))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://hsmca:s3cret-pw@127.0.0.1:1/hsmca",
        "mysql://hsmca:s3cret-pw@127.0.0.1:1/hsmca",
    ],
    ids=["postgresql", "mysql"],
)
def test_unreachable_server_is_store_unavailable_quickly(url: str) -> None:
    with Store(url) as store:
        for call in (store.ping, store.check_schema,
                     lambda: store.tokens.use("j", "p", datetime.now(UTC))):
            started = time.monotonic()
            with pytest.raises(StoreUnavailable) as info:
                call()
            assert time.monotonic() - started < 3
            assert "s3cret-pw" not in str(info.value) and "s3cret-pw" not in info.value.reason
            assert info.value.reason.startswith("database unavailable while ")
        with pytest.raises(StoreUnavailable):
            store.migrate()


def test_unusable_sqlite_file_is_store_unavailable(tmp_path: Path) -> None:
    with (
        Store(f"sqlite:///{tmp_path}/no/such/dir/hsmca.db") as store,
        pytest.raises(StoreUnavailable, match="unable to open database file"),
    ):
        store.ping()


def test_bad_input_is_refused_before_the_database(tmp_path: Path) -> None:
    """Caller mistakes are ValueError/TypeError, never StoreUnavailable (which would read as 503)."""
    with Store(f"sqlite:///{tmp_path}/x.db") as store:
        store.migrate()
        now = datetime.now(UTC)
        good: dict[str, object] = {
            "serial": 7, "issuer": "ab", "subject": "CN=x", "sans": ["dns:x"], "not_before": now,
            "not_after": now + timedelta(days=1), "provisioner": "p", "tbs": b"t",
        }
        cases: list[tuple[dict[str, object], type[Exception]]] = [
            ({"serial": True}, TypeError),
            ({"issuer": "a" * 129}, ValueError),
            ({"provisioner": ""}, ValueError),
            ({"sans": "dns:x"}, TypeError),
            ({"sans": ["dns:x", 5]}, TypeError),
            ({"not_after": now - timedelta(days=1)}, ValueError),
            ({"tbs": b""}, ValueError),
            ({"request_id": "r" * 129}, ValueError),
        ]
        for change, error in cases:
            with pytest.raises(error):
                store.certificates.reserve(Reservation(**{**good, **change}))  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            store.tokens.use("", "p", now)
        with pytest.raises(ValueError):
            store.tokens.use("j", "p", now.replace(tzinfo=None))
        with pytest.raises(ValueError):
            store.certificates.mark_abandoned(7, "")
        assert store.certificates.count_by_status() == {"reserved": 0, "issued": 0, "abandoned": 0}
