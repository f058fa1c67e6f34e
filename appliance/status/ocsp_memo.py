"""Signed OCSP responses kept in the plain-HTTP listener's memory, so a repeated request costs a dictionary
lookup instead of a database query (the listener answers those on its event loop, see serving/http_server.py).

Keys: the request's exact DER (what a client without a nonce sends every time), and its CertID (for clients
that add a nonce, which the responder ignores unless `ocsp.echoNonce`). Only "good" and "revoked" answers are
kept, each until a quarter of its validity is left (the stored responses' rule), and never longer than the
revocation signals below allow:

- a revocation on this host rewrites `run/revocations.stamp` (revocation_stamp.py) after its commit; every
  entry carries the stamp read *before* its database read, and a lookup compares it with the current one, so
  no "good" survives a local revocation by even one request;
- a revocation on another host (replicas sharing PostgreSQL) is seen by revocation_stamp.EpochPoller's poll of
  the database's revocation epoch every POLL_SECONDS, which then rewrites the local stamp: a remote
  revocation reaches this memory within that interval.

Bounded twice: `size` keys and `max_bytes` bytes (`ocsp.memorySize`, `ocsp.memoryBytes`). An entry count alone
let an attacker fill it with big keys: ~150,000 nonce-less requests of ~4 KB, each with a different unknown
extension and sent as ~8 KB GETs, grew each listener from 108 to 579 MiB, every request remembered under its
DER and its GET path. So a key costs its bytes, its answer's DER and ENTRY_OVERHEAD (counted per key even when
keys share an answer: an over-estimate, never an under-one); and a request is remembered under its own bytes
only when they can only be the plain spelling of its CertID (no extension but the nonce, at most
MAX_REQUEST_KEY bytes; a GET path at most MAX_PATH_KEY). Anything else is still answered from its CertID's
entry, which every spelling shares.
"""

from __future__ import annotations

import dataclasses
import logging
import threading

from appliance.status.ocsp import Answer, OCSPResponder, ParsedRequest, parse_request
from appliance.status.stamp import StampReader

log = logging.getLogger(__name__)

EVICT_FRACTION = 8  # when over a bound, the oldest keys go until 1/8 of it is free
# Python's own bytes per key beyond the key's and the answer's DER, measured with tracemalloc over memories of
# 11,000 to 45,000 CertID-only keys (the dearest shape: every key with an answer object of its own): 442-470.
ENTRY_OVERHEAD = 512
MAX_REQUEST_KEY = 256  # a nonce-less SHA-256 CertID request is ~115 bytes; RFC 5019 keeps GETs under 255
MAX_PATH_KEY = 512  # "\x01GET" + the GET target: the base64 of MAX_REQUEST_KEY bytes, partly %-encoded


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    answer: Answer
    serve_until: float  # POSIX seconds
    stamp: bytes


class OCSPMemo:
    """`lookup` is memory only (safe on an event loop); `answer` may query and sign (run it in a thread).
    Writes take a lock: the loop's thread and the pool's threads both add keys."""

    def __init__(self, responder: OCSPResponder, stamp: StampReader, *, size: int, max_bytes: int):
        self.responder, self.stamp, self.size, self.max_bytes = responder, stamp, size, max_bytes
        self.echo_nonce = responder.echo_nonce
        self._entries: dict[bytes, _Entry] = {}
        self._bytes = 0  # what the keys in _entries count (entry_cost)
        self._lock = threading.Lock()
        self._seen = stamp.read()

    def lookup(self, request_der: bytes, now: float, *, alias: bytes | None = None) -> Answer | None:
        """The remembered answer for this request, or None (then call `answer` off the loop). `alias` (another
        spelling of the same nonce-less request, e.g. its GET path) is remembered too, for `lookup_alias`."""
        current = self.stamp.read()
        if current != self._seen:  # a revocation: everything goes (entries are re-read from the database)
            self._clear(current)
            return None
        entry = self._entries.get(request_der)
        if entry is None:
            parsed = parse_request(request_der)
            if isinstance(parsed, Answer):
                return parsed  # malformed or unauthorized: unsigned, as cheap here as anywhere
            if parsed.nonce is not None and self.echo_nonce:
                return None
            entry = self._entries.get(parsed.cert_id)
            if entry is None or entry.stamp != current or now >= entry.serve_until:
                return None
            if _plain(request_der, parsed):  # the same bytes will come again: skip the parse next time
                self._put(request_der, entry)
                if alias is not None:
                    self._put(alias, entry)
            return entry.answer
        if entry.stamp != current or now >= entry.serve_until:
            return None
        if alias is not None:
            self._put(alias, entry)
        return entry.answer

    def lookup_alias(self, alias: bytes, now: float) -> Answer | None:
        """The answer remembered under `alias` by `lookup`, if still servable."""
        entry = self._entries.get(alias)
        if entry is None or entry.stamp != self.stamp.read() or now >= entry.serve_until:
            return None
        return entry.answer

    def answer(self, request_der: bytes) -> Answer:
        """The responder's answer (database, or a signature), remembered when it may be served again."""
        stamp = self.stamp.read()  # before the database read: a revocation after it changes the stamp
        answer = self.responder.respond(request_der)
        until = self.responder.fresh_until(answer)
        if until is None or self.size <= 0:
            return answer
        parsed = parse_request(request_der)
        if isinstance(parsed, ParsedRequest) and not (parsed.nonce is not None and self.echo_nonce):
            entry = _Entry(dataclasses.replace(answer, memory=True), until.timestamp(), stamp)
            self._put(parsed.cert_id, entry)
            if _plain(request_der, parsed):
                self._put(request_der, entry)
        return answer

    @property
    def used_bytes(self) -> int:
        """What the remembered keys count against `max_bytes`."""
        return self._bytes

    def _put(self, key: bytes, entry: _Entry) -> None:
        if len(key) > MAX_PATH_KEY:  # a GET path that long is no client's plain spelling
            return
        with self._lock:
            entries = self._entries
            old = entries.get(key)
            if old is not None:
                self._bytes -= entry_cost(key, old)
            entries[key] = entry
            self._bytes += entry_cost(key, entry)
            if len(entries) > self.size or self._bytes > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        """Drop the oldest keys (insertion order) until both bounds have 1/8 free (called under the lock)."""
        entries = self._entries
        keep_keys = self.size - max(1, self.size // EVICT_FRACTION)
        keep_bytes = self.max_bytes - self.max_bytes // EVICT_FRACTION
        count, total, gone = len(entries), self._bytes, []
        for key, entry in entries.items():
            if count <= keep_keys and total <= keep_bytes:
                break
            gone.append(key)
            count -= 1
            total -= entry_cost(key, entry)
        for key in gone:
            del entries[key]
        self._bytes = total

    def _clear(self, current: bytes) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self._seen = current

    def __len__(self) -> int:
        return len(self._entries)


def entry_cost(key: bytes, entry: _Entry) -> int:
    """What one key counts against the byte bound: its bytes, its answer's DER and the fixed overhead."""
    return len(key) + len(entry.answer.der) + ENTRY_OVERHEAD


def _plain(request_der: bytes, parsed: ParsedRequest) -> bool:
    """Whether these request bytes may be a key: a client asking again sends the same ones. Not with a nonce
    (new every time), nor with any other extension or beyond MAX_REQUEST_KEY (the padding of an attacker who
    wants each request remembered)."""
    return parsed.nonce is None and not parsed.other_extensions and len(request_der) <= MAX_REQUEST_KEY
