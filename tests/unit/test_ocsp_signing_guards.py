"""What keeps OCSP signing bounded: one signature for concurrent first requests (single_flight.py), and a budget
for the signatures of `unknown` answers (budget.py). Real threads; the responder's use of both is in
tests/integration/test_ocsp_responder.py (SoftHSM)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from appliance.status.budget import Budget
from appliance.status.single_flight import SingleFlight


def test_concurrent_callers_of_one_key_share_one_run() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    runs = 0
    release = threading.Event()

    def slow() -> int:
        nonlocal runs
        runs += 1
        release.wait(5)
        return 42

    with ThreadPoolExecutor(8) as pool:
        results = [pool.submit(flights.run, "serial", slow, 5) for _ in range(8)]
        deadline = time.monotonic() + 5
        while len(flights) == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.05)  # the others arrive while the first runs
        release.set()
        assert [r.result() for r in results] == [42] * 8
    assert runs == 1 and len(flights) == 0
    assert flights.run("serial", lambda: 7, 5) == 7  # a later caller runs afresh
    assert flights.run("other", lambda: 8, 5) == 8


def test_followers_get_the_leaders_exception_and_stop_waiting_after_wait() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    started, release = threading.Event(), threading.Event()

    def failing() -> int:
        started.set()
        release.wait(5)
        raise OSError("backend down")

    with ThreadPoolExecutor(3) as pool:
        leader = pool.submit(flights.run, "k", failing, 5)
        started.wait(5)
        follower = pool.submit(flights.run, "k", lambda: 1, 5)
        impatient = pool.submit(flights.run, "k", lambda: 1, 0.01)
        with pytest.raises(TimeoutError):
            impatient.result(5)
        release.set()
        for future in (leader, follower):
            with pytest.raises(OSError, match="backend down"):
                future.result(5)
    assert len(flights) == 0


def test_the_budget_allows_a_burst_then_its_rate() -> None:
    budget = Budget(per_second=20.0, burst=5)
    assert [budget.take() for _ in range(7)] == [True] * 5 + [False] * 2
    time.sleep(0.12)  # ~2.4 tokens back
    assert sum(budget.take() for _ in range(5)) in (2, 3)
