"""A copy of every audit record for a SIEM, as RFC 5424 syslog messages with structured data.

The hash-chained file (trail.py) stays the evidence; this copy is best effort. A lost datagram, a missing
socket or a full queue never slows or fails the request that made the record: `send` is non-blocking, never
raises, and counts what it could not ship in `dropped` (with a warning on "hsmca.audit" at most once a minute).

Hand-written: Python's logging.handlers.SysLogHandler emits BSD syslog (RFC 3164: no version, no RFC 3339
timestamp, no STRUCTURED-DATA), and no small library formats RFC 5424 with correct SD escaping.

One message per record (RFC 5424 section 6):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [hsmca@32473 seq="7" stream="…" …] BOM{"action":…}

* PRI is facility * 8 + severity: 6 (info) for "allowed", 4 (warning) for "denied", 3 (error) for "error",
  5 (notice) for a record without a decision (e.g. "audit.checkpoint"). The default facility 10 is authpriv.
* TIMESTAMP is the record's own "time" when it is an RFC 5424 TIMESTAMP (RFC 3339, at most 6 fractional digits,
  an offset or "Z"), else NILVALUE "-": the time the event happened, not the time the copy left.
* MSGID is the action in printable US-ASCII (others become "_"), cut to 32 characters.
* The SD element hsmca@32473 carries seq, stream, prev, action, decision, serial, provisioner and request_id when
  the record has them (not None), with `"`, `\\` and `]` escaped (section 6.3.3). 32473 is the documentation
  enterprise number of RFC 5612; a deployment with its own IANA number may want to change SD_ID.
* MSG is the record as the file has it (trail.encode: sorted keys, no spaces, UTF-8), so an
  untruncated MSG is byte for byte the file's line, and a SIEM can recompute the `prev` links). It starts with
  the UTF-8 BOM: section 6.4 says a MSG encoded in UTF-8 MUST start with it (without one it is MSG-ANY, octets
  of unknown charset). Receivers that hand MSG to a JSON parser should strip a leading U+FEFF
  (syslog-ng does).

A message is at most 8192 bytes: RFC 5426 (UDP) and a Unix datagram socket drop what does not fit, and
receivers commonly cap lines at 8 KiB. MSG is cut (on a UTF-8 character boundary) to make room; the header and
SD are kept whole. Only when the SD values alone would overflow (a client-chosen request_id of kilobytes) are
the longest of them shortened, so the message still arrives and still names seq and stream.

Transports: a Unix datagram socket ("/dev/log", or a socket rsyslog/syslog-ng listens on), or "udp://HOST:PORT"
(RFC 5426; HOST an IPv4 literal, a bracketed IPv6 literal or a name resolved once, at construction). Note that
systemd-journald on /dev/log does not parse RFC 5424 (systemd issue #19251): the whole line lands in MESSAGE, so
point the shipper at the syslog daemon that forwards to the SIEM, not at journald, when fields matter.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from appliance.audit.trail import encode

log = logging.getLogger("hsmca.audit")

SD_ID = "hsmca@32473"
MAX_BYTES = 8192
MIN_BYTES = 1024  # room for the longest header (about 520 bytes) and the SD element with empty values
BOM = b"\xef\xbb\xbf"
NILVALUE = "-"
SD_PARAMS = ("seq", "stream", "prev", "action", "decision", "serial", "provisioner", "request_id")
SEVERITY = {"allowed": 6, "denied": 4, "error": 3}
NOTICE = 5
WARN_INTERVAL = 60.0  # seconds between two warnings about dropped records
UDP_DEFAULT_PORT = 514  # RFC 5426 section 3.3

# RFC 5424 section 6.2.3: FULL-DATE "T" FULL-TIME, TIME-SECFRAC of 1 to 6 digits, TIME-OFFSET "Z" or +/-hh:mm.
_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?(Z|[+-][0-9]{2}:[0-9]{2})")


def format_message(line: dict[str, Any], *, facility: int, app_name: str, hostname: str, procid: int,
                   max_bytes: int = MAX_BYTES) -> bytes:
    """One audit record as one RFC 5424 message of at most `max_bytes` bytes (pure: the shipper's formatter)."""
    if not 0 <= facility <= 23:
        raise ValueError(f"syslog facility must be 0..23, not {facility}")
    if max_bytes < MIN_BYTES:
        raise ValueError(f"max_bytes must be at least {MIN_BYTES}, not {max_bytes}")
    decision = line.get("decision")
    severity = SEVERITY.get(decision, NOTICE) if isinstance(decision, str) else NOTICE
    action = line.get("action")
    header = " ".join((
        f"<{facility * 8 + severity}>1",
        _timestamp(line.get("time")),
        _header_field(hostname, 255),
        _header_field(app_name, 48),
        _header_field(str(procid), 128),
        _header_field(action if isinstance(action, str) else "", 32),
    )).encode("ascii") + b" "
    params = [(name, _param_text(line[name])) for name in SD_PARAMS if line.get(name) is not None]
    sd = _structured_data(params, max_bytes - len(header))
    room = max_bytes - len(header) - len(sd) - 1  # 1: the space before MSG
    if room < len(BOM):
        return header + sd
    msg = BOM + encode(line)
    if len(msg) > room:
        cut = room
        while msg[cut] & 0xC0 == 0x80:  # never split a UTF-8 sequence: back up to the start of a character
            cut -= 1
        msg = msg[:cut]
    return header + sd + b" " + msg


def _timestamp(value: Any) -> str:
    """The record's time when it is a valid RFC 5424 TIMESTAMP, else NILVALUE (never the sending time)."""
    if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
        return NILVALUE
    try:
        datetime.fromisoformat(value)  # the grammar allows month 13 and hour 25; the calendar does not
    except ValueError:
        return NILVALUE
    return value


def _header_field(text: str, limit: int) -> str:
    """A header field as RFC 5424 wants it: 1..limit PRINTUSASCII characters, NILVALUE when empty."""
    cleaned = "".join(c if "!" <= c <= "~" else "_" for c in text[:limit])
    return cleaned or NILVALUE


def _param_text(value: Any) -> str:
    """An SD value as text: strings as they are, anything else (seq is an int) as its JSON form."""
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _escape(text: str) -> str:
    """PARAM-VALUE escaping, RFC 5424 section 6.3.3: `"`, `\\` and `]` get a backslash."""
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _sd_element(params: list[tuple[str, str]], cap: int | None) -> bytes:
    body = "".join(f' {name}="{_escape(value if cap is None else value[:cap])}"' for name, value in params)
    # "replace": a lone surrogate (not UTF-8-encodable) becomes "?" rather than failing the record.
    return f"[{SD_ID}{body}]".encode("utf-8", "replace")


def _structured_data(params: list[tuple[str, str]], budget: int) -> bytes:
    """The SD element, whole when it fits in `budget`; else with the longest values cut as little as needed."""
    whole = _sd_element(params, None)
    if len(whole) <= budget:
        return whole
    # Binary search for the largest per-value cap that fits; cap 0 always fits (MIN_BYTES guarantees it).
    lo, hi = 0, max(len(value) for _, value in params)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(_sd_element(params, mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return _sd_element(params, lo)


def _parse_address(address: str) -> tuple[socket.AddressFamily, str | tuple[Any, ...]]:
    """("/dev/log") -> AF_UNIX; ("udp://HOST:PORT") -> the address family and sockaddr of HOST, resolved now."""
    if address.startswith("udp://"):
        parts = urlsplit(address)
        try:
            port = parts.port or UDP_DEFAULT_PORT
        except ValueError as exc:
            raise ValueError(f"bad port in syslog address {address!r}") from exc
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
            raise ValueError(f"syslog address must be udp://HOST:PORT, not {address!r}")
        # Resolved once: a DNS lookup per record would block the request path. gaierror (an OSError) propagates.
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
        family, _, _, _, sockaddr = infos[0]
        return family, sockaddr
    if not address or "://" in address:
        raise ValueError(f"syslog address must be a Unix socket path or udp://HOST:PORT, not {address!r}")
    return socket.AF_UNIX, address


class SyslogShipper:
    """Sends each audit record, formatted by `format_message`, as one datagram; thread-safe, never blocks.

    One socket, connected lazily and guarded by a lock (a non-blocking send takes microseconds): closing it after
    an error while another thread sends could otherwise send a record into a reused file descriptor. After any
    error the socket is closed and the next `send` connects again, so a restarted syslog daemon (a new /dev/log)
    or a changed route is picked up without a restart of the CA.
    """

    dropped: int

    def __init__(self, address: str, *, facility: int = 10, app_name: str = "hsmca",
                 hostname: str | None = None) -> None:
        if not 0 <= facility <= 23:
            raise ValueError(f"syslog facility must be 0..23, not {facility}")
        self.address = address
        self._family, self._target = _parse_address(address)
        self._facility = facility
        self._app_name = app_name
        # gethostname, not getfqdn: the FQDN RFC 5424 prefers can take a DNS lookup, and names the same host.
        self._hostname = hostname if hostname is not None else socket.gethostname()
        self.dropped = 0
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False
        self._last_warning: float | None = None
        self._unreported = 0  # drops since the last warning

    def send(self, line: dict[str, Any]) -> None:
        """Ship one record; on failure count it in `dropped` (the file has it) and never raise."""
        try:
            data = format_message(line, facility=self._facility, app_name=self._app_name,
                                  hostname=self._hostname, procid=os.getpid())
        except Exception as exc:  # e.g. a circular `details`: the request must not fail over a log copy
            self._warn(self._drop(exc))
            return
        warning = None
        with self._lock:
            if self._closed:
                self.dropped += 1
                return
            try:
                if self._sock is None:
                    self._sock = self._connect()
                self._sock.send(data)
            except OSError as exc:  # FileNotFoundError, ConnectionRefusedError, BlockingIOError, ENOBUFS, ...
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                warning = self._drop_locked(exc)
        self._warn(warning)  # outside the lock: a logging handler may be slow

    def close(self) -> None:
        """Close the socket; later records are counted as dropped."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _connect(self) -> socket.socket:
        sock = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self._target)  # a datagram connect sends nothing: it fixes the peer and reports errors
        except OSError:
            sock.close()
            raise
        return sock

    def _drop(self, exc: Exception) -> tuple[Exception, int] | None:
        with self._lock:
            return self._drop_locked(exc)

    def _drop_locked(self, exc: Exception) -> tuple[Exception, int] | None:
        """Count a drop; return what to warn about when the last warning is WARN_INTERVAL old (else None)."""
        self.dropped += 1
        now = time.monotonic()
        if self._last_warning is not None and now - self._last_warning < WARN_INTERVAL:
            self._unreported += 1
            return None
        self._last_warning = now
        unreported, self._unreported = self._unreported, 0
        return exc, unreported

    def _warn(self, warning: tuple[Exception, int] | None) -> None:
        if warning is not None:
            exc, unreported = warning
            log.warning("audit record not shipped to syslog %s: %s (%d more dropped since the last warning, "
                        "%d in all; the audit file has them)", self.address, exc, unreported, self.dropped)
