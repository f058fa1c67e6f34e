"""The OCSP responder (RFC 6960, RFC 5019 profile): parse, find the issuing intermediate, answer from cache or sign.

A certificate's response for a SHA-1 CertID (what RFC 5019 clients send) is signed at its first request and
stored (`ocsp_responses`), so every later request, in any process or replica, reads it with one query that also
joins the revocations (a revocation changes the answer at once); housekeeping re-signs the stored ones past half
their validity, and pre-signs every new certificate's only with `ocsp.presign` (see README, design decisions).
Concurrent first requests for one certificate share one signature (single_flight.py). A stale row, a SHA-256
CertID (the cache holds one CertID form per serial) and an echoed nonce are signed on the spot; an unknown
serial too, within a budget (budget.py), then `unauthorized`. Signed by the issuing intermediate's key through
kms, or by a delegated responder (ocsp_delegation.py); responderID by key hash.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp

from appliance.ca import tbs
from appliance.ca.active import ActiveIssuer
from appliance.ca.issuer import Issuer
from appliance.certutil import read_extensions, verify_signature
from appliance.config import CAConfig
from appliance.errors import CAError
from appliance.status.budget import Budget
from appliance.status.ocsp_delegation import Delegate, delegate_for, load_delegates, open_delegate_key
from appliance.status.single_flight import SingleFlight
from appliance.store import IntermediateRecord, RevocationReason, Store, StoreError
from appliance.store.ocsp import CertificateStatusRow
from appliance.store.records import MAX_SERIAL
from kms import default_hash
from kms.errors import KMSError
from kms.keyspec import SigningHash
from kms.signer import CAKey
from policy import parse_duration

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096  # one CertID and a nonce take ~120 bytes; RFC 5019 GETs stay under 255
ISSUER_INDEX_TTL = 60.0  # seconds before the intermediates are read again
ISSUER_MISS_PAUSE = 5.0  # at most one re-read per this many seconds for an issuer hash we do not know
UNKNOWN_MEMO_SIZE = 10_000  # per process: random serials must not each cost a KMS signature
UNKNOWN_MEMO_SECONDS = 300
# Signed `unknown` answers per process: a few at once, then one a second; past that, unsigned `unauthorized`
# (RFC 5019 §2.2.3: a responder that cannot answer authoritatively; what Boulder answers for any serial it has
# no response for).
UNKNOWN_SIGNATURES_BURST = 10
UNKNOWN_SIGNATURES_PER_SECOND = 1.0
FLIGHT_WAIT = 30.0  # seconds a request waits for the same certificate's signature made for another request
CERT_ID_HASHES: tuple[hashes.HashAlgorithm, ...] = (hashes.SHA1(), hashes.SHA256())



def _unsuccessful(status: ocsp.OCSPResponseStatus) -> bytes:
    return ocsp.OCSPResponseBuilder.build_unsuccessful(status).public_bytes(Encoding.DER)


MALFORMED = _unsuccessful(ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
UNAUTHORIZED = _unsuccessful(ocsp.OCSPResponseStatus.UNAUTHORIZED)
TRY_LATER = _unsuccessful(ocsp.OCSPResponseStatus.TRY_LATER)
INTERNAL_ERROR = _unsuccessful(ocsp.OCSPResponseStatus.INTERNAL_ERROR)


@dataclass(frozen=True)
class Answer:
    """The DER to send; the times bound how long HTTP caches may keep it (None: do not cache)."""

    der: bytes
    this_update: datetime | None = None
    next_update: datetime | None = None
    cached: bool = False  # from the database's stored responses
    status: str = "error"  # good | revoked | unknown | malformed | unauthorized | tryLater | internalError
    memory: bool = False  # from the plain-HTTP listener's memory (ocsp_memo.py)


@dataclass(frozen=True)
class KnownIssuer:
    """An intermediate we answer for, and its CertID hashes (SHA-1 and SHA-256)."""

    record: IntermediateRecord
    certificate: x509.Certificate
    cert_ids: dict[str, tuple[bytes, bytes]]  # hash name -> (issuer name hash, issuer key hash)
    delegate: Delegate | None = None  # a delegated responder that signs in its place

    @property
    def id(self) -> str:
        return self.record.id


def cert_id_hashes(issuer: x509.Certificate, algorithm: hashes.HashAlgorithm) -> tuple[bytes, bytes]:
    """RFC 6960 §4.1.1: hash of the issuer's DER name and of its public key's BIT STRING value."""
    name = issuer.subject.public_bytes()
    key = _key_bits(issuer.public_key())
    return _digest(algorithm, name), _digest(algorithm, key)


def _digest(algorithm: hashes.HashAlgorithm, data: bytes) -> bytes:
    h = hashes.Hash(algorithm)
    h.update(data)
    return h.finalize()


def _key_bits(public_key: object) -> bytes:
    """The subjectPublicKey BIT STRING's content, in the encoding each key family puts there."""
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return public_key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    if isinstance(public_key, rsa.RSAPublicKey):
        return public_key.public_bytes(Encoding.DER, PublicFormat.PKCS1)
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    raise TypeError(f"unsupported intermediate key type {type(public_key).__name__}")


class OCSPResponder:
    """Answers OCSP requests for the intermediates in the store (active, or retired and unexpired)."""

    def __init__(self, config: CAConfig, store: Store, issuers: ActiveIssuer):
        self.store, self.issuers = store, issuers
        self.validity = parse_duration(config.ocsp.validity)
        self.echo_nonce = config.ocsp.echoNonce
        self.config = config
        self.delegates = load_delegates(config)
        self._delegate_keys: dict[str, CAKey] = {}
        self._index: dict[tuple[str, bytes, bytes], KnownIssuer] = {}
        self._by_id: dict[str, KnownIssuer] = {}
        self._read_at = -1e9
        self._miss_at = -1e9
        self._lock = threading.Lock()
        self._unknown: OrderedDict[tuple[str, str, int], Answer] = OrderedDict()
        self._unknown_budget = Budget(UNKNOWN_SIGNATURES_PER_SECOND, UNKNOWN_SIGNATURES_BURST)
        self._flights: SingleFlight[tuple[str, str, int], Answer] = SingleFlight()

    # -- requests ------------------------------------------------------------------------------

    def respond(self, request_der: bytes, now: datetime | None = None) -> Answer:
        """The response to one DER request; never raises (errors become unsigned OCSP error responses)."""
        now = now or datetime.now(UTC)
        parsed = parse_request(request_der)
        if isinstance(parsed, Answer):
            return parsed
        serial, algorithm, nonce = parsed.serial, parsed.algorithm, parsed.nonce
        try:
            known = self._issuer_for(algorithm.name, parsed.name_hash, parsed.key_hash, now)
            if known is None or not 0 < serial <= MAX_SERIAL:  # not our issuer, or a serial no CA issues
                return Answer(UNAUTHORIZED, status="unauthorized")
            if nonce is not None and self.echo_nonce:  # a signature per request, by configuration
                return self._answer(known, serial, algorithm, now, nonce=nonce)
            cacheable = isinstance(algorithm, hashes.SHA1)
            if cacheable and (hit := self._cached(known, serial, now)) is not None:
                return hit
            key = (algorithm.name, known.id, serial)
            if (memo := self._unknown_memo(key, now)) is not None:
                return memo
            # The first request for this certificate (or a stale row): one signature however many ask at once.
            return self._flights.run(key, lambda: self._first(known, serial, algorithm, now, cacheable),
                                     FLIGHT_WAIT)
        except (StoreError, KMSError, CAError, TimeoutError) as exc:  # database or signing backend down or slow
            log.warning("OCSP request for serial %x answered tryLater: %s", serial, exc)
            return Answer(TRY_LATER, status="tryLater")

    def _first(self, known: KnownIssuer, serial: int, algorithm: hashes.HashAlgorithm, now: datetime,
               cacheable: bool) -> Answer:
        """Sign (and store, for a SHA-1 CertID) what no earlier request left in the cache."""
        if cacheable and (hit := self._cached(known, serial, now)) is not None:
            return hit  # stored by another process while this one waited for the database
        answer = self._answer(known, serial, algorithm, now, nonce=None, store=cacheable)
        if answer.status == "unknown":
            self._remember_unknown((algorithm.name, known.id, serial), answer)
        return answer

    def _cached(self, known: KnownIssuer, serial: int, now: datetime) -> Answer | None:
        """The stored response, if it is this issuer's, still true (not "good" for a revoked serial) and has more
        than a quarter of its validity left."""
        hit = self.store.ocsp.cached(serial)
        if hit is None or hit.issuer != known.id or (hit.status == "good" and hit.revoked) \
                or hit.next_update - now <= self.validity / 4:
            return None
        return Answer(hit.der, hit.this_update, hit.next_update, cached=True, status=hit.status)

    def _answer(self, known: KnownIssuer, serial: int, algorithm: hashes.HashAlgorithm, now: datetime, *,
                nonce: bytes | None, store: bool = False) -> Answer:
        """A signed answer about `serial`; for one this CA never issued, signed only within the unknown-serial
        budget, else an unsigned `unauthorized` (so made-up serials cannot make the KMS sign at their rate)."""
        row = self.store.ocsp.status(serial)
        if row is None or row.issuer != known.id or not row.issued:
            if not self._unknown_budget.take():
                return Answer(UNAUTHORIZED, status="unauthorized")
            row = None
        return self._sign(known, serial, algorithm, row, now, nonce=nonce, store=store)

    def fresh_until(self, answer: Answer) -> datetime | None:
        """Until when `answer` may be served again without asking: while more than a quarter of its validity
        is left (the rule the stored responses follow); None for answers that must not be kept."""
        if answer.status not in ("good", "revoked") or answer.next_update is None:
            return None
        return answer.next_update - self.validity / 4

    # -- re-signing and pre-signing (housekeeping) ------------------------------------------

    def presign(self, serial: int, now: datetime | None = None) -> str | None:
        """Sign and store the SHA-1 CertID response for `serial`; its status, or None if not ours to cache."""
        now = now or datetime.now(UTC)
        row = self.store.ocsp.status(serial)
        if row is None or not row.issued:
            return None
        known = self._known_by_id(row.issuer, now)
        if known is None:
            return None
        return self._sign(known, serial, hashes.SHA1(), row, now, nonce=None, store=True).status

    # -- internals ----------------------------------------------------------------------------

    def _sign(self, known: KnownIssuer, serial: int, algorithm: hashes.HashAlgorithm,
              row: CertificateStatusRow | None, now: datetime, *, nonce: bytes | None, store: bool) -> Answer:
        """Sign what `row` (read just before) says about `serial`; None or not this issuer's: `unknown`."""
        if row is None or row.issuer != known.id or not row.issued:
            status, cert_status = "unknown", ocsp.OCSPCertStatus.UNKNOWN
        elif row.revoked_at is not None:
            status, cert_status = "revoked", ocsp.OCSPCertStatus.REVOKED
        else:
            status, cert_status = "good", ocsp.OCSPCertStatus.GOOD
        this_update = now.replace(microsecond=0)
        next_update = this_update + self.validity
        if known.delegate is not None:  # never vouch past the responder certificate's own validity
            next_update = min(next_update, known.delegate.certificate.not_valid_after_utc)
        name_hash, key_hash = known.cert_ids[algorithm.name]
        reason = None
        if row is not None and row.reason_code not in (None, RevocationReason.UNSPECIFIED):
            reason = RevocationReason(row.reason_code).flag
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=name_hash, issuer_key_hash=key_hash, serial_number=serial, algorithm=algorithm,
            cert_status=cert_status, this_update=this_update, next_update=next_update,
            revocation_time=row.revoked_at if status == "revoked" and row else None,
            revocation_reason=reason if status == "revoked" else None,
        )
        key, algorithm_hash, signer_cert = self._signing_key(known)
        builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer_cert)
        if known.delegate is not None:  # the relying party needs its certificate to check the signature
            builder = builder.certificates([signer_cert])
        if nonce is not None:
            builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
        response = builder.sign(tbs.timed(key), algorithm_hash)
        _check_signature(response, signer_cert)
        der = response.public_bytes(Encoding.DER)
        if store and status != "unknown":
            self.store.ocsp.put(serial, known.id, status, this_update, next_update, der)
        return Answer(der, this_update, next_update, status=status)

    def _unknown_memo(self, key: tuple[str, str, int], now: datetime) -> Answer | None:
        """A recent `unknown` answer for the same CertID (nobody but the CA knows a serial before it is issued)."""
        with self._lock:
            found = self._unknown.get(key)
        if found is None or found.this_update is None \
                or (now - found.this_update).total_seconds() > UNKNOWN_MEMO_SECONDS:
            return None
        return found

    def _remember_unknown(self, key: tuple[str, str, int], answer: Answer) -> None:
        with self._lock:
            self._unknown[key] = answer
            while len(self._unknown) > UNKNOWN_MEMO_SIZE:
                self._unknown.popitem(last=False)

    def _signing_key(self, known: KnownIssuer) -> tuple[CAKey, SigningHash | None, x509.Certificate]:
        """The delegated responder's key when one is configured for this intermediate, else the intermediate's
        (either opened once per process)."""
        if known.delegate is None:
            issuer: Issuer = self.issuers.issuer_for(known.record)
            return issuer.key, issuer.hash, known.certificate
        uri = known.delegate.key_uri
        with self._lock:
            key = self._delegate_keys.get(uri)
            if key is None:
                key = self._delegate_keys[uri] = open_delegate_key(self.config, known.delegate)
        return key, default_hash(key), known.delegate.certificate

    def _issuer_for(self, hash_name: str, name_hash: bytes, key_hash: bytes, now: datetime) -> KnownIssuer | None:
        key = (hash_name, name_hash, key_hash)
        self._refresh(now, force=False)
        found = self._index.get(key)
        if found is None and time.monotonic() - self._miss_at > ISSUER_MISS_PAUSE:
            self._miss_at = time.monotonic()  # a new intermediate may have been installed since the last read
            self._refresh(now, force=True)
            found = self._index.get(key)
        if found is not None and not _serves(found.record, now):
            return None
        return found

    def _known_by_id(self, ident: str, now: datetime) -> KnownIssuer | None:
        self._refresh(now, force=ident not in self._by_id)
        found = self._by_id.get(ident)
        return found if found is not None and _serves(found.record, now) else None

    def _refresh(self, now: datetime, *, force: bool) -> None:
        if not force and time.monotonic() - self._read_at < ISSUER_INDEX_TTL:
            return
        with self._lock:
            index: dict[tuple[str, bytes, bytes], KnownIssuer] = {}
            by_id: dict[str, KnownIssuer] = {}
            for rec in self.store.intermediates.list():
                if rec.certificate is None or not _serves(rec, now):
                    continue
                cert = x509.load_der_x509_certificate(rec.certificate)
                ids = {h.name: cert_id_hashes(cert, h) for h in CERT_ID_HASHES}
                known = by_id[rec.id] = KnownIssuer(rec, cert, ids, delegate_for(self.delegates, cert, now))
                for name, (nh, kh) in ids.items():
                    index[(name, nh, kh)] = known
            self._index, self._by_id, self._read_at = index, by_id, time.monotonic()


def _serves(rec: IntermediateRecord, now: datetime) -> bool:
    """Active or retired (it signed certificates), and not expired: RFC 6960 needs a valid signer."""
    return rec.certificate is not None and rec.activate_at is not None and rec.activate_at <= now \
        and (rec.not_after is None or rec.not_after > now)


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """The one CertID of a request, its nonce, and whether it carries any other extension."""

    serial: int
    algorithm: hashes.HashAlgorithm
    name_hash: bytes
    key_hash: bytes
    nonce: bytes | None
    other_extensions: bool = False

    @property
    def cert_id(self) -> bytes:
        """The CertID as one bytes key (0x00 first: no DER request starts with it)."""
        return b"\x00" + self.algorithm.name.encode() + b"\x00" + self.name_hash + self.key_hash \
            + self.serial.to_bytes(self.serial.bit_length() // 8 + 1, "big", signed=True)


def parse_request(request_der: bytes) -> ParsedRequest | Answer:
    """The request's CertID, or the error response it deserves."""
    try:
        req = ocsp.load_der_ocsp_request(request_der)
        nonce, others = _extensions(req)
        return ParsedRequest(req.serial_number, req.hash_algorithm, req.issuer_name_hash, req.issuer_key_hash,
                             nonce, others)
    except UnsupportedAlgorithm:  # a CertID hash we do not index: not for us to answer
        return Answer(UNAUTHORIZED, status="unauthorized")
    except (ValueError, NotImplementedError):  # bad DER, several CertIDs, duplicate extensions
        return Answer(MALFORMED, status="malformed")


def _extensions(req: ocsp.OCSPRequest) -> tuple[bytes | None, bool]:
    """The nonce, and whether any other extension is there (ignored when answering; see ocsp_memo.py)."""
    nonce, others = None, False
    for ext in read_extensions(req):
        if isinstance(ext.value, x509.OCSPNonce):
            nonce = ext.value.nonce
        else:
            others = True
    return nonce, others


def _check_signature(response: ocsp.OCSPResponse, signer: x509.Certificate) -> None:
    """Verify what the KMS returned before it is stored or sent (a faulty signer is caught here)."""
    try:
        verify_signature(signer.public_key(), response.signature, response.tbs_response_bytes,
                         response.signature_hash_algorithm, None)
    except InvalidSignature:
        raise CAError("the OCSP response's signature does not verify with its signer's key") from None


def sha1(data: bytes) -> bytes:
    """SHA-1 of `data` (ETags of GET responses)."""
    return hashlib.sha1(data, usedforsecurity=False).digest()

