"""Background work off the request path: resolve reservations left by killed workers; purge expired token
ids and (after ACME_RETENTION) expired ACME orders and authorizations; renew the HTTPS listener's own
certificate at 2/3 of its lifetime (the workers pick the new files up for new connections: see
serving/tls.py); sign CRLs (appliance/status/crl_publisher.py, polled every second in a thread of its own) and
re-sign stored OCSP responses (pre-sign new ones only with `ocsp.presign`)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from appliance.config import CAConfig, load_config
from appliance.errors import CAError
from appliance.ra.authority import Authority, audit_for
from appliance.serving import logs
from appliance.serving.ocsp_refresh import refresher_for
from appliance.serving.tls import issue_server_certificate, renewal_due, tls_directory
from appliance.status.crl_publisher import CRLPublisher
from appliance.store import Store, StoreError
from policy import parse_duration

log = logging.getLogger("hsmca.housekeeping")

# Expired ACME objects stay this long (a client may still poll a failed order to read why), then go.
ACME_RETENTION = timedelta(days=7)
ACME_PURGE_BATCHES = 10  # per sweep: bounded work, short transactions


def sweep(store: Store, reservation_timeout: str) -> list[int]:
    abandoned = store.certificates.resolve_stale(parse_duration(reservation_timeout))
    for serial in abandoned:
        log.warning("reservation %d was left by an interrupted issuance; marked abandoned", serial)
    for serial in store.ssh.resolve_stale(parse_duration(reservation_timeout)):
        log.warning("SSH reservation %d was left by an interrupted issuance; marked abandoned (revocable)", serial)
    now = datetime.now(timezone.utc)
    purged = store.tokens.purge_expired(now)
    if purged:
        log.info("purged %d expired token ids", purged)
    acme = 0
    for _ in range(ACME_PURGE_BATCHES):
        done = store.acme.purge_expired(now - ACME_RETENTION)
        acme += done
        if not done:
            break
    if acme:
        log.info("purged %d expired ACME orders, authorizations and challenges", acme)
    return abandoned


def main() -> None:
    parser = argparse.ArgumentParser(description="hsmca housekeeping (started by `hsmca serve`)")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()
    logs.setup()
    config = load_config(args.config)
    store = Store.from_config(config.db.model_dump(), config.base_dir)
    stop = threading.Event()
    interval = parse_duration(config.server.housekeepingInterval).total_seconds()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    tls = ServerCertificateRenewer(config)
    ocsp = refresher_for(config, store)
    # CRLs are polled every second (a revocation must show within seconds), in a thread of their own.
    crl_audit = audit_for(config, store)
    publisher = CRLPublisher(config, store, audit=crl_audit)
    crls = threading.Thread(target=publisher.run, args=(stop,), name="crl", daemon=True)
    crls.start()
    next_sweep = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_sweep:
            next_sweep = time.monotonic() + interval
            try:
                sweep(store, config.server.reservationTimeout)
            except StoreError as exc:
                log.error("housekeeping sweep failed: %s", exc)
            ocsp.run()  # re-sign (and with ocsp.presign, pre-sign) OCSP responses under the lease (logs failures)
        tls_wait = tls.run()
        stop.wait(max(0.5, min(next_sweep - time.monotonic(), tls_wait)))
    crls.join(timeout=30)
    crl_audit.close()  # a checkpoint at shutdown seals the CRL signatures' records
    tls.close()
    store.close()


class ServerCertificateRenewer:
    """Re-issue the listener's certificate when 2/3 of its lifetime has passed; retry soon on failure."""

    RETRY = 5.0  # seconds

    def __init__(self, config: CAConfig):
        self.config = config
        self.directory = tls_directory(config)
        self.lifetime = parse_duration(config.server.tlsCertificateLifetime)
        self._authority: Authority | None = None  # opened on first renewal: the KMS key is only needed then

    def run(self) -> float:
        """Renew if due; return the seconds until the next look."""
        due = renewal_due(self.directory / "server.crt")
        left = (due - datetime.now(timezone.utc)).total_seconds()
        if left > 0:
            return left
        try:
            if self._authority is None:
                self.config.apply_kms_environment()
                self._authority = Authority.from_config(self.config)
            cert, _ = issue_server_certificate(self._authority, self.directory, self.lifetime)
        except (CAError, StoreError, OSError) as exc:
            log.error("renewing the server's TLS certificate failed (retrying in %.0f s): %s", self.RETRY,
                      getattr(exc, "message", exc))
            return self.RETRY
        log.info("renewed the server's TLS certificate (%s), next renewal at %s", cert,
                 renewal_due(cert).isoformat(timespec="seconds"))
        return max(0.5, (renewal_due(cert) - datetime.now(timezone.utc)).total_seconds())

    def close(self) -> None:
        if self._authority is not None:
            self._authority.close()


if __name__ == "__main__":
    main()
