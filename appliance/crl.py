"""CRLs: build one intermediate's CRL from the store's revocations, sign it through kms/, serve the latest.

The entries are handed to `CertificateRevocationListBuilder` at construction, as one list streamed from
the database: adding them one `add_revoked_certificate` call at a time copies the list each time
(quadratic), which a million-entry CRL cannot afford. Signing happens in the housekeeping process
(appliance/crl_publisher.py), never on a request; the web workers only read what was stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from appliance import tbs
from appliance.certutil import verify_signature
from appliance.errors import CAError, ServiceUnavailable
from appliance.issuer import Issuer
from appliance.store import CRLInfo, CRLRecord, RevocationReason, Store, StoreError
from kms.errors import BackendUnavailable, KMSError

# One shared extension list per reason; unspecified has none (RFC 5280 §5.3.1: the extension SHOULD be absent).
_REASON_EXTENSIONS: dict[int, list[x509.Extension[x509.ExtensionType]]] = {
    code: [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(code.flag))]
    for code in RevocationReason if code is not RevocationReason.UNSPECIFIED}
_NO_EXTENSIONS: list[x509.Extension[x509.ExtensionType]] = []


def revoked_entries(rows: Iterable[tuple[int, datetime, int]]) -> list[x509.RevokedCertificate]:
    """One entry per (serial, revocation time, reason code); the builder's constructor form (one object per
    entry, no copies), the reason extension lists shared."""
    build = x509.RevokedCertificateBuilder
    reasons = _REASON_EXTENSIONS
    none = _NO_EXTENSIONS
    return [build(serial, at, reasons.get(code, none)).build() for serial, at, code in rows]


def build_crl(issuer: Issuer, entries: list[x509.RevokedCertificate], number: int, this_update: datetime,
              next_update: datetime) -> x509.CertificateRevocationList:
    """Sign the CRL with the intermediate's KMS key (the same adapter that signs its certificates)."""
    ski = issuer.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    extensions: list[x509.Extension[x509.ExtensionType]] = [
        x509.Extension(x509.CRLNumber.oid, False, x509.CRLNumber(number)),
        x509.Extension(x509.AuthorityKeyIdentifier.oid, False,
                       x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)),
    ]
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer.certificate.subject, last_update=this_update, next_update=next_update,
        extensions=extensions, revoked_certificates=entries)
    seen: list[tuple[bytes, bytes]] = []
    crl = builder.sign(tbs.recording(issuer.key, seen), issuer.hash)
    # A faulty signer is caught before publishing. Checked over the bytes the key was given (re-encoding a
    # million-entry CRL to check it, as `is_signature_valid` does, costs seconds).
    data, signature = seen[-1]
    verify_signature(issuer.key.public_key(), signature, data, crl.signature_hash_algorithm,
                     crl.signature_algorithm_parameters)
    return crl


def sign_crl(issuer: Issuer, store: Store, *, number: int, revision: int, validity: timedelta,
             now: datetime | None = None) -> CRLRecord:
    """The issuer's CRL as of now: every revocation of a certificate that has not yet expired."""
    now = (now or datetime.now(timezone.utc)).replace(microsecond=0)  # X.509 times carry whole seconds
    try:
        entries = revoked_entries(store.stream_crl_entries(issuer.id, expired_before=now))
        crl = build_crl(issuer, entries, number, now, now + validity)
    except StoreError as exc:
        raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
    except BackendUnavailable as exc:
        raise ServiceUnavailable(f"signing backend unavailable: {exc}") from None
    except (KMSError, InvalidSignature) as exc:
        raise CAError(f"signing the CRL failed: {exc}") from None
    info = CRLInfo(issuer.id, number, crl.last_update_utc, crl.next_update_utc or now + validity, revision,
                   len(entries))
    return CRLRecord(info, crl.public_bytes(Encoding.DER))


class PublishedCRLs:
    """What `/crl` serves: the latest stored CRL, fetched once per new number (one small query per request)."""

    def __init__(self, store: Store):
        self.store = store
        self._cache: dict[str, CRLRecord] = {}
        self._lock = threading.Lock()

    def latest(self, issuer_id: str) -> CRLRecord:
        try:
            info = self.store.latest_crl_info(issuer_id)
            if info is None:
                raise ServiceUnavailable("no CRL has been signed yet for this intermediate; the housekeeping "
                                         "process of `hsmca serve` signs one within seconds")
            with self._lock:
                cached = self._cache.get(issuer_id)
            if cached is not None and cached.info.number == info.number:
                return cached
            found = self.store.get_crl(issuer_id, info.number)
        except StoreError as exc:
            raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
        if found is None:  # pruned between the two queries: a newer one exists
            return self.latest(issuer_id)
        with self._lock:
            self._cache[issuer_id] = found
        return found
