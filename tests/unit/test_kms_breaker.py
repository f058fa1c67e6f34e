"""The circuit breaker's states, on a clock the test moves (no sleeping)."""

from __future__ import annotations

import pytest

from kms.breaker import CircuitBreaker
from kms.errors import BackendUnavailable, KeyNotFound


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _down() -> None:
    raise BackendUnavailable("vault at x: ConnectionError: refused")


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, BackendUnavailable)


def test_opens_fails_fast_then_one_trial_closes_it() -> None:
    clock, calls = Clock(), []
    breaker = CircuitBreaker("vault at x", threshold=2, cooldown=5, clock=clock)

    def counted() -> None:
        calls.append(1)
        _down()

    for _ in range(2):
        with pytest.raises(BackendUnavailable, match="refused"):
            breaker.call(counted, _transient)
    assert breaker.state == "open" and len(calls) == 2
    with pytest.raises(BackendUnavailable, match=r"vault at x is failing \(2 failures in a row, last: vault at x: "
                                                 r"ConnectionError: refused\); not tried again for 5\.0 s"):
        breaker.call(counted, _transient)
    assert len(calls) == 2  # failed fast: the backend was not called
    clock.now += 5
    assert breaker.state == "half-open"
    assert breaker.call(lambda: "signed", _transient) == "signed"
    assert breaker.state == "closed"


def test_a_failed_trial_opens_it_again_and_only_one_trial_runs() -> None:
    clock = Clock()
    breaker = CircuitBreaker("b", threshold=1, cooldown=5, clock=clock)
    with pytest.raises(BackendUnavailable):
        breaker.call(_down, _transient)
    clock.now += 6
    with pytest.raises(BackendUnavailable, match="refused"):
        breaker.call(_down, _transient)  # the trial, which fails
    assert breaker.state == "open"
    clock.now += 4.9
    with pytest.raises(BackendUnavailable, match="not tried again for 0.1 s"):
        breaker.call(lambda: None, _transient)


def test_answers_that_are_not_outages_do_not_count() -> None:
    breaker = CircuitBreaker("b", threshold=1, cooldown=5, clock=Clock())

    def missing() -> None:
        raise KeyNotFound("no such key")

    for _ in range(3):
        with pytest.raises(KeyNotFound):
            breaker.call(missing, _transient)
    assert breaker.state == "closed"
