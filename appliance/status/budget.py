"""A token bucket: at most `burst` at once, then `per_second` on average. The OCSP responder spends it on the
signatures of `unknown` answers, which anyone can ask for with made-up serials."""

from __future__ import annotations

import threading
import time


class Budget:
    """Thread-safe; `take()` is True while tokens are left."""

    def __init__(self, per_second: float, burst: int):
        self.per_second, self.burst = per_second, burst
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_second)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True
