"""Prometheus metrics: KMS signatures and backend health, issuance, and HTTP requests.

One leaf module that the CA layer (`tbs`, `issuer`), the RA (`Authority.health`) and the web layer
record into; `kms/` imports nothing from `appliance/`, so signatures are timed around the adapter
call, which includes the backend's own retries and circuit breaker: what a client waits for.

Processes: `hsmca serve` gives its children a fresh `PROMETHEUS_MULTIPROC_DIR` (see
`appliance/serving/supervisor.py`) before they import prometheus_client, so every HTTPS worker,
the plain-HTTP listener and housekeeping write their samples to files there and a scrape of any of
them merges all. Without that variable (tests, the CLI) the metrics live in this process's default
registry. Labels hold only bounded, public values: backend schemes, provisioner names (published at
`/provisioners` anyway), route templates, methods, status codes; never a token, URI or PIN.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from kms.errors import BackendUnavailable
from kms.signer import KMSKey

log = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# A PKCS#11 signature takes ~0.5 ms on SoftHSM, a cloud KMS tens of ms, a struggling one seconds.
SIGN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

SOFTWARE = "software"  # a CA key that is not a KMS adapter (tests, throwaway keys)

KMS_SIGN_SECONDS = Histogram(
    "hsmca_kms_sign_seconds", "Time of each successful CA signature through kms, by key URI scheme.",
    ["backend"], buckets=SIGN_BUCKETS)
KMS_SIGN_FAILURES = Counter(
    "hsmca_kms_sign_failures_total",
    "CA signatures that failed: reason=unavailable (backend down or timed out), refused (anything else).",
    ["backend", "reason"])
KMS_BACKEND_UP = Gauge(
    "hsmca_kms_backend_up",
    "1 after a successful signature or health check, 0 after the backend was unavailable "
    "(the minimum over live processes).",
    ["backend"], multiprocess_mode="livemin")
"""Why `livemin`: each worker holds its own session to the backend (a PKCS#11 session is per
process), so one worker can be cut off while the others sign. The minimum over the live processes
shows that worst case as 0 instead of averaging or hiding it (`mostrecent` would let a healthy
worker mask a broken one); `live` drops a process's value when it exits (the supervisor reaps an exited
worker's files), so a replaced worker's last 0 does not linger. A process that has not
touched a backend reports nothing for it; `/health` sets the gauge too, so an idle CA reports it.
A worker's 0 stays until that worker's next signature or health check (load balancer checks
spread over the workers refresh it).
`liveall` would give the same information with a `pid` label that churns at every worker restart."""

SSH_SIGNATURES = Counter(
    "hsmca_ssh_certificates_signed_total",
    "SSH certificates signed through kms, by key URI scheme and certificate type (user, host).",
    ["backend", "cert_type"])
CERTIFICATES_ISSUED = Counter(
    "hsmca_certificates_issued_total", "Certificates signed and recorded, by provisioner.", ["provisioner"])
REQUESTS = Counter(
    "hsmca_requests_total", "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"])
REQUEST_SECONDS = Histogram(
    "hsmca_request_seconds", "Time to answer an HTTP request, by route template.", ["route"],
    buckets=REQUEST_BUCKETS)
OCSP_MEMORY_ANSWERS = Counter(
    "hsmca_ocsp_memory_answers_total",
    "OCSP requests the plain-HTTP listener answered from its memory, on its event loop (not in "
    "hsmca_requests_total, which counts what the application answered), by method.", ["method"])

CONNECTIONS_REFUSED = Counter(
    "hsmca_connections_refused_total",
    "Connections answered 503 and closed at accept: reason=per_address (too many from one client address) or "
    "overall (the listener process is full), by listener (https, http).", ["listener", "reason"])
CONNECTIONS_CUT = Counter(
    "hsmca_connections_cut_total",
    "Connections closed because a deadline passed: reason=handshake (TLS), headers (the whole request line and "
    "headers), body, write (the client stopped reading), by listener (https, http).", ["listener", "reason"])
AUDIT_CHECKPOINTS = Counter(
    "hsmca_audit_checkpoints_total",
    "Audit trail checkpoints: result=signed (written, and stored in the database) or failed (the audit key or the "
    "database failed: the records stay chained, and the next interval tries again).", ["result"])


_write_failed = False


def _record(update: Callable[[], object]) -> None:
    """Apply a metric update; a metric that cannot be written (its file gone) never fails a signature or a request."""
    global _write_failed
    try:
        update()
    except Exception:
        if not _write_failed:
            log.warning("cannot record a metric; metrics are incomplete from now on", exc_info=True)
        _write_failed = True


def backend_of(key: object) -> str:
    """The `backend` label of a CA key: its key URI's scheme (the URI itself may name a vault or token)."""
    if isinstance(key, KMSKey):
        scheme, sep, _ = key.uri.partition(":")
        return scheme.lower() if sep and scheme.isalnum() else "unknown"
    return SOFTWARE


def ssh_certificate_signed(backend: str, cert_type: str) -> None:
    _record(lambda: SSH_SIGNATURES.labels(backend, cert_type).inc())


def timed_signature(backend: str, sign: Callable[[], bytes]) -> bytes:
    """Call `sign()` (one signature through kms), recording its time, failure reason and the backend's state.

    Only successful signatures are timed: a timeout's 10 s would otherwise read as signing latency.
    Failures: `unavailable` for BackendUnavailable (kms turns device errors, lost sessions, open
    breakers and timeouts into it) or a bare TimeoutError, `refused` for any other error (the
    backend answered, or the adapter failed, and retrying the same request will not help).
    """
    start = time.perf_counter()
    try:
        signature = sign()
    except (BackendUnavailable, TimeoutError):
        _record(lambda: KMS_SIGN_FAILURES.labels(backend, "unavailable").inc())
        _record(lambda: KMS_BACKEND_UP.labels(backend).set(0))
        raise
    except Exception:
        signature_rejected(backend)
        raise
    elapsed = time.perf_counter() - start
    _record(lambda: KMS_SIGN_SECONDS.labels(backend).observe(elapsed))
    _record(lambda: KMS_BACKEND_UP.labels(backend).set(1))
    return signature


def signature_rejected(backend: str) -> None:
    """A refusal; also a signature that came back and does not verify (a faulty signer), after the fact."""
    _record(lambda: KMS_SIGN_FAILURES.labels(backend, "refused").inc())


def certificate_issued(provisioner: str) -> None:
    _record(lambda: CERTIFICATES_ISSUED.labels(provisioner).inc())


def backends_checked(results: Iterable[tuple[str, bool]]) -> None:
    """Set `hsmca_kms_backend_up` from health checks; several backends of one scheme are up only if all are."""
    up: dict[str, bool] = {}
    for backend, ok in results:
        up[backend] = up.get(backend, True) and ok
    for backend, ok in up.items():
        _record(lambda: KMS_BACKEND_UP.labels(backend).set(1 if ok else 0))  # noqa: B023 (called at once)


def request_answered(route: str, method: str, status: int, seconds: float) -> None:
    _record(lambda: REQUESTS.labels(route, method, str(status)).inc())
    _record(lambda: REQUEST_SECONDS.labels(route).observe(seconds))


def ocsp_answered_from_memory(method: str, count: int = 1) -> None:
    _record(lambda: OCSP_MEMORY_ANSWERS.labels(method).inc(count))


def connection_refused(listener: str, reason: str) -> None:
    _record(lambda: CONNECTIONS_REFUSED.labels(listener, reason).inc())


def connection_cut(listener: str, reason: str) -> None:
    _record(lambda: CONNECTIONS_CUT.labels(listener, reason).inc())


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> tuple[bytes, str]:
    """The text exposition (body, content type): every process's files when multi-process, else this process."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    return generate_latest(registry), CONTENT_TYPE_LATEST


def mark_process_dead(pid: int, path: str | None = None) -> None:
    """Drop the live gauges of an exited process; its counters stay summed."""
    path = path or multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]+_(\d+)\.db$")


def reap_dead_processes(path: str | Path) -> list[int]:
    """`mark_process_dead` for every process whose live-gauge file outlived it.

    An exited worker's last `hsmca_kms_backend_up` would otherwise be reported for ever. The
    supervisor calls this when it restarts a child.
    """
    dead: set[int] = set()
    try:
        entries = list(Path(path).iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        m = _LIVE_GAUGE_FILE.match(entry.name)
        if m and not _alive(int(m.group(1))):
            dead.add(int(m.group(1)))
    for pid in sorted(dead):
        multiprocess.mark_process_dead(pid, str(path))
    return sorted(dead)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def audit_checkpoint(result: str) -> None:
    """Count a checkpoint of the audit trail (`signed` or `failed`)."""
    _record(lambda: AUDIT_CHECKPOINTS.labels(result).inc())
