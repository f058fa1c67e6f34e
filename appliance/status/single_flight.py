"""Concurrent calls for the same key share one run: the first caller runs the function, the others wait for its
result (or its exception). The OCSP responder signs a certificate's response at its first request; a burst of
first requests (a relying party's fleet restarting) must cost one KMS signature per process, not one each.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One run per key at a time; callers that arrive while it runs get its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, Future[V]] = {}

    def run(self, key: K, call: Callable[[], V], wait: float) -> V:
        """`call()`'s result, shared with concurrent callers of the same key; a follower waits at most `wait`
        seconds (then TimeoutError: the caller decides what a slow leader means)."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            return flight.result(wait)
        try:
            result = call()
        except BaseException as exc:
            flight.set_exception(exc)
            raise
        else:
            flight.set_result(result)
            return result
        finally:
            with self._lock:  # the next caller runs afresh (by then the outcome is stored, or it failed)
                del self._flights[key]

    def __len__(self) -> int:
        return len(self._flights)
