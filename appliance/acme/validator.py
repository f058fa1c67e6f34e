"""Challenge validation off the request path: a small bounded thread pool per process, and recovery of
challenges whose validator died.

The challenge row says `processing` with the time it was claimed before a job is queued, so a crash (or a
worker restart) leaves evidence: a later reader, or the periodic sweep, finds it past `STALE_AFTER` and
claims it again (one claimer wins, by the claim time in the WHERE clause), or fails it after MAX_ATTEMPTS.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from appliance.acme.problems import ACME_ERROR
from appliance.acme.validation import ValidationError, ValidationSettings, validate
from appliance.config import ACMEProvisionerConfig
from appliance.store import StoreError
from appliance.store.acme import ACMEStore

log = logging.getLogger(__name__)

WORKERS = 4
QUEUE_LIMIT = 256  # jobs waiting beyond this are left to the stale sweep rather than queued without bound
STALE_AFTER = timedelta(minutes=2)  # well above a validation's timeout and its retries
MAX_ATTEMPTS = 3
RETRY_PAUSES = (1.0,)  # a transient network failure (connection, dns, tls) is tried once more after a pause
_TRANSIENT = {"connection", "dns", "tls"}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Job:
    challenge_id: str
    challenge_type: str
    identifier_type: str
    identifier_value: str  # without "*." (a wildcard is proved on its base name)
    token: str
    key_authorization: str
    settings: ValidationSettings
    address_allowed: Callable[[IPAddress], bool]


def settings_for(cfg: ACMEProvisionerConfig) -> ValidationSettings:
    return ValidationSettings(http01_port=cfg.http01Port, tlsalpn01_port=cfg.tlsalpn01Port,
                              resolvers=tuple(cfg.resolvers), timeout=cfg.validationTimeout)


def address_policy(cfg: ACMEProvisionerConfig) -> Callable[[IPAddress], bool]:
    """The addresses the validator may connect to: never unspecified or multicast, nor `denyValidationTo`."""
    denied = tuple(ipaddress.ip_network(n, strict=False) for n in cfg.denyValidationTo)

    def allowed(address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_unspecified or address.is_multicast:
            return False
        return not any(address.version == net.version and address in net for net in denied)

    return allowed


def problem_document(kind: str, detail: str) -> dict[str, object]:
    return {"type": ACME_ERROR + kind, "detail": detail[:1000], "status": 400 if kind != "serverInternal" else 500}


class Validator:
    """Runs jobs on a few threads; created lazily per process (a forked worker makes its own pool)."""

    def __init__(self, store: ACMEStore, workers: int = WORKERS) -> None:
        self._store = store
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()
        self._queued = 0

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=self._workers, thread_name_prefix="acme-validate")
                self._pid = os.getpid()
            return self._pool

    def submit(self, job: Job) -> None:
        """Queue a claimed challenge; a full queue leaves it to the stale sweep (it is already `processing`)."""
        with self._lock:
            if self._queued >= QUEUE_LIMIT:
                log.warning("acme validation queue full; challenge %s waits for the sweep", job.challenge_id)
                return
            self._queued += 1
        self._executor().submit(self._run, job)

    def _run(self, job: Job) -> None:
        try:
            error = self._validate(job)
            try:
                self._store.complete_challenge(job.challenge_id, error, datetime.now(UTC))
            except StoreError as exc:  # the challenge stays processing; the sweep retries it
                log.warning("cannot record the validation of challenge %s: %s", job.challenge_id, exc)
        finally:
            with self._lock:
                self._queued -= 1

    @staticmethod
    def _validate(job: Job) -> dict[str, object] | None:
        pauses = list(RETRY_PAUSES)
        while True:
            try:
                validate(job.challenge_type, job.identifier_type, job.identifier_value, job.token,
                         job.key_authorization, job.settings, job.address_allowed)
                return None
            except ValidationError as exc:
                if exc.problem in _TRANSIENT and pauses:
                    time.sleep(pauses.pop(0))
                    continue
                return problem_document(exc.problem, exc.detail)
            except Exception:  # a validator bug must not leave the challenge processing forever
                log.exception("acme validation of challenge %s failed unexpectedly", job.challenge_id)
                return problem_document("serverInternal", "the validation failed inside the CA; see its log")


class Sweeper:
    """Once a minute per process, resume challenges left in `processing` (its own daemon thread)."""

    def __init__(self, sweep: Callable[[], None], interval: float = 60.0) -> None:
        self._sweep = sweep
        self._interval = interval
        self._pid = 0
        self._lock = threading.Lock()

    def ensure_running(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
        threading.Thread(target=self._loop, name="acme-sweep", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(self._interval)
            try:
                self._sweep()
            except Exception:  # keep sweeping; the next round may find the database back
                log.exception("acme stale-challenge sweep failed")
