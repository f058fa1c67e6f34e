"""The storage authority against real SQLite, PostgreSQL and MariaDB databases.

Each server backend gets fresh, uniquely named databases created through its admin connection
and dropped afterwards; a server that is not reachable skips its parameter, with the reason.
Override the servers with HSMCA_TEST_POSTGRES_URL / HSMCA_TEST_MYSQL_URL (admin URLs).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import secrets
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from sqlalchemy.pool import NullPool

from appliance.store import (
    STALE_REASON,
    CertificateNotFound,
    CertificateStatus,
    InvalidTransition,
    OneTimeToken,
    Reservation,
    SerialCollision,
    Store,
    StoreError,
    StoreUnavailable,
    TokenReplayed,
)
from appliance.store.migrate import head_revision
from appliance.store.schema import metadata

POSTGRES_URL = os.environ.get(
    "HSMCA_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
MYSQL_URL = os.environ.get("HSMCA_TEST_MYSQL_URL", "mysql+pymysql://root@127.0.0.1:3306/test")

KEY = ec.generate_private_key(ec.SECP256R1())
T0 = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
_serials = itertools.count(2**127 + 1)


# -- databases -------------------------------------------------------------------------------


@dataclass
class Server:
    """Hands out fresh databases on one backend and drops them all at the end."""

    kind: str
    admin_url: sa.URL | None = None
    tmp: Path | None = None
    created: list[str] = field(default_factory=list)

    def new_url(self) -> str:
        name = f"hsmca_test_{secrets.token_hex(6)}"
        if self.kind == "sqlite":
            assert self.tmp is not None
            return f"sqlite:///{self.tmp / name}.db"
        assert self.admin_url is not None
        with _admin(self.admin_url) as conn:
            if self.kind == "postgresql":
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
            else:
                conn.exec_driver_sql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        self.created.append(name)
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        if not self.created:
            return
        assert self.admin_url is not None
        with _admin(self.admin_url) as conn:
            for name in self.created:
                if self.kind == "postgresql":
                    conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                else:
                    conn.exec_driver_sql(f"DROP DATABASE IF EXISTS `{name}`")


def _admin(url: sa.URL) -> sa.Connection:
    engine = sa.create_engine(
        url, isolation_level="AUTOCOMMIT", poolclass=NullPool, connect_args={"connect_timeout": 2}
    )
    return engine.connect()


@pytest.fixture(scope="module", params=["sqlite", "postgresql", "mariadb"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    kind = request.param
    if kind == "sqlite":
        yield Server(kind, tmp=tmp_path_factory.mktemp("store"))
        return
    label, raw = ("PostgreSQL", POSTGRES_URL) if kind == "postgresql" else ("MariaDB", MYSQL_URL)
    url = sa.make_url(raw)
    try:
        with _admin(url) as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as exc:
        err = str(getattr(exc, "orig", exc)).splitlines()[0]
        pytest.skip(f"{label} not reachable at {url.host}:{url.port}: {err}")
    srv = Server(kind, admin_url=url)
    try:
        yield srv
    finally:
        srv.drop_all()


@pytest.fixture(scope="module")
def db_url(server: Server) -> str:
    """One migrated database shared by the module's tests on this backend."""
    url = server.new_url()
    with Store(url) as store:
        store.migrate()
    return url


@pytest.fixture(scope="module")
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as s:
        yield s


# -- helpers ---------------------------------------------------------------------------------


def certificate(serial: int, cn: str = "svc.corp") -> tuple[bytes, bytes]:
    """(tbs, der) of a real certificate, signed here with a software key (the store never signs)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmca test")]))
        .public_key(KEY.public_key())
        .serial_number(serial)
        .not_valid_before(T0)
        .not_valid_after(T0 + timedelta(days=1))
        .sign(KEY, hashes.SHA256())
    )
    return cert.tbs_certificate_bytes, cert.public_bytes(Encoding.DER)


def reservation(serial: int, tbs: bytes, **over: object) -> Reservation:
    fields: dict[str, object] = {
        "serial": serial,
        "issuer": "9f2c1e",
        "subject": "CN=svc.corp",
        "sans": ["dns:svc.corp", "ip:10.0.0.1", "email:ops@corp", "uri:spiffe://corp/svc"],
        "not_before": T0,
        "not_after": T0 + timedelta(days=1),
        "provisioner": "admin",
        "tbs": tbs,
        "request_id": "req-1",
    }
    fields.update(over)
    return Reservation(**fields)  # type: ignore[arg-type]


# -- schema ----------------------------------------------------------------------------------


def test_migrate_from_empty_and_check_schema(server: Server) -> None:
    with Store(server.new_url()) as store:
        with pytest.raises(StoreError, match=rf"schema is at none .*expected {head_revision()}; run `hsmca db"):
            store.check_schema()
        assert store.schema_revision() is None
        store.migrate()
        store.check_schema()
        store.migrate()  # repeatable
        assert store.schema_revision() == head_revision() == "0006"


def test_check_schema_refuses_unknown_revision(server: Server) -> None:
    url = server.new_url()
    with Store(url) as store:
        store.migrate()
        engine = sa.create_engine(url, poolclass=NullPool)
        with engine.begin() as conn:
            conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        engine.dispose()
        with pytest.raises(StoreError, match="at 9999, which this version of hsmca does not know"):
            store.check_schema()


def test_migrations_create_exactly_the_models(db_url: str) -> None:
    engine = sa.create_engine(db_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True}), metadata
            )
    finally:
        engine.dispose()
    assert diff == []


def test_ping(store: Store) -> None:
    store.ping()


# -- certificates ----------------------------------------------------------------------------


def test_reserve_then_issue_round_trip(store: Store) -> None:
    serial = next(_serials)
    tbs, der = certificate(serial)
    store.certificates.reserve(reservation(serial, tbs))

    rec = store.certificates.get(serial)
    assert rec is not None
    assert (rec.status, rec.der, rec.pem, rec.issued_at) == (CertificateStatus.RESERVED, None, None, None)
    assert rec.tbs == tbs and rec.request_id == "req-1" and rec.issuer == "9f2c1e"
    assert rec.sans == ("dns:svc.corp", "ip:10.0.0.1", "email:ops@corp", "uri:spiffe://corp/svc")

    store.certificates.mark_issued(serial, der)
    rec = store.certificates.get(serial)
    assert rec is not None and rec.status == "issued" and rec.der == der
    assert rec.issued_at is not None and rec.issued_at >= rec.reserved_at
    assert rec.pem is not None
    assert x509.load_pem_x509_certificate(rec.pem.encode()).serial_number == serial

    store.certificates.mark_issued(serial, der)  # a retry with the same certificate is harmless
    with pytest.raises(InvalidTransition, match="is issued, not reserved"):
        store.certificates.mark_abandoned(serial, "too late")


def test_issue_refuses_a_certificate_over_another_tbs(store: Store) -> None:
    serial = next(_serials)
    tbs, _ = certificate(serial, "svc.corp")
    _, other_der = certificate(serial, "evil.corp")
    store.certificates.reserve(reservation(serial, tbs))
    with pytest.raises(StoreError, match="not signed over the reserved TBS"):
        store.certificates.mark_issued(serial, other_der)
    with pytest.raises(StoreError, match="not valid DER"):
        store.certificates.mark_issued(serial, b"\x30\x03garbage")
    rec = store.certificates.get(serial)
    assert rec is not None and rec.status == "reserved" and rec.der is None
    with pytest.raises(CertificateNotFound):
        store.certificates.mark_issued(next(_serials), other_der)


def test_abandon_closes_a_reservation_for_good(store: Store) -> None:
    serial = next(_serials)
    tbs, der = certificate(serial)
    store.certificates.reserve(reservation(serial, tbs))
    store.certificates.mark_abandoned(serial, "HSM refused: CKR_DEVICE_ERROR")
    rec = store.certificates.get(serial)
    assert rec is not None and rec.status == "abandoned"
    assert rec.status_reason == "HSM refused: CKR_DEVICE_ERROR"
    with pytest.raises(InvalidTransition, match="is abandoned, not reserved"):
        store.certificates.mark_issued(serial, der)
    with pytest.raises(InvalidTransition):
        store.certificates.mark_abandoned(serial, "again")
    with pytest.raises(CertificateNotFound):
        store.certificates.mark_abandoned(next(_serials), "never reserved")
    with pytest.raises(SerialCollision):
        store.certificates.reserve(reservation(serial, tbs))


def test_duplicate_serial_never_overwrites(store: Store) -> None:
    serial = next(_serials)
    tbs, _ = certificate(serial)
    store.certificates.reserve(reservation(serial, tbs))
    with pytest.raises(SerialCollision, match=f"serial {serial} is already recorded"):
        store.certificates.reserve(reservation(serial, b"other", subject="CN=other", provisioner="other"))
    rec = store.certificates.get(serial)
    assert rec is not None and rec.tbs == tbs and rec.subject == "CN=svc.corp"


def test_stale_reservations_honour_the_cut_off(server: Server) -> None:
    with Store(server.new_url()) as store:
        store.migrate()
        old, issued, young = next(_serials), next(_serials), next(_serials)
        store.certificates.reserve(reservation(old, b"old"))
        tbs, der = certificate(issued)
        store.certificates.reserve(reservation(issued, tbs))
        store.certificates.mark_issued(issued, der)
        time.sleep(0.01)
        middle = datetime.now(UTC)
        time.sleep(0.01)
        store.certificates.reserve(reservation(young, b"young"))

        hour = timedelta(hours=1)
        assert store.certificates.resolve_stale(hour, now=middle + hour) == [old]
        assert store.certificates.resolve_stale(hour, now=middle + hour) == []
        rec = store.certificates.get(old)
        assert rec is not None and rec.status == "abandoned" and rec.status_reason == STALE_REASON
        assert store.certificates.get(young).status == "reserved"  # type: ignore[union-attr]
        assert store.certificates.get(issued).status == "issued"  # type: ignore[union-attr]

        assert store.certificates.resolve_stale(hour, now=datetime.now(UTC) + 2 * hour) == [young]
        assert store.certificates.count_by_status() == {"reserved": 0, "issued": 1, "abandoned": 2}
        with pytest.raises(SerialCollision):  # the row stays: a serial is never reused
            store.certificates.reserve(reservation(old, b"old again"))
        with pytest.raises(ValueError):
            store.certificates.resolve_stale(timedelta(0))


def test_datetimes_come_back_aware_utc(store: Store) -> None:
    serial = next(_serials)
    india = timezone(timedelta(hours=5, minutes=30))
    not_before = datetime(2030, 6, 1, 12, 0, 0, 123456, tzinfo=india)
    store.certificates.reserve(reservation(serial, b"tz", not_before=not_before,
                                           not_after=not_before + timedelta(days=90)))
    rec = store.certificates.get(serial)
    assert rec is not None
    for value in (rec.not_before, rec.not_after, rec.reserved_at):
        assert value.tzinfo is not None and value.utcoffset() == timedelta(0)
    assert rec.not_before == not_before  # the same instant, microseconds kept
    assert rec.not_before.hour == 6 and rec.not_before.minute == 30
    assert abs(rec.reserved_at - datetime.now(UTC)) < timedelta(minutes=1)
    with pytest.raises(ValueError, match="timezone-aware"):
        store.certificates.reserve(reservation(next(_serials), b"naive", not_before=datetime(2030, 1, 1)))


def test_large_serials(store: Store) -> None:
    for serial in (2**128 - 1, 2**159 - 1):
        store.certificates.reserve(reservation(serial, b"large"))
        rec = store.certificates.get(serial)
        assert rec is not None and rec.serial == serial
    assert store.certificates.get(2**159) is None
    assert store.certificates.get(-1) is None
    for bad in (0, -5, 2**159):
        with pytest.raises(ValueError):
            store.certificates.reserve(reservation(bad, b"bad"))


def test_list_and_count(store: Store) -> None:
    before = store.certificates.count_by_status()
    a, b = next(_serials), next(_serials)
    tbs, der = certificate(a)
    store.certificates.reserve(reservation(a, tbs))
    store.certificates.mark_issued(a, der)
    store.certificates.reserve(reservation(b, b"b"))
    after = store.certificates.count_by_status()
    assert after["issued"] == before["issued"] + 1
    assert after["reserved"] == before["reserved"] + 1
    assert after["abandoned"] == before["abandoned"]

    issued = store.certificates.list(status="issued", limit=10_000)
    assert a in {r.serial for r in issued} and all(r.status == "issued" for r in issued)
    newest = store.certificates.list(limit=2)
    assert [r.serial for r in newest] == [b, a]
    with pytest.raises(ValueError):
        store.certificates.list(status="revoked")
    with pytest.raises(ValueError):
        store.certificates.list(limit=0)


# -- one-time tokens -------------------------------------------------------------------------


def test_token_is_single_use(store: Store) -> None:
    jti = secrets.token_urlsafe(16)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    assert store.tokens.use(jti, "admin", expires) is True
    assert store.tokens.use(jti, "admin", expires) is False
    assert store.tokens.use(jti, "other-provisioner", expires) is False
    # ids compare byte for byte (no case folding on MySQL)
    assert store.tokens.use(jti.upper() + "A", "admin", expires) is True
    assert store.tokens.use(jti.lower() + "a", "admin", expires) is True
    assert store.tokens.use("x" * 256, "admin", expires) is True  # the longest id fits
    with pytest.raises(ValueError):
        store.tokens.use("x" * 257, "admin", expires)


def test_reserve_burns_its_token_in_the_same_transaction(store: Store) -> None:
    jti = secrets.token_urlsafe(16)
    token = OneTimeToken(jti, "admin", datetime.now(UTC) + timedelta(minutes=5))
    first = next(_serials)
    store.certificates.reserve(reservation(first, certificate(first)[0]), token)
    assert store.certificates.get(first) is not None
    assert store.tokens.use(jti, "admin", token.expires_at) is False  # burned with the reservation
    second = next(_serials)
    with pytest.raises(TokenReplayed):
        store.certificates.reserve(reservation(second, certificate(second)[0]), token)
    assert store.certificates.get(second) is None  # a replay records nothing
    # A serial collision rolls the token back too: the token stays usable.
    fresh = OneTimeToken(secrets.token_urlsafe(16), "admin", token.expires_at)
    with pytest.raises(SerialCollision):
        store.certificates.reserve(reservation(first, certificate(first)[0]), fresh)
    assert store.tokens.use(fresh.jti, "admin", fresh.expires_at) is True


def test_purge_expired_tokens(server: Server) -> None:
    with Store(server.new_url()) as store:
        store.migrate()
        now = datetime.now(UTC)
        store.tokens.use("gone-1", "admin", now - timedelta(minutes=2))
        store.tokens.use("gone-2", "admin", now - timedelta(seconds=1))
        store.tokens.use("kept", "admin", now + timedelta(minutes=5))
        assert store.tokens.purge_expired(now) == 2
        assert store.tokens.purge_expired(now) == 0
        assert store.tokens.use("kept", "admin", now + timedelta(minutes=5)) is False


def test_token_race_between_threads(store: Store) -> None:
    jti = secrets.token_urlsafe(16)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    barrier = threading.Barrier(8)
    results: list[bool | BaseException] = []

    def claim() -> None:
        barrier.wait(timeout=10)
        try:
            results.append(store.tokens.use(jti, "admin", expires))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(results, key=repr) == [False] * 7 + [True]


def _claim_in_child(store: Store, jti: str, expires: datetime, barrier: object) -> None:
    barrier.wait(timeout=10)  # type: ignore[attr-defined]
    try:
        won = store.tokens.use(jti, "admin", expires)
    except BaseException as exc:  # noqa: BLE001
        print(f"child failed: {exc!r}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0 if won else 1)


@pytest.mark.skipif(sys.platform != "linux", reason="forks like gunicorn's workers")
def test_token_race_between_forked_workers(store: Store) -> None:
    """Processes forked from a Store that already has pooled connections, as gunicorn does."""
    store.ping()  # the parent holds a live pooled connection across the fork
    ctx = multiprocessing.get_context("fork")
    jti = secrets.token_urlsafe(16)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    barrier = ctx.Barrier(8)
    procs = [ctx.Process(target=_claim_in_child, args=(store, jti, expires, barrier)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=30)
    assert sorted(p.exitcode if p.exitcode is not None else -1 for p in procs) == [0] + [1] * 7
    store.ping()  # the parent's pool survived its children
    assert store.tokens.use(jti, "admin", expires) is False


# -- failures --------------------------------------------------------------------------------


def test_a_lock_wait_ends_in_store_unavailable(db_url: str) -> None:
    """A writer blocked by another transaction gives up after the timeout instead of hanging."""
    jti = secrets.token_urlsafe(16)
    expires = datetime.now(UTC) + timedelta(minutes=5)
    holder = sa.create_engine(db_url, poolclass=NullPool)
    with Store(db_url, timeout=1) as store, holder.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.begin()
        conn.execute(
            sa.text(
                "INSERT INTO used_tokens (jti, provisioner, expires_at, used_at) "
                "VALUES (:jti, 'admin', '2030-01-01 00:00:00', '2030-01-01 00:00:00')"
            ),
            {"jti": jti},
        )
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="database unavailable while recording a one-time token"):
            store.tokens.use(jti, "admin", expires)
        assert time.monotonic() - started < 4
        conn.rollback()
    holder.dispose()


# -- group commit (store/group_commit.py) ------------------------------------------------------


def test_concurrent_issuances_share_commits_and_keep_their_own_outcomes(store: Store) -> None:
    """16 threads reserve and mark issued at once, two of them with a replayed token: each gets its own answer,
    every issued row is there with its DER, and fewer commits than writes were made."""
    commits = 0
    original = store._group._write

    def counting(what: str) -> Any:
        nonlocal commits
        commits += 1
        return original(what)

    store._group._write = counting  # type: ignore[method-assign]
    used = OneTimeToken(secrets.token_urlsafe(16), "admin", datetime.now(UTC) + timedelta(minutes=5))
    store.certificates.reserve(reservation(910_000, certificate(910_000)[0]), used)
    commits = 0
    outcomes: dict[int, str] = {}
    ders: dict[int, bytes] = {}
    start = threading.Barrier(16)

    def issue(i: int) -> None:
        serial = 910_001 + i
        tbs, der = certificate(serial)
        ders[i] = der
        token = used if i in (3, 11) else OneTimeToken(secrets.token_urlsafe(16), "admin", used.expires_at)
        start.wait()
        try:
            store.certificates.reserve(reservation(serial, tbs), token)
            store.certificates.mark_issued(serial, der)
            outcomes[i] = "issued"
        except TokenReplayed:
            outcomes[i] = "replayed"

    try:
        threads = [threading.Thread(target=issue, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        store._group._write = original  # type: ignore[method-assign]
    assert outcomes == {i: "replayed" if i in (3, 11) else "issued" for i in range(16)}
    for i in range(16):
        row = store.certificates.get(910_001 + i)
        if i in (3, 11):
            assert row is None
        else:
            assert row is not None and row.status == CertificateStatus.ISSUED
            assert row.der == ders[i]
    writes = 16 + 14  # 16 reservations (two refused), 14 issued marks
    assert 0 < commits < writes, f"{commits} commits for {writes} writes: nothing was shared"
