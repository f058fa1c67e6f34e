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
"""

from __future__ import annotations

import dataclasses
import logging

from appliance.status.ocsp import Answer, OCSPResponder, ParsedRequest, parse_request
from appliance.status.stamp import StampReader

log = logging.getLogger(__name__)

EVICT_FRACTION = 8  # when full, the oldest 1/8 goes


@dataclasses.dataclass(frozen=True, slots=True)
class _Entry:
    answer: Answer
    serve_until: float  # POSIX seconds
    stamp: bytes


class OCSPMemo:
    """`lookup` is memory only (safe on an event loop); `answer` may query and sign (run it in a thread)."""

    def __init__(self, responder: OCSPResponder, stamp: StampReader, *, size: int):
        self.responder, self.stamp, self.size = responder, stamp, size
        self.echo_nonce = responder.echo_nonce
        self._entries: dict[bytes, _Entry] = {}
        self._seen = stamp.read()

    def lookup(self, request_der: bytes, now: float, *, alias: bytes | None = None) -> Answer | None:
        """The remembered answer for this request, or None (then call `answer` off the loop). `alias` (another
        spelling of the same nonce-less request, e.g. its GET path) is remembered too, for `lookup_alias`."""
        current = self.stamp.read()
        if current != self._seen:  # a revocation: everything goes (entries are re-read from the database)
            self._entries.clear()
            self._seen = current
            return None
        entry = self._entries.get(request_der)
        if entry is None:
            parsed = parse_request(request_der)
            if isinstance(parsed, Answer):
                return parsed  # malformed or unauthorized: unsigned, as cheap here as anywhere
            if parsed.nonce is not None and self.echo_nonce:
                return None
            entry = self._entries.get(parsed.cert_id)
            if entry is None:
                return None
            if parsed.nonce is None:  # the same bytes will come again: skip the parse next time
                self._put(request_der, entry)
                if alias is not None:
                    self._put(alias, entry)
        elif alias is not None:
            self._put(alias, entry)
        if entry.stamp != current or now >= entry.serve_until:
            return None
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
            if parsed.nonce is None:
                self._put(request_der, entry)
        return answer

    def _put(self, key: bytes, entry: _Entry) -> None:
        entries = self._entries
        if len(entries) >= self.size:
            for old in list(entries)[: max(1, self.size // EVICT_FRACTION)]:  # insertion order: oldest first
                entries.pop(old, None)
        entries[key] = entry

    def __len__(self) -> int:
        return len(self._entries)
