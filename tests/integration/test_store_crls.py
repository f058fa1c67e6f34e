"""Stored CRLs on every database (fixtures from test_store.py): numbers only grow, old ones are pruned."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta, timezone

import pytest

from appliance.store import CRLInfo, CRLNumberTaken, CRLRecord, Store
from appliance.store.crls import KEEP
from tests.integration import test_store as base
from tests.integration import test_store_intermediates as intermediates

server = base.server
T = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


fresh = intermediates.fresh  # a migrated database per test


def crl(issuer: str, number: int, revision: int = 0, der: bytes = b"\x30\x03\x02\x01\x00") -> CRLRecord:
    at = T + timedelta(minutes=number)
    return CRLRecord(CRLInfo(issuer, number, at, at + timedelta(hours=24), revision, 7), der)


def test_numbers_start_at_one_and_the_latest_is_the_highest(fresh: Store) -> None:
    assert fresh.crls.next_number("aa") == 1 and fresh.crls.latest_info("aa") is None
    big = bytes(3 * 1024 * 1024)  # a CRL of tens of thousands of entries: larger than a MySQL BLOB
    fresh.crls.add(crl("aa", 1, revision=0))
    fresh.crls.add(crl("aa", 2, revision=5, der=big))
    fresh.crls.add(crl("bb", 1))
    latest = fresh.crls.latest_info("aa")
    assert latest == crl("aa", 2, revision=5).info
    assert latest.this_update.tzinfo is not None
    got = fresh.crls.get("aa", 2)
    assert got is not None and got.der == big
    assert fresh.crls.next_number("aa") == 3 and fresh.crls.next_number("bb") == 2


def test_a_number_is_never_stored_twice_nor_below_the_highest(fresh: Store) -> None:
    fresh.crls.add(crl("aa", 1))
    fresh.crls.add(crl("aa", 2))
    with pytest.raises(CRLNumberTaken):
        fresh.crls.add(crl("aa", 2))
    with pytest.raises(CRLNumberTaken):
        fresh.crls.add(crl("aa", 1))
    assert fresh.crls.latest_info("aa").number == 2  # type: ignore[union-attr]


def test_old_crls_are_pruned_and_numbers_keep_growing(fresh: Store) -> None:
    for n in range(1, 8):
        fresh.crls.add(crl("aa", n))
    assert fresh.crls.count("aa") == KEEP
    assert fresh.crls.get("aa", 7 - KEEP) is None and fresh.crls.get("aa", 7 - KEEP + 1) is not None
    assert fresh.crls.next_number("aa") == 8


def test_racing_signers_store_one_crl_per_number(fresh: Store) -> None:
    stored: list[int] = []
    refused: list[int] = []

    def go(i: int) -> None:
        try:
            fresh.crls.add(crl("aa", 1, revision=i))
            stored.append(i)
        except CRLNumberTaken:
            refused.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(stored) == 1 and len(refused) == 5
    assert fresh.crls.count("aa") == 1


def test_crl_entries_stream_serial_time_and_reason_in_utc(fresh: Store) -> None:
    from tests.integration.test_store_intermediates import added_and_installed, issued

    a, b = added_and_installed(fresh, "a"), added_and_installed(fresh, "b")
    at = datetime(2029, 12, 31, 23, 59, 58, tzinfo=timezone(timedelta(hours=-5)))  # stored as UTC
    want = {}
    for code in (0, 1, 9):
        serial = issued(fresh, a.id)
        fresh.revocations.revoke(serial, reason_code=code, source="admin", at=at)
        want[serial] = code
    fresh.revocations.revoke(issued(fresh, b.id), source="admin", at=at)  # another issuer's
    got = list(fresh.crls.entries(a.id))
    assert {s: c for s, _, c in got} == want
    for _, when, _ in got:  # naive UTC on every backend (what cryptography's CRL builder reads)
        assert when.tzinfo is None and when.replace(tzinfo=UTC) == at
    # The test certificates expired long before 2100: a CRL signed then lists none of them.
    assert list(fresh.crls.entries(a.id, expired_before=datetime(2100, 1, 1, tzinfo=UTC))) == []
