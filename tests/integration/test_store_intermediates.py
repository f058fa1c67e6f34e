"""Intermediates in the store against real SQLite, PostgreSQL and MariaDB databases.

The backends, their skips and the module's shared database come from test_store.py's fixtures.
Tests that watch which intermediate is active use a database of their own, since the active one
is a property of the whole database.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from sqlalchemy.pool import NullPool

from appliance.store import (
    IntermediateExists,
    IntermediateNotFound,
    IntermediateRecord,
    IntermediateState,
    InvalidTransition,
    Store,
    StoreError,
    intermediate_state,
)
from appliance.store.migrate import alembic_config, head_revision
from appliance.store.schema import metadata
from tests.integration import test_store as base
from tests.integration.test_store import Server, certificate, reservation

# The backends (skipped with a reason when a server is not running) and one migrated database
# per backend for this module.
server = base.server
db_url = base.db_url
store = base.store

ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT_NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hsmca test Root CA")])
HOUR = timedelta(hours=1)


@pytest.fixture
def fresh(server: Server) -> Iterator[Store]:
    """A migrated database of its own: which intermediate is active is database-wide."""
    with Store(server.new_url()) as s:
        s.migrate()
        yield s


# -- helpers ---------------------------------------------------------------------------------


def issued(s: Store, issuer: str, serial: int | None = None) -> int:
    """A certificate of `issuer`, reserved and issued (random serial unless given)."""
    serial = serial or secrets.randbits(120) + 2**120
    tbs, der = certificate(serial)
    s.certificates.reserve(reservation(serial, tbs, issuer=issuer))
    s.certificates.mark_issued(serial, der)
    return serial



@dataclass(frozen=True)
class Made:
    """A new intermediate as `hsmca intermediate add` would record it, and its signed certificate."""

    rec: IntermediateRecord
    cert: x509.Certificate

    @property
    def id(self) -> str:
        return self.rec.id

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(Encoding.DER)


def make(label: str = "intermediate", *, ca: bool = True, created_at: datetime | None = None) -> Made:
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    name = f"{label}-{secrets.token_hex(3)}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hsmca test {name}")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ROOT_NAME)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - HOUR)
        .not_valid_after(now + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(ski, critical=False)
        .sign(ROOT_KEY, hashes.SHA256())
    )
    rec = IntermediateRecord(
        id=ski.digest.hex(),
        name=name,
        key_uri=f"pkcs11:token=hsmca;object={name}?pin-source=file:/etc/hsmca/pin",
        public_key=public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo),
        csr=csr.public_bytes(Encoding.DER),
        certificate=None,
        subject=subject.rfc4514_string(),
        not_before=None,
        not_after=None,
        activate_at=None,
        retired_at=None,
        created_at=created_at or now,
        installed_at=None,
    )
    return Made(rec, cert)


def install(
    s: Store, m: Made, activate_at: datetime | None = None, der: bytes | None = None
) -> IntermediateRecord:
    return s.intermediates.install(
        m.id, der if der is not None else m.der,
        not_before=m.cert.not_valid_before_utc, not_after=m.cert.not_valid_after_utc,
        subject=m.cert.subject.rfc4514_string(), activate_at=activate_at,
    )


def added_and_installed(s: Store, label: str = "intermediate") -> Made:
    m = make(label)
    s.intermediates.add(m.rec)
    install(s, m)
    return m


def state(s: Store, m: Made, now: datetime) -> IntermediateState:
    """The state as `intermediate list` derives it: the record plus the active query, both at `now`."""
    rec = s.intermediates.get(m.id)
    assert rec is not None
    active = s.intermediates.active(now)
    return intermediate_state(rec, active.id if active else None, now)


def active_id(s: Store, now: datetime | None = None) -> str | None:
    rec = s.intermediates.active(now)
    return None if rec is None else rec.id


# -- life cycle ------------------------------------------------------------------------------


def test_add_install_schedule_and_a_scheduled_switch_with_no_writer(fresh: Store) -> None:
    first = make("intermediate-2026")
    fresh.intermediates.add(first.rec)
    assert fresh.intermediates.get(first.id) == first.rec
    now = datetime.now(UTC)
    assert state(fresh, first, now) == IntermediateState.AWAITING_CERTIFICATE
    assert fresh.intermediates.active() is None

    rec = install(fresh, first)
    assert rec.certificate == first.der and rec.subject == first.cert.subject.rfc4514_string()
    assert rec.not_before == first.cert.not_valid_before_utc
    assert rec.not_after == first.cert.not_valid_after_utc
    assert rec.installed_at is not None and rec.activate_at is None
    assert rec.csr == first.rec.csr and rec.key_uri == first.rec.key_uri
    assert state(fresh, first, datetime.now(UTC)) == IntermediateState.PENDING
    assert fresh.intermediates.active() is None

    # Another replica: its own engine and pool, opened before the switch and never reopened.
    with Store(fresh._url) as replica:
        assert replica.intermediates.active() is None

        before = datetime.now(UTC)
        rec = fresh.intermediates.schedule_activation(first.id, before)
        assert rec.activate_at is not None and rec.activate_at >= before
        assert active_id(fresh) == active_id(replica) == first.id
        assert state(fresh, first, datetime.now(UTC)) == IntermediateState.ACTIVE

        second = make("intermediate-2027")
        fresh.intermediates.add(second.rec)
        switch = datetime.now(UTC) + HOUR
        rec = install(fresh, second, activate_at=switch)
        assert rec.activate_at == switch
        now = datetime.now(UTC)
        assert active_id(fresh, now) == active_id(replica, now) == first.id
        assert state(fresh, second, now) == IntermediateState.PENDING
        assert state(fresh, first, now) == IntermediateState.ACTIVE

        # At the switch time the answer changes with nobody writing anything.
        rows = fresh.intermediates.list()
        later = switch + timedelta(microseconds=1)
        assert active_id(fresh, switch - timedelta(microseconds=1)) == first.id
        assert active_id(fresh, switch) == active_id(replica, later) == second.id
        assert state(fresh, second, later) == IntermediateState.ACTIVE
        assert state(fresh, first, later) == IntermediateState.RETIRED  # superseded
        assert fresh.intermediates.list() == rows
        assert [r.id for r in rows] == [first.id, second.id]


def test_schedule_needs_an_installed_certificate(store: Store) -> None:
    m = make()
    store.intermediates.add(m.rec)
    with pytest.raises(InvalidTransition, match="has no certificate yet; install its certificate first"):
        store.intermediates.schedule_activation(m.id, datetime.now(UTC))
    assert store.intermediates.get(m.id) == m.rec
    with pytest.raises(IntermediateNotFound):
        store.intermediates.schedule_activation("ab" * 20, datetime.now(UTC))
    with pytest.raises(IntermediateNotFound):
        store.intermediates.retire("ab" * 20, datetime.now(UTC))
    with pytest.raises(ValueError, match="timezone-aware"):
        store.intermediates.schedule_activation(m.id, datetime(2030, 1, 1))


def test_a_past_activation_time_is_recorded_as_now(fresh: Store) -> None:
    older = added_and_installed(fresh)
    fresh.intermediates.schedule_activation(older.id, datetime.now(UTC))
    newer = added_and_installed(fresh)
    before = datetime.now(UTC)
    rec = fresh.intermediates.schedule_activation(newer.id, before - timedelta(days=30))
    assert rec.activate_at is not None and rec.activate_at >= before
    assert active_id(fresh) == newer.id  # a back-dated activation does not lose to the older one


def test_retire_is_final_and_a_future_retirement_is_not_yet(fresh: Store) -> None:
    m = added_and_installed(fresh)
    fresh.intermediates.schedule_activation(m.id, datetime.now(UTC))
    end = datetime.now(UTC) + HOUR
    rec = fresh.intermediates.retire(m.id, end)
    assert rec.retired_at == end
    assert active_id(fresh) == m.id
    assert active_id(fresh, end - timedelta(microseconds=1)) == m.id
    assert active_id(fresh, end) is None
    assert state(fresh, m, end) == IntermediateState.RETIRED
    fresh.intermediates.schedule_activation(m.id, datetime.now(UTC))  # retirement still ahead: allowed

    now = datetime.now(UTC)
    rec = fresh.intermediates.retire(m.id, now)
    assert rec.retired_at == now
    assert fresh.intermediates.active() is None
    assert state(fresh, m, datetime.now(UTC)) == IntermediateState.RETIRED
    with pytest.raises(InvalidTransition, match="retired intermediates are not re-activated"):
        fresh.intermediates.schedule_activation(m.id, datetime.now(UTC) + HOUR)
    with pytest.raises(InvalidTransition, match="retired intermediates are not re-activated"):
        install(fresh, m, activate_at=datetime.now(UTC))
    assert fresh.intermediates.retire(m.id, now + HOUR).retired_at == now  # final: time kept
    assert install(fresh, m) == fresh.intermediates.get(m.id)  # same DER, no schedule: a no-op


def test_retiring_the_newest_falls_back_to_the_one_it_superseded(fresh: Store) -> None:
    """Only an explicit retirement is final; a superseded intermediate is still a valid one."""
    old, new = added_and_installed(fresh, "old"), added_and_installed(fresh, "new")
    fresh.intermediates.schedule_activation(old.id, datetime.now(UTC))
    fresh.intermediates.schedule_activation(new.id, datetime.now(UTC))
    assert active_id(fresh) == new.id
    assert state(fresh, old, datetime.now(UTC)) == IntermediateState.RETIRED
    fresh.intermediates.retire(new.id, datetime.now(UTC))
    assert active_id(fresh) == old.id


def test_equal_activation_times_are_decided_by_id(fresh: Store) -> None:
    at = datetime.now(UTC) + HOUR
    made = [make("tie") for _ in range(3)]
    for m in made:
        # Recorded with its certificate at once, as an intermediate made before the database knew any.
        fresh.intermediates.add(replace(
            m.rec, certificate=m.der, not_before=m.cert.not_valid_before_utc,
            not_after=m.cert.not_valid_after_utc, activate_at=at,
        ))
    assert active_id(fresh, at) == max(m.id for m in made)
    rec = fresh.intermediates.get(made[0].id)
    assert rec is not None and rec.installed_at is not None and rec.activate_at == at


# -- refusals --------------------------------------------------------------------------------


def test_duplicate_id_or_name_is_refused(store: Store) -> None:
    m = make()
    store.intermediates.add(m.rec)
    with pytest.raises(IntermediateExists, match=f"id {m.id} is already recorded, named '{m.rec.name}'"):
        store.intermediates.add(replace(m.rec, name="another-name-" + secrets.token_hex(3)))
    other = make()
    with pytest.raises(IntermediateExists, match=f"named '{m.rec.name}' is already recorded, with id {m.id}"):
        store.intermediates.add(replace(other.rec, name=m.rec.name))
    assert store.intermediates.get(other.id) is None
    assert store.intermediates.get(m.id) == m.rec


def test_a_pin_in_the_key_uri_is_refused(store: Store) -> None:
    for uri in ("pkcs11:token=hsmca;object=k?pin-value=1234",
                "pkcs11:token=hsmca;object=k?PIN-VALUE=1234",
                "pkcs11:token=hsmca;object=k?pin%2Dvalue=1234"):
        m = make()
        with pytest.raises(ValueError, match="must not carry a PIN"):
            store.intermediates.add(replace(m.rec, key_uri=uri))
        assert store.intermediates.get(m.id) is None


def test_bad_records_are_caller_errors(store: Store) -> None:
    m = make()
    bad: list[tuple[dict[str, object], type[Exception]]] = [
        ({"id": m.id.upper()}, ValueError),
        ({"id": "x" * 129}, ValueError),
        ({"name": ""}, ValueError),
        ({"name": " padded"}, ValueError),
        ({"name": "n" * 256}, ValueError),
        ({"public_key": b"not a key"}, ValueError),
        ({"public_key": "text"}, TypeError),
        ({"created_at": datetime(2030, 1, 1)}, ValueError),
        ({"activate_at": datetime.now(UTC)}, ValueError),  # no certificate to activate
        ({"certificate": m.der}, ValueError),  # a certificate without its validity
    ]
    for change, error in bad:
        with pytest.raises(error):
            store.intermediates.add(replace(m.rec, **change))  # type: ignore[arg-type]
    assert store.intermediates.get(m.id) is None


def test_install_refuses_other_certificates(store: Store) -> None:
    m = make()
    store.intermediates.add(m.rec)
    with pytest.raises(ValueError, match="for another key"):
        install(store, m, der=make().der)
    with pytest.raises(ValueError, match="not a CA certificate"):
        leaf = make(ca=False)
        store.intermediates.add(leaf.rec)
        install(store, leaf)
    with pytest.raises(ValueError, match="not valid DER"):
        install(store, m, der=b"\x30\x03abc")
    with pytest.raises(IntermediateNotFound):
        store.intermediates.install("cd" * 20, m.der, not_before=m.cert.not_valid_before_utc,
                                    not_after=m.cert.not_valid_after_utc, subject="CN=x", activate_at=None)
    assert store.intermediates.get(m.id) == m.rec  # nothing changed

    first = install(store, m)
    assert install(store, m) == first  # the same certificate again: no change
    at = datetime.now(UTC) + HOUR
    assert install(store, m, activate_at=at).activate_at == at  # ... except a schedule, if given
    reissued = m.cert  # same key, another certificate (e.g. re-signed by the root)
    other_der = (
        x509.CertificateBuilder()
        .subject_name(reissued.subject).issuer_name(ROOT_NAME).public_key(reissued.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(reissued.not_valid_before_utc).not_valid_after(reissued.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ROOT_KEY, hashes.SHA256())
        .public_bytes(Encoding.DER)
    )
    with pytest.raises(InvalidTransition, match="already has another certificate installed"):
        install(store, m, der=other_der)


def test_install_records_the_given_time(store: Store) -> None:
    m = make()
    store.intermediates.add(m.rec)
    when = datetime(2030, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    rec = store.intermediates.install(
        m.id, m.der, not_before=m.cert.not_valid_before_utc, not_after=m.cert.not_valid_after_utc,
        subject="CN=given", activate_at=None, now=when,
    )
    assert rec.installed_at == when and rec.subject == "CN=given"


# -- lookups ---------------------------------------------------------------------------------


def test_find_by_name_id_or_prefix(store: Store) -> None:
    m = make("find-me")
    store.intermediates.add(m.rec)
    assert store.intermediates.find(m.rec.name) == m.rec
    assert store.intermediates.find(m.id) == m.rec
    assert store.intermediates.find(m.id[:8]) == m.rec
    assert store.intermediates.find(":".join(m.id[i:i + 2] for i in range(0, 20, 2)).upper()) == m.rec
    with pytest.raises(IntermediateNotFound, match="at least 8 hex digits"):
        store.intermediates.find(m.id[:7])
    with pytest.raises(IntermediateNotFound, match="no intermediate is named 'nobody'"):
        store.intermediates.find("nobody")
    assert store.intermediates.get(m.id[:8]) is None  # get takes exact ids only
    assert store.intermediates.get("") is None


def test_an_ambiguous_prefix_names_the_candidates(store: Store) -> None:
    stem = secrets.token_hex(6)
    a, b = make("twin"), make("twin")
    store.intermediates.add(replace(a.rec, id=stem + "01"))
    store.intermediates.add(replace(b.rec, id=stem + "02"))
    with pytest.raises(ValueError, match=f"matches several intermediates: {stem}01 .*{stem}02"):
        store.intermediates.find(stem)
    assert store.intermediates.find(stem + "02").name == b.rec.name


def test_list_is_ordered_by_creation(fresh: Store) -> None:
    t = datetime(2030, 1, 1, tzinfo=UTC)
    made = [make("list", created_at=t + timedelta(days=d)) for d in (2, 0, 1)]
    for m in made:
        fresh.intermediates.add(m.rec)
    assert [r.created_at for r in fresh.intermediates.list()] == [t, t + timedelta(days=1), t + timedelta(days=2)]


def test_count_certificates_by_issuer(fresh: Store) -> None:
    a, b = make(), make()
    serials = iter(range(2**126 + 1, 2**126 + 100))

    def record(issuer: str, outcome: str) -> None:
        serial = next(serials)
        tbs, der = certificate(serial)
        fresh.certificates.reserve(reservation(serial, tbs, issuer=issuer))
        if outcome == "issued":
            fresh.certificates.mark_issued(serial, der)
        elif outcome == "abandoned":
            fresh.certificates.mark_abandoned(serial, "HSM refused")

    assert fresh.certificates.count_issued_by_issuer() == {}
    for issuer, outcome in [(a.id, "issued"), (a.id, "issued"), (a.id, "reserved"), (a.id, "abandoned"),
                            (b.id, "issued"), (b.id, "abandoned")]:
        record(issuer, outcome)
    assert fresh.certificates.count_issued_by_issuer() == {a.id: 2, b.id: 1}


# -- pure derivation -------------------------------------------------------------------------


def test_intermediate_state_rules() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    rec = replace(make().rec, certificate=b"\x30\x00")
    assert intermediate_state(replace(rec, certificate=None), rec.id, now) == "awaiting-certificate"
    assert intermediate_state(rec, None, now) == IntermediateState.PENDING
    assert intermediate_state(replace(rec, activate_at=now + HOUR), None, now) == IntermediateState.PENDING
    assert intermediate_state(replace(rec, activate_at=now), rec.id, now) == IntermediateState.ACTIVE
    assert intermediate_state(replace(rec, activate_at=now), "other", now) == IntermediateState.RETIRED
    assert intermediate_state(replace(rec, retired_at=now + HOUR), rec.id, now) == IntermediateState.ACTIVE
    assert intermediate_state(replace(rec, retired_at=now), rec.id, now) == IntermediateState.RETIRED
    with pytest.raises(ValueError):
        intermediate_state(rec, None, datetime(2030, 1, 1))


# -- schema ----------------------------------------------------------------------------------


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))
    finally:
        engine.dispose()


def _alembic(url: str, action: str, revision: str) -> None:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            getattr(command, action)(alembic_config(conn), revision)
    finally:
        engine.dispose()


def test_migrate_upgrades_a_database_at_0001(server: Server) -> None:
    url = server.new_url()
    _alembic(url, "upgrade", "0001")
    with Store(url) as s:
        assert s.schema_revision() == "0001"
        with pytest.raises(StoreError, match=f"schema is at 0001, expected {head_revision()}"):
            s.check_schema()
        serial = 2**125 + 7
        tbs, der = certificate(serial)
        s.certificates.reserve(reservation(serial, tbs))
        s.certificates.mark_issued(serial, der)

        s.migrate()
        assert s.schema_revision() == head_revision()
        s.check_schema()
        assert _diff(url) == []
        issued = s.certificates.get(serial)
        assert issued is not None and issued.der == der  # existing rows survive
        m = added_and_installed(s)
        s.intermediates.schedule_activation(m.id, datetime.now(UTC))
        assert active_id(s) == m.id

    # And back: the downgrades drop exactly what they made, and the upgrade is repeatable.
    _alembic(url, "downgrade", "0001")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        assert "intermediates" not in sa.inspect(engine).get_table_names()
        assert "revocations" not in sa.inspect(engine).get_table_names()
    finally:
        engine.dispose()
    with Store(url) as s:
        s.migrate()
        s.check_schema()
        assert s.intermediates.list() == []
    assert _diff(url) == []


def test_migrate_upgrades_a_database_at_0002_to_the_lifecycle_tables(server: Server) -> None:
    url = server.new_url()
    _alembic(url, "upgrade", "0002")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:  # a row written by 0002's code (today's code reads the new column, so plain SQL here)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO intermediates (id, name, key_uri, public_key, subject, created_at) "
                                 "VALUES ('ab12', 'old', 'pkcs11:object=x', :pk, 'CN=old', :now)"),
                         {"pk": b"\x30\x00", "now": datetime(2026, 1, 1)})
    finally:
        engine.dispose()
    with Store(url) as s:
        s.migrate()
        assert s.schema_revision() == head_revision()
        s.check_schema()
        assert _diff(url) == []
        old = s.intermediates.get("ab12")  # existing rows survive the new column
        assert old is not None and old.name == "old"
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        names = set(sa.inspect(engine).get_table_names())
        assert {"revocations", "crls", "ocsp_responses", "leases"} <= names
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT revocation_revision FROM intermediates")).scalar_one() == 0
    finally:
        engine.dispose()
    _alembic(url, "downgrade", "0002")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        assert not {"revocations", "crls", "ocsp_responses", "leases"} & set(sa.inspect(engine).get_table_names())
        assert "revocation_revision" not in {c["name"] for c in sa.inspect(engine).get_columns("intermediates")}
    finally:
        engine.dispose()
