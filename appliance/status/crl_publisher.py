"""Keep every intermediate's CRL current: polled about once a second by the housekeeping process.

A new CRL is due when the intermediate's revocation revision moved past the one the latest CRL covers
(so a revocation shows within seconds), when the latest is past half of its validity, or when there is
none. Only one replica signs at a time: the work for intermediate X happens under the database lease
`crl:X`, and the condition is checked again once the lease is held, so two replicas polling the same
database make one CRL per revision, never two with the same number.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import datetime, timedelta, timezone

from appliance.audit import AuditEvent, AuditLog, JsonLinesAudit
from appliance.ca.active import ActiveIssuer
from appliance.config import CAConfig
from appliance.errors import CAError
from appliance.status.crl import sign_crl
from appliance.store import (
    CRLInfo,
    CRLNumberTaken,
    IntermediateRecord,
    IntermediateState,
    Store,
    StoreError,
    intermediate_state,
)
from policy import parse_duration

log = logging.getLogger("hsmca.crl")

LEASE_TTL = timedelta(minutes=2)  # above the time a million-entry CRL takes to sign
POLL_INTERVAL = 1.0  # seconds: a revocation shows in the CRL within about this, plus the signing time


def default_holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def due(latest: CRLInfo | None, revision: int, now: datetime) -> str | None:
    """Why a new CRL is needed now, or None."""
    if latest is None:
        return "no CRL yet"
    if latest.revision != revision:
        return f"revocations changed (revision {latest.revision} → {revision})"
    if now >= latest.this_update + (latest.next_update - latest.this_update) / 2:
        return "the latest CRL is past half of its validity"
    return None


def covered(rec: IntermediateRecord, active_id: str | None, now: datetime) -> bool:
    """Intermediates that publish CRLs: active or retired, with a certificate that has not expired."""
    if rec.certificate is None or (rec.not_after is not None and rec.not_after <= now):
        return False
    return intermediate_state(rec, active_id, now) in (IntermediateState.ACTIVE, IntermediateState.RETIRED)


class CRLPublisher:
    def __init__(self, config: CAConfig, store: Store, *, holder: str | None = None,
                 issuers: ActiveIssuer | None = None, audit: AuditLog | None = None):
        self.store = store
        self.audit = audit or JsonLinesAudit(config.resolve(config.audit.path))  # a CRL signature is key use
        self.holder = holder or default_holder()
        self.validity = parse_duration(config.crl.validity)
        self.issuers = issuers or ActiveIssuer(config, store)  # opens each intermediate's KMS key once

    def run_once(self, now: datetime | None = None) -> list[CRLInfo]:
        """Sign what is due; errors are logged per intermediate (one failing never blocks the others)."""
        now = now or datetime.now(timezone.utc)
        made: list[CRLInfo] = []
        try:
            active = self.store.intermediates.active_id(now)
            active_id = active[0] if active else None
            intermediates = [r for r in self.store.intermediates.list() if covered(r, active_id, now)]
        except StoreError as exc:
            log.error("CRL: cannot list intermediates: %s", exc)
            return made
        for rec in intermediates:
            try:
                info = self.publish(rec, now)
            except (CAError, StoreError) as exc:
                log.error("CRL for %s (%s) failed: %s", rec.name, rec.id[:16], getattr(exc, "message", exc))
                continue
            if info is not None:
                made.append(info)
        return made

    def publish(self, rec: IntermediateRecord, now: datetime) -> CRLInfo | None:
        """Sign and store a new CRL for `rec` if one is due and this holder gets the lease."""
        if due(self.store.crls.latest_info(rec.id), self.store.revocations.revision(rec.id), now) is None:
            return None
        lease = f"crl:{rec.id}"
        if not self.store.leases.take(lease, self.holder, LEASE_TTL, now):
            return None
        try:
            # Again under the lease: another replica may have published between the first look and now.
            # The revision is read before the entries are streamed, so the CRL holds at least what it claims.
            latest, revision = self.store.crls.latest_info(rec.id), self.store.revocations.revision(rec.id)
            why = due(latest, revision, now)
            if why is None:
                return None
            issuer = self.issuers.issuer_for(rec)
            record = sign_crl(issuer, self.store, number=self.store.crls.next_number(rec.id), revision=revision,
                              validity=self.validity)
            try:
                self.store.crls.add(record)
            except CRLNumberTaken as exc:  # the lease expired under a very slow signature
                log.warning("CRL for %s not stored: %s", rec.name, exc)
                return None
            i = record.info
            self._audit(rec, i, why)
            log.info("CRL %d for %s: %d entries, next update %s (%s)", i.number, rec.name, i.entries,
                     i.next_update.isoformat(timespec="seconds"), why)
            return i
        finally:
            try:
                self.store.leases.release(lease, self.holder)
            except StoreError as exc:
                log.warning("could not release lease %s (it expires by itself): %s", lease, exc)

    def _audit(self, rec: IntermediateRecord, info: CRLInfo, why: str) -> None:
        try:
            self.audit.record(AuditEvent(
                action="x509.crl", decision="allowed", request_id=f"crl:{self.holder}", provisioner="hsmca:crl",
                details={"issuer": rec.id, "intermediate": rec.name, "number": info.number, "entries": info.entries,
                         "revision": info.revision, "thisUpdate": info.this_update.isoformat(),
                         "nextUpdate": info.next_update.isoformat(), "why": why}))
        except OSError as exc:  # the CRL is published already; say loudly that its record is missing
            log.error("cannot write the audit record of CRL %d for %s: %s", info.number, rec.name, exc)

    def run(self, stop: threading.Event, interval: float = POLL_INTERVAL) -> None:
        """Poll until `stop` is set (the housekeeping process runs this in a thread of its own)."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - a bug must not end CRL publishing silently
                log.exception("CRL publishing failed; retrying")
            stop.wait(interval)
