"""CRLs: build one intermediate's CRL from the store's revocations, sign it through kms/, serve the latest.

The entries are handed to `CertificateRevocationListBuilder` at construction, as one list streamed from
the database: adding them one `add_revoked_certificate` call at a time copies the list each time
(quadratic), which a million-entry CRL cannot afford. Signing happens in the housekeeping process
(appliance/status/crl_publisher.py), never on a request; the web workers only read what was stored.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.ca import tbs
from appliance.ca.issuer import Issuer
from appliance.certutil import der, verify_signature
from appliance.errors import CAError, ServiceUnavailable
from appliance.store import CRLInfo, CRLRecord, RevocationReason, Store, StoreError
from kms.errors import BackendUnavailable, KMSError

# The DER of a CRL entry's reasonCode extension (RFC 5280 §5.3.1), per code; unspecified has none (the
# extension SHOULD be absent then): SEQUENCE { SEQUENCE { OID 2.5.29.21, OCTET STRING { ENUMERATED code } } }.
_REASON_DER: dict[int, bytes] = {
    int(code): bytes((0x30, 12, 0x30, 10, 0x06, 3, 0x55, 0x1D, 0x15, 0x04, 3, 0x0A, 1, int(code)))
    for code in RevocationReason if code is not RevocationReason.UNSPECIFIED}
# A CRL wrapped around the entries only so that cryptography parses them: its other fields are placeholders.
_WRAP_PREFIX = bytes.fromhex("020101" "300a06082a8648ce3d040302" "300f310d300b06035504030c0477726170"
                             "170d3236303130313030303030305a")
_WRAP_SUFFIX = bytes.fromhex("300a06082a8648ce3d040302" "03090030060201010201" "01")


def revoked_entries(rows: Iterable[tuple[int, datetime, int]]) -> list[x509.RevokedCertificate]:
    """One entry per (serial, revocation time, reason code), for the builder's constructor.

    Encoded here and parsed back by cryptography, on purpose: `RevokedCertificateBuilder(...).build()` costs
    6 us per entry with a reason (cryptography 50, measured), 8 s of a million-entry CRL's 15-s budget; this
    DER encoding and one `load_der_x509_crl` of all of them cost under 3 s. Each entry is
    SEQUENCE { INTEGER serial, Time revocationDate, [SEQUENCE OF Extension] } (RFC 5280 §5.1), every
    part shorter than 128 bytes (so one-byte lengths); cryptography's parser checks what comes out, and its
    builder re-encodes the entries into the CRL it signs.
    """
    reasons = _REASON_DER
    parts: list[bytes] = []
    append = parts.append
    for serial, at, code in rows:
        if at.tzinfo is not None:
            at = at.astimezone(timezone.utc)
        if not 0 < serial < 1 << 159:
            raise ValueError(f"serial {serial} is out of RFC 5280's range")
        number = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
        if at.year < 2050:  # RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime after
            when = b"\x17\x0d%02d%02d%02d%02d%02d%02dZ" % (at.year % 100, at.month, at.day, at.hour, at.minute,
                                                           at.second)
        else:
            when = b"\x18\x0f%04d%02d%02d%02d%02d%02dZ" % (at.year, at.month, at.day, at.hour, at.minute, at.second)
        reason = reasons.get(code, b"")
        append(b"\x30" + bytes((2 + len(number) + len(when) + len(reason), 0x02, len(number))) + number + when
               + reason)
    entries = b"".join(parts)
    tbs = _WRAP_PREFIX + der(0x30, entries)
    wrapped = der(0x30, der(0x30, tbs) + _WRAP_SUFFIX)
    return list(x509.load_der_x509_crl(wrapped))


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
        entries = revoked_entries(store.crls.entries(issuer.id, expired_before=now))
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
        info = self.store.crls.latest_info(issuer_id)
        if info is None:
            raise ServiceUnavailable("no CRL has been signed yet for this intermediate; the housekeeping "
                                     "process of `hsmca serve` signs one within seconds")
        with self._lock:
            cached = self._cache.get(issuer_id)
        if cached is not None and cached.info.number == info.number:
            return cached
        found = self.store.crls.get(issuer_id, info.number)
        if found is None:  # pruned between the two queries: a newer one exists
            return self.latest(issuer_id)
        with self._lock:
            self._cache[issuer_id] = found
        return found
