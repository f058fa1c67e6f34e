"""Keep the stored OCSP responses fresh, one replica at a time (lease `ocsp-refresh`).

Each housekeeping round re-signs, in batches, the stored responses past half their validity: those that some
request asked for (the responder stores what it signs at a certificate's first request). With `ocsp.presign` it
also signs responses for certificates issued since the last round (and revoked ones whose row a revocation
dropped), so that even a first request is a cache hit, at the price of a KMS signature per certificate whether
anyone asks or not (measured in README's design decisions; off by default).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from appliance.ca.active import ActiveIssuer
from appliance.config import CAConfig
from appliance.errors import CAError
from appliance.status.ocsp import OCSPResponder
from appliance.store import Store, StoreError
from kms.errors import KMSError
from policy import parse_duration

log = logging.getLogger("hsmca.ocsp")

LEASE = "ocsp-refresh"
PURGE_EVERY = 3600.0  # seconds between deletions of the responses of expired certificates


@dataclass
class Refreshed:
    """What one round did (for logs and tests)."""

    resigned: int = 0
    presigned: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    complete: bool = True  # False when the time budget or an error cut the round short


class OCSPRefresher:
    """Re-signs and pre-signs in batches under the lease; remembers how far the issued-since scan got."""

    def __init__(self, store: Store, responder: OCSPResponder, *, batch: int, lease_ttl: timedelta,
                 reservation_timeout: timedelta, presign: bool = False, holder: str | None = None):
        self.store, self.responder, self.batch, self.presign = store, responder, batch, presign
        self.lease_ttl, self.reservation_timeout = lease_ttl, reservation_timeout
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"
        self._scanned_until: datetime | None = None  # every certificate reserved before this has a response
        self._purged_at = -PURGE_EVERY

    def run(self, now: datetime | None = None) -> Refreshed | None:
        """One round; None when another replica holds the lease."""
        now = now or datetime.now(UTC)
        try:
            if not self.store.leases.take(LEASE, self.holder, self.lease_ttl, now):
                return None
        except StoreError as exc:
            log.error("OCSP refresh skipped: %s", exc)
            return None
        done = Refreshed()
        deadline = time.monotonic() + self.lease_ttl.total_seconds() / 2
        started = now
        try:
            # Re-sign what is past half its validity: its nextUpdate is less than half a validity away.
            horizon = now + self.responder.validity / 2
            done.complete = self._drain(lambda: self.store.ocsp.due(horizon, self.batch, now=now),
                                        done, "resigned", deadline)
            if self.presign:
                # Reservations become issued up to reservation_timeout later: look back that far.
                since = None if self._scanned_until is None else self._scanned_until - self.reservation_timeout
                complete = self._drain(lambda: self.store.ocsp.missing(
                    self.batch, reserved_since=since, now=now), done, "presigned", deadline)
                if complete and done.complete:
                    self._scanned_until = started
                done.complete = done.complete and complete
            if time.monotonic() - self._purged_at > PURGE_EVERY:  # a scan of the certificates: not every round
                self.store.ocsp.purge_expired(now)
                self._purged_at = time.monotonic()
        except (StoreError, KMSError, CAError) as exc:
            log.error("OCSP refresh stopped: %s", exc)
            done.complete = False
        if done.resigned or done.presigned:
            log.info("OCSP: re-signed %d, pre-signed %d responses", done.resigned, done.presigned)
        return done

    def _drain(self, fetch: Callable[[], list[int]], done: Refreshed, counter: str, deadline: float) -> bool:
        """Sign batches until none is left (True) or the time budget is spent (False)."""
        tried: set[int] = set()
        while time.monotonic() < deadline:
            serials = [s for s in fetch() if s not in tried]
            if not serials:
                return True
            for serial in serials:
                tried.add(serial)
                status = self.responder.presign(serial)
                if status is not None:
                    setattr(done, counter, getattr(done, counter) + 1)
                    done.statuses[status] = done.statuses.get(status, 0) + 1
            self.store.leases.take(LEASE, self.holder, self.lease_ttl)  # still ours while we work
        return False


def refresher_for(config: CAConfig, store: Store) -> OCSPRefresher:
    """The housekeeping process's refresher: keys open on the first signature, in this process."""
    config.apply_kms_environment()
    responder = OCSPResponder(config, store, ActiveIssuer(config, store))
    interval = parse_duration(config.server.housekeepingInterval)
    return OCSPRefresher(store, responder, batch=config.ocsp.presignBatch, presign=config.ocsp.presign,
                         lease_ttl=max(2 * interval, timedelta(minutes=1)),
                         reservation_timeout=parse_duration(config.server.reservationTimeout))
