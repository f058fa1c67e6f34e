"""A challenge left in `processing` by a validator that died is resumed by the sweep (or failed once it has used
its attempts): the real store, the real validator and a real http-01 answer, in process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from joserfc.jwk import ECKey

from appliance.acme.service import ACMEService
from appliance.acme.validator import MAX_ATTEMPTS, STALE_AFTER
from appliance.ra.authority import Authority
from appliance.store.acme import AuthorizationRecord, ChallengeRecord, OrderRecord, new_id
from tests.integration.acme_client import ChallengeServer
from tests.integration.conftest import DevCA


@pytest.fixture(scope="module")
def service(dev_ca: DevCA, http01: ChallengeServer) -> Iterator[ACMEService]:
    def add(cfg: dict[str, Any]) -> None:
        cfg["authority"]["provisioners"].append({"type": "ACME", "name": "acme", "http01Port": http01.port,
                                                 "challenges": ["http-01"], "validationTimeout": 3})

    dev_ca.edit_config(add)
    authority = Authority.from_config(dev_ca.config)
    authority.store.migrate()
    yield ACMEService(authority, authority.store)
    authority.close()


def stuck_challenge(service: ACMEService, claimed: datetime) -> tuple[str, str, str]:
    """An order for 127.0.0.1 whose http-01 challenge a dead validator claimed at `claimed`."""
    store = service.store
    key = ECKey.generate_key("P-256", private=True)
    acct, _ = store.create_account("acme", key.thumbprint(), key.as_dict(private=False), [], claimed)
    order = OrderRecord(new_id(), acct.id, "pending", ({"type": "ip", "value": "127.0.0.1"},), None, None,
                        claimed + timedelta(days=1), None, None, claimed)
    authz_id, chal_id, token = new_id(), new_id(), new_id()
    store.create_order(order, [AuthorizationRecord(
        authz_id, order.id, acct.id, "ip", "127.0.0.1", False, "pending", claimed + timedelta(days=1),
        (ChallengeRecord(chal_id, authz_id, "http-01", token, "pending"),))])
    assert store.start_challenge(chal_id, claimed)
    return order.id, chal_id, f"{token}.{acct.thumbprint}"


def wait_for(service: ACMEService, chal_id: str, status: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        chal = service.store.challenge(chal_id)
        if chal is not None and chal.status == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"challenge {chal_id} is {service.store.challenge(chal_id)}, not {status}")


def test_the_sweep_resumes_a_stale_challenge(service: ACMEService, http01: ChallengeServer) -> None:
    now = datetime.now(UTC)
    order_id, chal_id, key_authz = stuck_challenge(service, now - STALE_AFTER - timedelta(seconds=1))
    fresh_order, fresh_chal, _ = stuck_challenge(service, now)  # still within its validator's time: left alone
    http01.answers[key_authz.split(".")[0]] = key_authz
    assert service.sweep(now) == 1
    wait_for(service, chal_id, "valid")
    assert service.store.order(order_id).status == "ready"  # type: ignore[union-attr]
    assert service.store.challenge(chal_id).attempts == 2  # type: ignore[union-attr]
    assert service.store.challenge(fresh_chal).status == "processing"  # type: ignore[union-attr]


def test_a_challenge_out_of_attempts_fails_with_the_reason(service: ACMEService) -> None:
    now = datetime.now(UTC)
    order_id, chal_id, _ = stuck_challenge(service, now - timedelta(hours=1))
    for _ in range(MAX_ATTEMPTS - 1):  # every claimer died
        chal = service.store.challenge(chal_id)
        assert chal is not None and chal.claimed_at is not None
        assert service.store.claim_stale_challenge(chal_id, chal.claimed_at, chal.claimed_at + timedelta(seconds=1))
    assert service.sweep(now) >= 1
    chal = service.store.challenge(chal_id)
    assert chal is not None and chal.status == "invalid"
    assert chal.error is not None and chal.error["type"].endswith(":serverInternal")
    assert f"after {MAX_ATTEMPTS} attempts" in chal.error["detail"]
    assert service.store.order(order_id).status == "invalid"  # type: ignore[union-attr]
