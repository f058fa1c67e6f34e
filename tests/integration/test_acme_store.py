"""ACME objects in the store, on SQLite, PostgreSQL and MariaDB (fixtures from test_store.py): nonces accepted
once, accounts unique per key, and the order state machine safe under concurrent requests."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from appliance.store import Store
from appliance.store.acme import (
    AccountKeyInUse,
    ACMEStore,
    AuthorizationRecord,
    ChallengeRecord,
    EABKeyUsed,
    OrderRecord,
    new_id,
)
from appliance.store.migrate import head_revision
from tests.integration import test_store as base
from tests.integration.test_store import Server
from tests.integration.test_store_intermediates import _alembic

server = base.server
T = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
JWK = {"kty": "EC", "crv": "P-256", "x": "x", "y": "y"}


@pytest.fixture(scope="module")
def store(server: Server) -> Iterator[Store]:
    with Store(server.new_url()) as s:
        s.migrate()
        yield s


def race(n: int, fn: Callable[[], Any]) -> list[Any]:
    """Run `fn` in n threads released together; their results."""
    barrier = threading.Barrier(n)
    results: list[Any] = []
    lock = threading.Lock()

    def run() -> None:
        barrier.wait()
        value = fn()
        with lock:
            results.append(value)

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def order_with(acme: ACMEStore, account_id: str, names: list[str]) -> tuple[OrderRecord, list[AuthorizationRecord]]:
    order = OrderRecord(new_id(), account_id, "pending", tuple({"type": "dns", "value": n} for n in names),
                        None, None, T + timedelta(days=1), None, None, T)
    authzs = []
    for n in names:
        aid = new_id()
        authzs.append(AuthorizationRecord(aid, order.id, account_id, "dns", n, False, "pending",
                                          T + timedelta(days=1),
                                          (ChallengeRecord(new_id(), aid, "http-01", new_id(), "pending"),
                                           ChallengeRecord(new_id(), aid, "dns-01", new_id(), "pending"))))
    acme.create_order(order, authzs)
    return order, authzs


def test_a_nonce_is_accepted_once_even_by_racing_consumers(store: Store) -> None:
    acme = store.acme
    nonce = acme.new_nonce(T, timedelta(hours=1))
    assert race(4, lambda: acme.consume_nonce(nonce, T)).count(True) == 1
    assert not acme.consume_nonce(nonce, T)
    assert not acme.consume_nonce("never-issued", T) and not acme.consume_nonce("", T)
    late = acme.new_nonce(T, timedelta(minutes=1))
    assert not acme.consume_nonce(late, T + timedelta(minutes=2))  # expired

    # what a request does: consume its nonce and issue the response's in one transaction
    first = acme.new_nonce(T, timedelta(hours=1))
    swapped = race(4, lambda: acme.swap_nonce(first, T, timedelta(hours=1)))
    fresh = [n for n in swapped if n is not None]
    assert len(fresh) == 1 and fresh[0] != first
    assert acme.swap_nonce(first, T, timedelta(hours=1)) is None
    assert acme.consume_nonce(fresh[0], T)


def test_one_account_per_key_and_provisioner(store: Store) -> None:
    acme = store.acme
    results = race(3, lambda: acme.create_account("acme", "tp-1", JWK, ["mailto:a@b.test"], T))
    assert sorted(created for _, created in results) == [False, False, True]
    assert len({rec.id for rec, _ in results}) == 1
    other, created = acme.create_account("other", "tp-1", JWK, [], T)  # another provisioner: another account
    assert created and other.id != results[0][0].id
    rec = results[0][0]
    assert acme.account_by_thumbprint("acme", "tp-1") == acme.account(rec.id)
    updated = acme.update_account(rec.id, contact=["mailto:c@d.test"])
    assert updated is not None and updated.contact == ("mailto:c@d.test",)


def test_key_change_refuses_a_key_in_use_and_a_stale_old_key(store: Store) -> None:
    acme = store.acme
    a, _ = acme.create_account("acme", "tp-a", JWK, [], T)
    b, _ = acme.create_account("acme", "tp-b", JWK, [], T)
    with pytest.raises(AccountKeyInUse) as caught:
        acme.change_key(a.id, "tp-a", "tp-b", JWK)
    assert caught.value.account_id == b.id
    assert acme.change_key(a.id, "tp-a", "tp-a2", {**JWK, "x": "x2"})
    assert not acme.change_key(a.id, "tp-a", "tp-a3", JWK)  # its key is tp-a2 now
    assert acme.account(a.id).thumbprint == "tp-a2"  # type: ignore[union-attr]
    assert acme.update_account(a.id, status="deactivated").status == "deactivated"  # type: ignore[union-attr]
    assert acme.update_account(a.id, status="deactivated") is None  # only a valid account changes


def test_order_becomes_ready_when_every_authorization_is_valid(store: Store) -> None:
    acme = store.acme
    acct, _ = acme.create_account("acme", "tp-order", JWK, [], T)
    order, authzs = order_with(acme, acct.id, ["a.test", "b.test"])
    got = acme.order(order.id)
    assert got is not None and got.status == "pending" and set(got.authorization_ids) == {a.id for a in authzs}
    first, second = authzs[0].challenges[0], authzs[1].challenges[0]
    assert race(3, lambda: acme.start_challenge(first.id, T)).count(True) == 1
    sibling = authzs[0].challenges[1]
    assert acme.start_challenge(sibling.id, T)  # a client may try two challenges of one authorization
    assert acme.complete_challenge(first.id, None, T)
    assert acme.complete_challenge(sibling.id, {"type": "x", "detail": "late failure"}, T)
    assert acme.authorization(authzs[0].id).status == "valid"  # type: ignore[union-attr]  # the first settled it
    assert not acme.complete_challenge(first.id, None, T)  # only from processing
    assert acme.order(order.id).status == "pending"  # type: ignore[union-attr]
    assert acme.start_challenge(second.id, T) and acme.complete_challenge(second.id, None, T)
    assert acme.order(order.id).status == "ready"  # type: ignore[union-attr]
    assert acme.authorization(authzs[1].id).status == "valid"  # type: ignore[union-attr]
    # exactly one finalize wins, then the order carries the serial
    assert race(3, lambda: acme.begin_finalize(order.id)).count(True) == 1
    acme.finish_order(order.id, serial=12345)
    done = acme.order(order.id)
    assert done is not None and (done.status, done.serial) == ("valid", 12345)
    assert acme.order_account_for_serial(12345) == acct.id and acme.order_ids(acct.id) == [order.id]


def test_a_failed_challenge_invalidates_authorization_and_order(store: Store) -> None:
    acme = store.acme
    acct, _ = acme.create_account("acme", "tp-fail", JWK, [], T)
    order, authzs = order_with(acme, acct.id, ["c.test"])
    chal = authzs[0].challenges[0]
    assert acme.start_challenge(chal.id, T)
    error = {"type": "urn:ietf:params:acme:error:connection", "detail": "refused"}
    assert acme.complete_challenge(chal.id, error, T)
    assert acme.challenge(chal.id).error == error  # type: ignore[union-attr]
    assert acme.authorization(authzs[0].id).status == "invalid"  # type: ignore[union-attr]
    assert acme.order(order.id).status == "invalid"  # type: ignore[union-attr]
    assert not acme.start_challenge(authzs[0].challenges[1].id, T)  # the authorization is settled


def test_stale_challenges_are_claimed_once(store: Store) -> None:
    acme = store.acme
    acct, _ = acme.create_account("acme", "tp-stale", JWK, [], T)
    _, authzs = order_with(acme, acct.id, ["d.test"])
    chal = authzs[0].challenges[0]
    assert acme.start_challenge(chal.id, T)
    stale = [c for c in acme.stale_challenges(T + timedelta(minutes=5)) if c.id == chal.id]
    assert stale and stale[0].attempts == 1
    later = T + timedelta(minutes=10)
    assert race(3, lambda: acme.claim_stale_challenge(chal.id, stale[0].claimed_at, later)).count(True) == 1  # type: ignore[arg-type]
    assert acme.challenge(chal.id).attempts == 2  # type: ignore[union-attr]


def test_deactivating_an_authorization_invalidates_its_order(store: Store) -> None:
    acme = store.acme
    acct, _ = acme.create_account("acme", "tp-deact", JWK, [], T)
    order, authzs = order_with(acme, acct.id, ["e.test"])
    assert acme.deactivate_authorization(authzs[0].id)
    assert acme.authorization(authzs[0].id).status == "deactivated"  # type: ignore[union-attr]
    assert acme.order(order.id).status == "invalid"  # type: ignore[union-attr]
    acme.expire_order(order.id, T + timedelta(days=2))  # already invalid: unchanged
    assert acme.order(order.id).error["detail"].startswith("an authorization")  # type: ignore[union-attr,index]


def test_an_external_account_key_binds_one_account(store: Store) -> None:
    acme = store.acme
    key = acme.add_eab_key("acme", "team-a", T)
    assert acme.eab_key(key.key_id) == key and key in acme.eab_keys("acme")

    def create(n: int) -> object:
        try:
            return acme.create_account("acme", f"tp-eab-{n}", JWK, [], T, eab_key_id=key.key_id)[0].id
        except EABKeyUsed:
            return None

    counter = iter(range(100))
    results = race(3, lambda: create(next(counter)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    bound = acme.eab_key(key.key_id)
    assert bound is not None and bound.account_id == winners[0]
    losers = [n for n in range(3) if acme.account_by_thumbprint("acme", f"tp-eab-{n}") is None]
    assert len(losers) == 2  # no account without its binding
    with pytest.raises(EABKeyUsed):
        acme.create_account("other", "tp-eab-x", JWK, [], T, eab_key_id=acme.add_eab_key("acme", None, T).key_id)
    assert acme.remove_eab_key(key.key_id) and not acme.remove_eab_key(key.key_id)


def test_expired_nonces_are_purged_as_new_ones_are_issued(store: Store) -> None:
    acme = store.acme
    stale = acme.new_nonce(T - timedelta(hours=2), timedelta(hours=1))  # expired at T - 1 h
    for _ in range(64):
        acme.new_nonce(T, timedelta(hours=1))
    # Still acceptable at T - 90 min had it been kept: gone means purged.
    assert not acme.consume_nonce(stale, T - timedelta(minutes=90))


def test_migration_0004_upgrades_from_0003_and_downgrades(server: Server) -> None:
    url = server.new_url()
    _alembic(url, "upgrade", "0003")
    with Store(url) as s:
        s.migrate()
        assert s.schema_revision() == head_revision()
        s.acme.new_nonce(T, timedelta(hours=1))
    _alembic(url, "downgrade", "0003")
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        assert not {n for n in sa.inspect(engine).get_table_names() if n.startswith("acme_")}
    finally:
        engine.dispose()
    _alembic(url, "upgrade", "head")


def test_expired_orders_and_authorizations_are_purged_but_valid_orders_stay(store: Store) -> None:
    acme = store.acme
    acct, _ = acme.create_account("acme", "tp-purge", JWK, [], T)
    stale, stale_authzs = order_with(acme, acct.id, ["stale.test", "stale2.test"])  # expires T + 1 day
    issued, issued_authzs = order_with(acme, acct.id, ["issued.test"])
    for authz in issued_authzs:
        assert acme.start_challenge(authz.challenges[0].id, T) and acme.complete_challenge(authz.challenges[0].id,
                                                                                           None, T)
    assert acme.begin_finalize(issued.id)
    acme.finish_order(issued.id, serial=123456789)
    assert acme.purge_expired(T) == 0  # nothing has expired yet
    later = T + timedelta(days=2)
    deleted = 0
    while (done := acme.purge_expired(later, batch=1)) > 0:  # batches until nothing is left
        deleted += done
    # At least this test's 3 authorizations with 2 challenges each, and the stale order (the module's other
    # tests leave orders of the same age).
    assert deleted >= 2 * 3 + 1 * 3 + 1
    assert acme.order(stale.id) is None
    assert all(acme.authorization(a.id) is None for a in stale_authzs + issued_authzs)
    kept = acme.order(issued.id)
    assert kept is not None and kept.status == "valid" and acme.order_account_for_serial(123456789) == acct.id
