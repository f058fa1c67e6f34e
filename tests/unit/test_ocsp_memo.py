"""The plain-HTTP listener's OCSP memory (appliance/status/ocsp_memo.py): what it keeps, under which keys, and when a
revocation stamp makes it forget. The responder here is a stand-in that counts its calls (the real one, with
SoftHSM and a database, is exercised through `hsmca serve` in tests/integration/test_ocsp.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from appliance.config import MIB, OCSPConfig
from appliance.status.ocsp import MALFORMED, Answer, parse_request
from appliance.status.ocsp_memo import ENTRY_OVERHEAD, MAX_PATH_KEY, MAX_REQUEST_KEY, OCSPMemo, entry_cost
from appliance.status.stamp import StampReader, bump, stamp_path

VALIDITY = timedelta(hours=24)


class Responder:
    """Answers `status` for every request and counts how often it was asked."""

    def __init__(self, status: str = "good", echo_nonce: bool = False):
        self.status, self.echo_nonce, self.calls = status, echo_nonce, 0
        self.validity = VALIDITY

    def respond(self, der: bytes) -> Answer:
        self.calls += 1
        now = datetime.now(UTC).replace(microsecond=0)
        return Answer(b"resp-%d" % self.calls, now, now + VALIDITY, status=self.status)

    def fresh_until(self, answer: Answer) -> datetime | None:
        if answer.status not in ("good", "revoked") or answer.next_update is None:
            return None
        return answer.next_update - VALIDITY / 4


def request(serial: int, nonce: bytes | None = None, algorithm: hashes.HashAlgorithm | None = None,
            extra: bytes | None = None) -> bytes:
    """A request for `serial`; `extra` is the value of an extension nobody knows (an attacker's padding)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        b"\x01" * 20 if algorithm is None else b"\x01" * 32, b"\x02" * 20 if algorithm is None else b"\x02" * 32,
        serial, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    if extra is not None:
        builder = builder.add_extension(x509.UnrecognizedExtension(UNKNOWN_OID, extra), critical=False)
    return builder.build().public_bytes(Encoding.DER)


UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.1")


@pytest.fixture
def stamp(tmp_path: Path) -> Path:
    return stamp_path(tmp_path)


def memo_for(responder: Responder, stamp: Path, size: int = 100, max_bytes: int = MIB) -> OCSPMemo:
    return OCSPMemo(responder, StampReader(stamp), size=size, max_bytes=max_bytes)  # type: ignore[arg-type]


def counted(memo: OCSPMemo) -> int:
    """What the memory's keys cost, summed from scratch (the memory keeps a running total)."""
    return sum(entry_cost(k, e) for k, e in memo._entries.items())


def test_a_repeat_is_answered_from_memory_until_a_revocation_stamp(stamp: Path) -> None:
    responder = Responder()
    memo = memo_for(responder, stamp)
    der = request(7)
    assert memo.lookup(der, time.time()) is None
    first = memo.answer(der)
    hit = memo.lookup(der, time.time())
    assert hit is not None and hit.memory and hit.der == first.der and responder.calls == 1
    bump(stamp)  # a revocation on this host
    assert memo.lookup(der, time.time()) is None and len(memo) == 0
    memo.answer(der)
    assert memo.lookup(der, time.time()) is not None and responder.calls == 2


def test_an_answer_filled_across_a_revocation_is_never_served(stamp: Path) -> None:
    """The stamp is read before the responder's database read: a revocation in between makes the entry stale."""
    responder = Responder()
    memo = memo_for(responder, stamp)
    original = responder.respond

    def revoked_meanwhile(der: bytes) -> Answer:
        answer = original(der)
        bump(stamp)  # committed after the responder read "good"
        return answer

    responder.respond = revoked_meanwhile  # type: ignore[method-assign]
    memo.answer(request(8))
    assert memo.lookup(request(8), time.time()) is None


def test_nonces_share_the_certid_entry_but_are_not_keys(stamp: Path) -> None:
    responder = Responder()
    memo = memo_for(responder, stamp)
    memo.answer(request(9, nonce=b"a" * 16))
    assert len(memo) == 1  # the CertID only: a nonce'd request's bytes never come again
    hit = memo.lookup(request(9, nonce=b"b" * 16), time.time())
    assert hit is not None and responder.calls == 1
    assert memo.lookup(request(9), time.time()) is not None and len(memo) == 2  # now also by exact bytes
    assert memo.lookup(request(9, algorithm=hashes.SHA256()), time.time()) is None  # another CertID


def test_echoed_nonces_unknown_and_stale_answers_are_not_served(stamp: Path) -> None:
    echo = memo_for(Responder(echo_nonce=True), stamp)
    echo.answer(request(10, nonce=b"n" * 16))
    assert echo.lookup(request(10, nonce=b"n" * 16), time.time()) is None
    unknown = memo_for(Responder(status="unknown"), stamp)
    unknown.answer(request(11))
    assert len(unknown) == 0
    memo = memo_for(Responder(), stamp)
    memo.answer(request(12))
    later = time.time() + (VALIDITY * 3 / 4).total_seconds() + 1  # a quarter of the validity left: re-read
    assert memo.lookup(request(12), later) is None


def test_bad_requests_are_answered_without_the_responder(stamp: Path) -> None:
    responder = Responder()
    memo = memo_for(responder, stamp)
    answer = memo.lookup(b"\x30\x03\x02\x01", time.time())
    assert answer is not None and answer.der == MALFORMED and responder.calls == 0


def test_the_memory_is_bounded(stamp: Path) -> None:
    memo = memo_for(Responder(), stamp, size=16)
    for serial in range(1, 100):
        memo.answer(request(serial))
        assert len(memo) <= 16
    assert memo.lookup(request(99), time.time()) is not None  # the newest stay
    assert memo.lookup(request(1), time.time()) is None


def test_certid_keys_tell_serials_apart() -> None:
    keys = set()
    for serial in (1, 255, 256, 2**159, 2**160 - 1):
        parsed = parse_request(request(serial))
        assert not isinstance(parsed, Answer)
        keys.add(parsed.cert_id)
    assert len(keys) == 5


def test_bytes_count_keys_answers_and_the_overhead(stamp: Path) -> None:
    memo = memo_for(Responder(), stamp)
    der = request(20)
    answer = memo.answer(der)
    cert_id = parse_request(der).cert_id  # type: ignore[union-attr]
    assert memo.used_bytes == len(der) + len(cert_id) + 2 * (len(answer.der) + ENTRY_OVERHEAD)
    alias = b"\x01GET/ocsp/abc"
    assert memo.lookup(der, time.time(), alias=alias) is not None
    assert memo.lookup(der, time.time(), alias=alias) is not None  # the same key again is not counted twice
    assert len(memo) == 3 and memo.used_bytes == counted(memo)
    memo.answer(der)  # a new answer replaces the old under both keys
    assert len(memo) == 3 and memo.used_bytes == counted(memo)
    bump(stamp)
    assert memo.lookup(der, time.time()) is None and len(memo) == 0 and memo.used_bytes == 0


def test_the_byte_bound_evicts_the_oldest(stamp: Path) -> None:
    responder = Responder()
    memo = memo_for(responder, stamp, size=10_000, max_bytes=MIB)
    per_answer = 2 * (ENTRY_OVERHEAD + len(b"resp-1000")) + 2 * len(request(1000))
    for serial in range(1000, 1000 + 2 * MIB // per_answer):  # twice what fits
        memo.answer(request(serial))
        assert memo.used_bytes <= MIB and memo.used_bytes == counted(memo)
    assert len(memo) < 10_000 // 2  # the byte bound held first
    assert memo.lookup(request(serial), time.time()) is not None
    assert memo.lookup(request(1000), time.time()) is None
    assert memo.used_bytes > MIB * 7 // 8 - per_answer  # eviction frees an eighth, not everything


def test_requests_with_other_extensions_are_remembered_by_certid_only(stamp: Path) -> None:
    responder = Responder()
    memo = memo_for(responder, stamp)
    padded = [request(30, extra=bytes([i]) * 3000) for i in range(20)]
    memo.answer(padded[0])
    assert len(memo) == 1  # the CertID
    for der in padded:  # each answered from the CertID's entry, none remembered under its own 3 KB
        hit = memo.lookup(der, time.time(), alias=b"\x01GET/ocsp/" + bytes(der[:50]))
        assert hit is not None and hit.memory
    assert len(memo) == 1 and responder.calls == 1
    hit = memo.lookup(request(30), time.time())  # the plain spelling is still a key of its own
    assert hit is not None and len(memo) == 2


def test_long_requests_and_get_paths_are_not_keys(stamp: Path) -> None:
    memo = memo_for(Responder(), stamp)
    der = request(40)
    memo.answer(der)
    long_path = b"\x01GET/ocsp/" + b"A" * MAX_PATH_KEY
    assert memo.lookup(der, time.time(), alias=long_path) is not None
    assert memo.lookup_alias(long_path, time.time()) is None and len(memo) == 2
    short_path = b"\x01GET/ocsp/AAAA"
    assert memo.lookup(der, time.time(), alias=short_path) is not None
    assert memo.lookup_alias(short_path, time.time()) is not None
    big = request(41, algorithm=hashes.SHA256())
    assert len(big) < MAX_REQUEST_KEY  # a plain request of the larger CertID form fits


def test_memory_bytes_is_validated() -> None:
    assert OCSPConfig().memoryBytes == 32 * MIB
    assert OCSPConfig(memoryBytes=4 * MIB).memoryBytes == 4 * MIB
    for bad in (0, MIB - 1, 4096 * MIB + 1):
        with pytest.raises(ValueError, match="memoryBytes"):
            OCSPConfig(memoryBytes=bad)
