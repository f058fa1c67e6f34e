"""How every remote backend calls its service: retries for transient failures only, behind a breaker.

Each backend supplies a classifier that reads its SDK's exception: it raises the backend's refusal
(KeyNotFound, PermissionDenied, ...: never retried), returns a one-line cause for a transient
failure (throttling, 5xx, connection, timeout: retried with jittered backoff, then
BackendUnavailable), or returns None for an exception that is not the service's (re-raised). The
timeout of each attempt is the SDK client's own.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from kms.breaker import CircuitBreaker
from kms.errors import BackendUnavailable, KMSError

T = TypeVar("T")
RETRIES = 2  # transient failures only: a refused signature is never retried
Classifier = Callable[[BaseException, str], "str | None"]


def jittered(attempt: int, _exc: BaseException) -> float:
    return random.uniform(0.05, 0.2) * (2 ** attempt)


class RemoteCalls:
    def __init__(self, label: str, *, cooldown: float, retries: int = RETRIES) -> None:
        self.label, self.retries = label, retries
        self.breaker = CircuitBreaker(label, cooldown=cooldown)
        self.last_error: str | None = None

    def call(self, what: str, fn: Callable[[], T], classify: Classifier, *, retry: bool = True,
             backoff: Callable[[int, BaseException], float] = jittered) -> T:
        """`fn` once, or up to `retries` more times on transient failures; fails fast while the breaker is open."""
        return self.breaker.call(lambda: self._attempts(what, fn, classify, retry, backoff),
                                 lambda exc: isinstance(exc, BackendUnavailable))

    def _attempts(self, what: str, fn: Callable[[], T], classify: Classifier, retry: bool,
                  backoff: Callable[[int, BaseException], float]) -> T:
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            try:
                result = fn()
                self.last_error = None
                return result
            except KMSError:
                raise
            except Exception as exc:
                cause = classify(exc, what)  # raises the backend's refusal
                if cause is None:
                    raise
                self.last_error = cause
                if attempt + 1 == attempts:
                    raise BackendUnavailable(f"{self.label} while {what}: {cause}") from None
                time.sleep(backoff(attempt, exc))
        raise AssertionError("unreachable")
