"""A circuit breaker for a remote signing backend: a dead KMS fails requests fast, and is retried alone.

Closed: calls go through. After `threshold` consecutive transient failures (each one a call that
already exhausted its own retries, so one is enough by default) it opens: calls fail at
once with BackendUnavailable naming the last cause, so request threads do not pile up behind
timeouts. After `cooldown` seconds one trial call is let through (half-open); its success closes
the breaker, its failure opens it again. Only transient failures count (timeouts, 5xx, throttling,
connection errors): a refused signature or a missing key says nothing about the backend's health.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from kms.errors import BackendUnavailable

T = TypeVar("T")


class CircuitBreaker:
    def __init__(self, name: str, *, threshold: int = 1, cooldown: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name, self.threshold, self.cooldown, self._clock = name, threshold, cooldown, clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._trial_running = False
        self.last_cause: str | None = None

    @property
    def state(self) -> str:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half-open" if self._clock() - self._opened_at >= self.cooldown else "open"

    def call(self, fn: Callable[[], T], is_transient: Callable[[BaseException], bool]) -> T:
        """Run `fn` unless the breaker is open; count its transient failures."""
        trial = self._admit()
        try:
            result = fn()
        except BaseException as exc:
            if is_transient(exc):
                self._failed(exc, trial)
            elif trial:
                self._release_trial(success=True)  # the backend answered, even if it said no
            raise
        self._release_trial(success=True) if trial else self._succeeded()
        return result

    def _admit(self) -> bool:
        with self._lock:
            if self._opened_at is None:
                return False
            waited = self._clock() - self._opened_at
            if waited >= self.cooldown and not self._trial_running:
                self._trial_running = True
                return True
            retry_in = max(0.0, self.cooldown - waited)
            raise BackendUnavailable(f"{self.name} is failing ({self._failures} failures in a row, last: "
                                     f"{self.last_cause}); not tried again for {retry_in:.1f} s")

    def _failed(self, exc: BaseException, trial: bool) -> None:
        with self._lock:
            self._failures += 1
            self.last_cause = str(exc) or type(exc).__name__
            if trial or self._failures >= self.threshold:
                self._opened_at = self._clock()
            self._trial_running = False

    def _succeeded(self) -> None:
        with self._lock:
            self._failures = 0

    def _release_trial(self, *, success: bool) -> None:
        with self._lock:
            self._trial_running = False
            if success:
                self._failures, self._opened_at = 0, None
