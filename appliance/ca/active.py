"""Which intermediate signs this request: the database decides, each worker keeps the opened keys.

One indexed query per issuance (`IntermediateStore.active_id`), so an activation reaches every
worker and every replica at its time without a restart; the certificate and the KMS key of each
intermediate are loaded once per process.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone

from cryptography import x509

from appliance.ca.intermediates import listing
from appliance.ca.issuer import Issuer
from appliance.ca.urls import certificate_urls
from appliance.config import CAConfig, ConfigError
from appliance.errors import ServiceUnavailable
from appliance.store import IntermediateRecord, IntermediateState, Store
from kms import open_key
from kms.errors import KMSError


class ActiveIssuer:
    """Which intermediate signs now: asked of the database per issuance, keys opened once per process."""

    def __init__(self, config: CAConfig, store: Store):
        self.config, self.store = config, store
        self._issuers: dict[str, Issuer] = {}
        self._lock = threading.Lock()

    def current(self, now: datetime | None = None) -> Issuer:
        now = now or _now()
        active = self.store.intermediates.active_id(now)
        issuer = self._issuers.get(active[0]) if active else None
        if active is not None and issuer is None:
            rec = self.store.intermediates.get(active[0])
            issuer = self.issuer_for(rec) if rec is not None and rec.certificate is not None else None
        if active is None or issuer is None:
            raise ServiceUnavailable("no active intermediate: install one and activate it "
                                     "(hsmca intermediate install CERT --activate-at now)")
        if active[1] is not None and active[1] <= now:
            raise ServiceUnavailable(f"the active intermediate ({issuer.certificate.subject.rfc4514_string()}) "
                                     f"expired at {active[1]}; activate its successor")
        return issuer

    def issuer_for(self, rec: IntermediateRecord) -> Issuer:
        with self._lock:
            issuer = self._issuers.get(rec.id)
            if issuer is None:
                assert rec.certificate is not None
                self.config.apply_kms_environment()
                try:
                    key = open_key(self.config.key_uri(rec.key_uri))
                except (KMSError, ConfigError) as exc:
                    raise ServiceUnavailable(f"signing backend unavailable for intermediate {rec.name!r}: "
                                             f"{exc}") from None
                cert = x509.load_der_x509_certificate(rec.certificate)
                extra = x509.load_pem_x509_certificates(rec.chain) if rec.chain else []
                issuer = self._issuers[rec.id] = Issuer(key, cert, issuer_id=rec.id, chain=extra,
                                                         urls=certificate_urls(self.config))
            return issuer

    def published(self, now: datetime | None = None) -> list[x509.Certificate]:
        """What `/intermediates` serves: the active one first, then the others still valid."""
        now = now or _now()
        items = listing(self.store, now)
        order = {IntermediateState.ACTIVE: 0, IntermediateState.PENDING: 1, IntermediateState.RETIRED: 2}
        chosen = sorted((i for i in items if i.record.certificate is not None and i.state in order
                         and (i.record.not_after is None or i.record.not_after > now)),
                        key=lambda i: order[i.state])
        return [x509.load_der_x509_certificate(i.record.certificate) for i in chosen
                if i.record.certificate is not None]


def _now() -> datetime:
    return datetime.now(timezone.utc)
