"""Pre-signed OCSP responses in the store, on every database (fixtures from test_store.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.store import Store
from tests.integration import test_store as base
from tests.integration import test_store_intermediates as intermediates
from tests.integration.test_store import T0, certificate, reservation
from tests.integration.test_store_intermediates import added_and_installed, issued

server = base.server
T = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # the test certificates are valid until T0 + 1 day (2030)
DAY = timedelta(days=1)


fresh = intermediates.fresh  # a migrated database per test




def test_put_read_replace_and_the_revocation_join(fresh: Store) -> None:
    m = added_and_installed(fresh)
    serial = issued(fresh, m.id)
    assert fresh.ocsp.cached(serial) is None
    assert fresh.ocsp.put(serial, m.id, "good", T, T + DAY, b"first")
    hit = fresh.ocsp.cached(serial)
    assert hit is not None and hit.der == b"first" and hit.status == "good" and not hit.revoked
    assert hit.this_update == T and hit.next_update == T + DAY and hit.issuer == m.id
    assert fresh.ocsp.put(serial, m.id, "good", T + DAY, T + 2 * DAY, b"second")  # replaced
    hit = fresh.ocsp.cached(serial)
    assert hit is not None and hit.der == b"second"

    fresh.revocations.revoke(serial, reason_code=1, source="test", at=T)
    assert fresh.ocsp.cached(serial) is None  # the revocation dropped it
    # A "good" response signed before the revocation and stored after it is refused...
    assert not fresh.ocsp.put(serial, m.id, "good", T, T + DAY, b"late good")
    assert fresh.ocsp.cached(serial) is None
    assert fresh.ocsp.put(serial, m.id, "revoked", T, T + DAY, b"revoked")
    hit = fresh.ocsp.cached(serial)
    assert hit is not None and hit.status == "revoked" and hit.revoked

    status = fresh.ocsp.status(serial)
    assert status is not None and status.issued and status.issuer == m.id and status.revoked_at == T
    assert status.reason_code == 1
    with pytest.raises(ValueError):
        fresh.ocsp.put(serial, m.id, "unknown", T, T + DAY, b"x")


def test_status_of_reserved_and_unknown_serials(fresh: Store) -> None:
    m = added_and_installed(fresh)
    serial = 2**100 + 11
    tbs, _ = certificate(serial)
    fresh.certificates.reserve(reservation(serial, tbs, issuer=m.id))
    status = fresh.ocsp.status(serial)
    assert status is not None and not status.issued and status.revoked_at is None
    assert fresh.ocsp.status(2**100 + 12) is None


def test_due_missing_and_purge(fresh: Store) -> None:
    m = added_and_installed(fresh)
    a, b, c = issued(fresh, m.id), issued(fresh, m.id), issued(fresh, m.id)
    assert set(fresh.ocsp.missing(10, now=T)) == {a, b, c}
    assert fresh.ocsp.missing(2, now=T).__len__() == 2
    fresh.ocsp.put(a, m.id, "good", T, T + timedelta(hours=2), b"a")
    fresh.ocsp.put(b, m.id, "good", T, T + DAY, b"b")
    assert fresh.ocsp.missing(10, now=T) == [c]
    # Only certificates reserved since a moment (the index), and none once expired.
    assert fresh.ocsp.missing(10, now=T, reserved_since=datetime.now(UTC) + DAY) == []
    assert fresh.ocsp.missing(10, now=T0 + 2 * DAY) == []
    # Revoked certificates whose row the revocation dropped are listed again.
    fresh.revocations.revoke(a, source="test", at=T)
    assert set(fresh.ocsp.missing(10, now=T)) == {a, c}
    assert fresh.ocsp.missing(10, now=T, reserved_since=datetime.now(UTC) + DAY) == [a]

    fresh.ocsp.put(a, m.id, "revoked", T, T + timedelta(hours=2), b"a")
    assert fresh.ocsp.due(T + timedelta(hours=12), 10, now=T) == [a]  # soonest nextUpdate first
    assert fresh.ocsp.due(T + 2 * DAY, 10, now=T) == [a, b]
    assert fresh.ocsp.due(T + 2 * DAY, 1, now=T) == [a]
    assert fresh.ocsp.due(T0 + 3 * DAY, 10, now=T0 + 2 * DAY) == []  # expired: not re-signed

    assert fresh.ocsp.purge_expired(T) == 0
    assert fresh.ocsp.purge_expired(T0 + 2 * DAY) == 2
    assert fresh.ocsp.cached(b) is None
