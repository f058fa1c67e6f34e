"""The syslog copy of the audit trail: RFC 5424 on real sockets, read back by a strict parser written here.

The parser is deliberately independent of appliance/audit/syslog.py (its own grammar, from RFC 5424 section 6)
so that a formatting bug cannot hide behind the same bug in the reader.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.audit.syslog import SyslogShipper, format_message

BOM = b"\xef\xbb\xbf"
HOST = "ca1.example"
PREV = "ab" * 32


# --- a strict RFC 5424 parser --------------------------------------------------------------------------------


@dataclass
class Message:
    pri: int
    timestamp: str
    hostname: str
    app_name: str
    procid: str
    msgid: str
    sd: dict[str, dict[str, str]]
    msg: bytes | None

    @property
    def record(self) -> Any:
        """MSG as JSON: MSG-UTF8 (BOM, then strict UTF-8)."""
        assert self.msg is not None and self.msg.startswith(BOM)
        return json.loads(self.msg[len(BOM):].decode("utf-8"))


_TS = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")


class ParseError(Exception):
    pass


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def expect(self, literal: bytes) -> None:
        if not self.data.startswith(literal, self.pos):
            raise ParseError(f"expected {literal!r} at {self.pos}: {self.data[self.pos:self.pos + 20]!r}")
        self.pos += len(literal)

    def token(self, limit: int, what: str, forbidden: bytes = b"") -> str:
        """1..limit PRINTUSASCII octets (33..126), none of `forbidden`."""
        start = self.pos
        while (c := self.peek()) is not None and 33 <= c <= 126 and c not in forbidden:
            self.pos += 1
        raw = self.data[start:self.pos]
        if not 1 <= len(raw) <= limit:
            raise ParseError(f"{what} must be 1..{limit} printable octets, got {raw!r}")
        return raw.decode("ascii")


def parse(data: bytes) -> Message:
    r = _Reader(data)
    m = re.match(rb"<(0|[1-9][0-9]{0,2})>1 ", data)
    if not m or int(m.group(1)) > 191:
        raise ParseError(f"bad PRI/VERSION: {data[:10]!r}")
    r.pos = m.end()
    ts = r.token(64, "TIMESTAMP")
    if ts != "-" and not _TS.fullmatch(ts.encode()):
        raise ParseError(f"bad TIMESTAMP {ts!r}")
    r.expect(b" ")
    hostname = r.token(255, "HOSTNAME")
    r.expect(b" ")
    app_name = r.token(48, "APP-NAME")
    r.expect(b" ")
    procid = r.token(128, "PROCID")
    r.expect(b" ")
    msgid = r.token(32, "MSGID")
    r.expect(b" ")
    sd: dict[str, dict[str, str]] = {}
    if r.peek() == ord("-"):
        r.pos += 1
    else:
        if r.peek() != ord("["):
            raise ParseError("STRUCTURED-DATA must be NILVALUE or SD-ELEMENTs")
        while r.peek() == ord("["):
            r.pos += 1
            sd_id = r.token(32, "SD-ID", b'= ]"')
            if sd_id in sd:
                raise ParseError(f"SD-ID {sd_id} repeated")
            params: dict[str, str] = {}
            while r.peek() == ord(" "):
                r.pos += 1
                name = r.token(32, "PARAM-NAME", b'= ]"')
                r.expect(b'="')
                value = bytearray()
                while True:
                    c = r.peek()
                    if c is None:
                        raise ParseError("unterminated PARAM-VALUE")
                    if c == ord("\\"):
                        nxt = r.data[r.pos + 1:r.pos + 2]
                        if nxt not in (b'"', b"\\", b"]"):  # RFC: kept literally; strict here: we escape all
                            raise ParseError("unescaped backslash in PARAM-VALUE")
                        value += nxt
                        r.pos += 2
                    elif c == ord('"'):
                        r.pos += 1
                        break
                    elif c == ord("]"):
                        raise ParseError("unescaped ] in PARAM-VALUE")
                    else:
                        value.append(c)
                        r.pos += 1
                if name in params:
                    raise ParseError(f"PARAM-NAME {name} repeated")
                params[name] = value.decode("utf-8")  # strict: PARAM-VALUE is UTF-8
            r.expect(b"]")
            sd[sd_id] = params
    msg: bytes | None = None
    if r.pos < len(data):
        r.expect(b" ")
        msg = data[r.pos:]
        if msg.startswith(BOM):
            msg[len(BOM):].decode("utf-8")  # MSG-UTF8 must be valid UTF-8, even when truncated
    return Message(int(m.group(1)), ts, hostname, app_name, procid, msgid, sd, msg)


def canonical(record: dict[str, Any]) -> bytes:
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record(**over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "seq": 7, "prev": PREV, "stream": "host:1234:ab12cd34", "time": "2026-12-06T22:40:01.123+00:00",
        "action": "x509.sign", "decision": "allowed", "serial": "123", "subject": "a.example",
        "sans": ["a.example"], "provisioner": "admin", "request_id": "req-1", "status": 201,
        "details": {"profile": "server", "n": 1},
    }
    rec.update(over)
    return {k: v for k, v in rec.items() if v is not None}


def fmt(line: dict[str, Any], **kw: Any) -> bytes:
    args: dict[str, Any] = {"facility": 10, "app_name": "hsmca", "hostname": HOST, "procid": 4242, **kw}
    return format_message(line, **args)


# --- fixtures: real receivers --------------------------------------------------------------------------------


@pytest.fixture
def udp_receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


@pytest.fixture
def unix_receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def udp_address(sock: socket.socket) -> str:
    return f"udp://127.0.0.1:{sock.getsockname()[1]}"


# --- the formatter -------------------------------------------------------------------------------------------


def test_message_layout() -> None:
    rec = record()
    data = fmt(rec)
    assert data.startswith(b"<86>1 2026-12-06T22:40:01.123+00:00 ca1.example hsmca 4242 x509.sign [hsmca@32473 ")
    m = parse(data)
    assert m.sd == {"hsmca@32473": {"seq": "7", "stream": "host:1234:ab12cd34", "prev": PREV, "action": "x509.sign",
                                    "decision": "allowed", "serial": "123", "provisioner": "admin",
                                    "request_id": "req-1"}}
    assert m.msg == BOM + canonical(rec)  # byte for byte the file's line: a SIEM can recompute `prev`


@pytest.mark.parametrize(("decision", "severity"), [("allowed", 6), ("denied", 4), ("error", 3), (None, 5)])
def test_severity_from_decision(decision: str | None, severity: int) -> None:
    m = parse(fmt(record(decision=decision), facility=4))
    assert m.pri == 4 * 8 + severity
    assert ("decision" in m.sd["hsmca@32473"]) == (decision is not None)


def test_checkpoint_without_optional_fields() -> None:
    rec = {"seq": 12, "prev": PREV, "stream": "s", "time": "2026-12-06T22:40:01Z", "action": "audit.checkpoint",
           "details": {"signature": "AAAA"}}
    m = parse(fmt(rec))
    assert (m.pri, m.timestamp, m.msgid) == (85, "2026-12-06T22:40:01Z", "audit.checkpoint")
    assert m.sd["hsmca@32473"] == {"seq": "12", "stream": "s", "prev": PREV, "action": "audit.checkpoint"}
    assert m.record == rec


@pytest.mark.parametrize("time", [None, "", "2026-12-06 22:40:01+00:00", "2026-12-06T22:40:01",
                                  "2026-12-06T22:40:01.1234567+00:00", "2026-13-06T22:40:01Z", 1765060801])
def test_missing_or_invalid_time_is_nilvalue(time: Any) -> None:
    rec = record()
    if time is None:
        del rec["time"]
    else:
        rec["time"] = time
    m = parse(fmt(rec))
    assert m.timestamp == "-"
    assert m.record == rec  # the original value is still in MSG


def test_msgid_printable_and_truncated() -> None:
    m = parse(fmt(record(action="ré gistration.very-long-action-name.more-than-32")))
    assert m.msgid == "r__gistration.very-long-action-n" and len(m.msgid) == 32
    assert m.sd["hsmca@32473"]["action"] == "ré gistration.very-long-action-name.more-than-32"
    assert parse(fmt(record(action=""))).msgid == "-"


def test_header_fields_sanitised() -> None:
    m = parse(fmt(record(), hostname="my host\n" + "h" * 300, app_name=""))
    assert m.hostname.startswith("my_host_") and len(m.hostname) == 255
    assert m.app_name == "-"


def test_escaping_quote_backslash_bracket_and_non_ascii() -> None:
    nasty = 'a"b\\c]d [x="y"] é€😀\n\t'
    data = fmt(record(stream=nasty, serial="]]", provisioner='"', request_id="\\"))
    assert b'stream="a\\"b\\\\c\\]d [x=\\"y\\"\\] ' in data
    assert b'serial="\\]\\]"' in data and b'provisioner="\\""' in data and b'request_id="\\\\"' in data
    sd = parse(data).sd["hsmca@32473"]
    assert (sd["stream"], sd["serial"], sd["provisioner"], sd["request_id"]) == (nasty, "]]", '"', "\\")


def test_non_string_values_and_lone_surrogate() -> None:
    rec = record(serial=12345678901234567890, request_id="bad\ud800id", details={"x": "\udfff"})
    data = fmt(rec)
    m = parse(data)
    assert m.sd["hsmca@32473"]["serial"] == "12345678901234567890"
    assert m.sd["hsmca@32473"]["request_id"] == "bad?id"
    assert m.record == rec  # \u escapes keep the JSON equal to the record


def test_oversize_record_truncates_msg_only() -> None:
    rec = record(details={"blob": "é" * 60_000 + "x" * 80_000})  # > 200 KiB of JSON
    assert len(canonical(rec)) > 200_000
    data = fmt(rec)
    assert 8192 - 4 < len(data) <= 8192
    m = parse(data)  # header and SD intact, MSG still valid UTF-8
    assert m.sd["hsmca@32473"]["seq"] == "7" and m.sd["hsmca@32473"]["prev"] == PREV
    assert m.msg is not None and (BOM + canonical(rec)).startswith(m.msg)


def test_huge_sd_values_are_shortened_to_fit() -> None:
    rec = record(request_id="]" * 20_000, stream="s" * 10_000)
    data = fmt(rec, max_bytes=2048)
    assert len(data) <= 2048
    sd = parse(data).sd["hsmca@32473"]
    assert sd["seq"] == "7" and sd["prev"] == PREV
    assert set(sd["request_id"]) == {"]"} and set(sd["stream"]) == {"s"}


def test_formatter_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        fmt(record(), facility=24)
    with pytest.raises(ValueError):
        fmt(record(), max_bytes=100)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(stream=st.text(max_size=300), action=st.text(max_size=300), serial=st.text(max_size=300))
def test_sd_values_round_trip(stream: str, action: str, serial: str) -> None:
    rec = record(stream=stream, action=action, serial=serial)
    m = parse(fmt(rec))
    sd = m.sd["hsmca@32473"]
    assert (sd["stream"], sd["action"], sd["serial"]) == (stream, action, serial)
    assert m.record == rec


# --- the shipper, on real sockets ----------------------------------------------------------------------------


def test_udp_round_trip(udp_receiver: socket.socket) -> None:
    shipper = SyslogShipper(udp_address(udp_receiver), hostname=HOST)
    rec = record(decision="denied", subject="ü.example")
    shipper.send(rec)
    m = parse(udp_receiver.recv(65536))
    shipper.close()
    assert (m.pri, m.hostname, m.app_name, m.procid, m.msgid) == (84, HOST, "hsmca", str(os.getpid()), "x509.sign")
    assert m.sd["hsmca@32473"]["decision"] == "denied"
    assert m.record == rec
    assert shipper.dropped == 0


def test_udp_ipv6_literal() -> None:
    try:
        receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        receiver.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with receiver:
        receiver.settimeout(2)
        shipper = SyslogShipper(f"udp://[::1]:{receiver.getsockname()[1]}", facility=16, app_name="ca")
        shipper.send(record())
        m = parse(receiver.recv(65536))
        shipper.close()
    assert (m.pri, m.app_name, m.hostname) == (16 * 8 + 6, "ca", socket.gethostname()[:255] or "-")


def test_unix_round_trip(unix_receiver: tuple[socket.socket, str]) -> None:
    receiver, path = unix_receiver
    shipper = SyslogShipper(path, hostname=HOST)
    recs = [record(seq=i, decision=d) for i, d in enumerate(["allowed", "error", None], 1)]
    for rec in recs:
        shipper.send(rec)
    got = [parse(receiver.recv(65536)) for _ in recs]
    shipper.close()
    assert [m.pri for m in got] == [86, 83, 85]
    assert [m.record for m in got] == recs


def test_oversize_record_over_udp(udp_receiver: socket.socket) -> None:
    shipper = SyslogShipper(udp_address(udp_receiver), hostname=HOST)
    rec = record(details={"blob": "€" * 70_000})
    shipper.send(rec)
    data = udp_receiver.recv(65536)
    shipper.close()
    assert len(data) <= 8192
    m = parse(data)
    assert m.msgid == "x509.sign" and m.sd["hsmca@32473"]["serial"] == "123"
    assert m.msg is not None and (BOM + canonical(rec)).startswith(m.msg)


def test_missing_unix_socket_counts_drops_warns_once_and_reconnects(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = str(tmp_path / "later.sock")
    shipper = SyslogShipper(path)
    with caplog.at_level(logging.WARNING, logger="hsmca.audit"):
        shipper.send(record(seq=1))
        shipper.send(record(seq=2))
    assert shipper.dropped == 2
    warnings = [r for r in caplog.records if r.name == "hsmca.audit"]
    assert len(warnings) == 1 and path in warnings[0].getMessage()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:  # the daemon comes up
        receiver.bind(path)
        receiver.settimeout(2)
        shipper.send(record(seq=3))
        assert parse(receiver.recv(65536)).sd["hsmca@32473"]["seq"] == "3"
    assert shipper.dropped == 2
    shipper.close()
    shipper.send(record(seq=4))  # after close: counted, not raised
    assert shipper.dropped == 3


def test_stale_unix_socket_file(tmp_path: Path) -> None:
    path = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dead:
        dead.bind(path)  # the file stays, nobody listens: ECONNREFUSED
    shipper = SyslogShipper(path)
    shipper.send(record())
    assert shipper.dropped == 1
    shipper.close()


def test_full_unix_receiver_never_blocks(tmp_path: Path) -> None:
    path = str(tmp_path / "full.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind(path)  # never read: the queue fills, sends get EAGAIN
        shipper = SyslogShipper(path)
        for i in range(3000):
            shipper.send(record(seq=i))
        shipper.close()
    assert 0 < shipper.dropped < 3000


def test_closed_udp_port_does_not_raise() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    shipper = SyslogShipper(f"udp://127.0.0.1:{port}")
    for i in range(5):  # ICMP port unreachable may surface on a later send as ECONNREFUSED
        shipper.send(record(seq=i))
    shipper.close()
    assert shipper.dropped >= 0


@pytest.mark.parametrize("address", ["", "tcp://127.0.0.1:514", "udp://", "udp://[::1", "udp://h:99999",
                                     "udp://h:514/path"])
def test_bad_address(address: str) -> None:
    with pytest.raises(ValueError):
        SyslogShipper(address)


def test_bad_facility() -> None:
    with pytest.raises(ValueError):
        SyslogShipper("/dev/log", facility=-1)


def test_concurrent_senders_all_arrive_whole(udp_receiver: socket.socket) -> None:
    threads_n, per_thread = 50, 20
    shipper = SyslogShipper(udp_address(udp_receiver), hostname=HOST)
    received: list[bytes] = []

    def drain() -> None:  # read while senders send, so the receive buffer never overflows
        while len(received) < threads_n * per_thread:
            try:
                received.append(udp_receiver.recv(65536))
            except TimeoutError:
                return

    def make(t: int, i: int) -> dict[str, Any]:
        return record(stream=f"t{t}", seq=i, details={"pad": chr(0x41 + t % 26) * 600, "t": t})

    barrier = threading.Barrier(threads_n)

    def sender(t: int) -> None:
        barrier.wait()
        for i in range(per_thread):
            shipper.send(make(t, i))

    reader = threading.Thread(target=drain)
    reader.start()
    senders = [threading.Thread(target=sender, args=(t,)) for t in range(threads_n)]
    for th in senders:
        th.start()
    for th in senders:
        th.join()
    reader.join(timeout=5)
    shipper.close()
    assert shipper.dropped == 0
    assert len(received) == threads_n * per_thread
    seen = set()
    for data in received:
        m = parse(data)
        rec = m.record
        t, i = int(rec["stream"][1:]), rec["seq"]
        assert rec == make(t, i)  # whole, not interleaved with another thread's record
        assert m.sd["hsmca@32473"]["stream"] == f"t{t}" and m.sd["hsmca@32473"]["seq"] == str(i)
        seen.add((t, i))
    assert seen == {(t, i) for t in range(threads_n) for i in range(per_thread)}
