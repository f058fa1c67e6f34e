"""Revocations and leases in the store, on every database (fixtures from test_store.py)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from appliance.store import CertificateNotFound, InvalidTransition, RevocationReason, Store, StoreError
from appliance.store.schema import ocsp_responses
from tests.integration import test_store as base
from tests.integration import test_store_intermediates as intermediates
from tests.integration.test_store import certificate, reservation
from tests.integration.test_store_intermediates import added_and_installed, issued

server = base.server
T = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


fresh = intermediates.fresh  # a migrated database per test




def test_revoke_records_once_bumps_the_revision_and_drops_the_cached_ocsp_response(fresh: Store) -> None:
    m = added_and_installed(fresh)
    serial = issued(fresh, m.id)
    with fresh._write("test") as conn:
        conn.execute(ocsp_responses.insert(), {"serial": str(serial), "issuer": m.id, "status": "good",
                                               "this_update": T, "next_update": T + timedelta(hours=1),
                                               "der": b"\x30\x00"})
    assert fresh.revocations.get(serial) is None and fresh.revocations.revision(m.id) == 0
    first = fresh.revocations.revoke(serial, reason_code=1, reason="laptop stolen", source="admin", at=T)
    assert first.created and first.record.reason_code is RevocationReason.KEY_COMPROMISE
    assert first.record.issuer == m.id and first.record.revoked_at == T
    assert fresh.revocations.revision(m.id) == 1
    with fresh._read("test") as conn:
        assert conn.execute(sa.select(ocsp_responses.c.serial)).first() is None
    again = fresh.revocations.revoke(serial, reason_code=4, source="other", at=T + timedelta(hours=1))
    assert not again.created and again.record == first.record  # the first revocation stands
    assert fresh.revocations.revision(m.id) == 1
    assert fresh.revocations.get(serial) == first.record


def test_revoke_refuses_unknown_unissued_and_bad_reasons(fresh: Store) -> None:
    m = added_and_installed(fresh)
    with pytest.raises(CertificateNotFound):
        fresh.revocations.revoke(2**100 + 3, source="admin")
    serial = 2**100 + 5
    tbs, _ = certificate(serial)
    fresh.certificates.reserve(reservation(serial, tbs, issuer=m.id))
    with pytest.raises(InvalidTransition, match="reserved, not issued"):
        fresh.revocations.revoke(serial, source="admin")
    done = issued(fresh, m.id)
    for bad in (7, 8, 11, -1):
        with pytest.raises(StoreError, match="not an RFC 5280 reason code"):
            fresh.revocations.revoke(done, reason_code=bad, source="admin")
    assert fresh.revocations.get(done) is None


def test_concurrent_revocations_of_one_certificate_leave_one_row(fresh: Store) -> None:
    m = added_and_installed(fresh)
    serial = issued(fresh, m.id)
    results: list[bool] = []
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            results.append(fresh.revocations.revoke(serial, reason_code=i % 5, source=f"t{i}").created)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results.count(True) == 1
    assert fresh.revocations.revision(m.id) == 1


def test_stream_gives_one_issuers_revocations_and_can_leave_out_expired_ones(fresh: Store) -> None:
    a, b = added_and_installed(fresh, "a"), added_and_installed(fresh, "b")
    mine = {issued(fresh, a.id) for _ in range(25)}
    issued(fresh, b.id)
    for serial in mine:
        fresh.revocations.revoke(serial, source="admin")
    fresh.revocations.revoke(issued(fresh, b.id), source="admin")  # another issuer's revocation is not in a's CRL
    got = {r.serial for r in fresh.revocations.stream(a.id)}
    assert got == mine
    # The test certificates expire one day after T0 (test_store.certificate): all of them are before this.
    assert list(fresh.revocations.stream(a.id, expired_before=datetime(2100, 1, 1, tzinfo=UTC))) == []


def test_a_lease_has_one_holder_until_it_expires_or_is_released(fresh: Store) -> None:
    ttl = timedelta(seconds=30)
    assert fresh.leases.take("crl:abc", "replica-1", ttl, T)
    assert not fresh.leases.take("crl:abc", "replica-2", ttl, T + timedelta(seconds=10))
    assert fresh.leases.take("crl:abc", "replica-1", ttl, T + timedelta(seconds=20))  # renewed
    assert fresh.leases.holder("crl:abc", T + timedelta(seconds=45)) == "replica-1"
    assert fresh.leases.take("crl:abc", "replica-2", ttl, T + timedelta(seconds=51))  # expired: taken over
    fresh.leases.release("crl:abc", "replica-1")  # not the holder: nothing happens
    assert fresh.leases.holder("crl:abc", T + timedelta(seconds=52)) == "replica-2"
    fresh.leases.release("crl:abc", "replica-2")
    assert fresh.leases.holder("crl:abc", T + timedelta(seconds=52)) is None
    assert fresh.leases.take("crl:abc", "replica-3", ttl, T + timedelta(seconds=53))


def test_racing_replicas_get_the_lease_once(fresh: Store) -> None:
    won: list[str] = []
    errors: list[BaseException] = []

    def go(i: int) -> None:
        try:
            if fresh.leases.take("ocsp-refresh", f"replica-{i}", timedelta(minutes=1), T):
                won.append(f"replica-{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(won) == 1
