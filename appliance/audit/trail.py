"""The audit trail: one `record(event)` for every issuance and every refusal, chained and sealed.

Every writer (one per process, a new one after a configuration reload) is a *stream*: its records carry the stream's
name (replica, process id, a random part), a sequence number and the SHA-256 of the stream's previous record
(kms/chained_log.py, shared with the ceremony transcript). Several streams append to one file: each record is a
single `write` on an O_APPEND descriptor under an exclusive `flock`, so lines never interleave. A background
thread signs a checkpoint of the stream's head with the audit key (seal.py) every `checkpointInterval` when
records were written, and `close` signs one at shutdown. Past `maxBytes` the file is renamed with a timestamp
and every stream goes on in a new file, its first line there linked to its last line in the old one.

Tokens, passwords and keys have no field here, and any string that looks like a JWT or a PEM block is scrubbed.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

from appliance import metrics
from appliance.audit.seal import (
    CHECKPOINT,
    CONTINUED,
    CONTROL,
    STREAM_START,
    AuditSealer,
    Checkpoint,
    Statement,
)
from kms.chained_log import GENESIS, Chain, sha256_hex

log = logging.getLogger("hsmca.audit")

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.S)


def scrub(text: str) -> str:
    """Remove token- or key-shaped material from free text (error messages quote inputs)."""
    return _PEM.sub("[pem redacted]", _JWT.sub("[token redacted]", text))


def encode(line: dict[str, Any]) -> bytes:
    """kms.chained_log.canonical, with `str` for the odd non-JSON detail value (the reader sees the string). A lone
    surrogate (a client's JSON can carry "\\ud800" into a reason) cannot be UTF-8: then the whole line is written
    with \\u escapes, still valid JSON equal to the record. The verifier and the syslog copy use this same form."""
    try:
        return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    except UnicodeEncodeError:
        return json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str).encode()


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AuditEvent:
    action: str  # e.g. "x509.sign"
    decision: Literal["allowed", "denied", "error"]
    request_id: str | None = None
    provisioner: str | None = None
    subject: str | None = None
    sans: tuple[str, ...] = ()
    serial: str | None = None
    reasons: tuple[str, ...] = ()
    status: int | None = None
    remote_addr: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def to_record(self) -> dict[str, Any]:
        # Field by field, not dataclasses.asdict: that deep-copies every value, once per certificate.
        rec: dict[str, Any] = {f: getattr(self, f) for f in _FIELDS}
        rec["time"] = utc_now()
        rec["reasons"] = [scrub(r) for r in self.reasons]
        rec["sans"] = list(self.sans)
        return {k: v for k, v in rec.items() if v not in (None, [], {})}


_FIELDS = tuple(f.name for f in fields(AuditEvent))


class AuditLog(Protocol):
    def record(self, event: AuditEvent) -> None: ...


class Shipper(Protocol):
    """A copy of each record elsewhere (syslog.py); must never block or raise."""

    def send(self, line: dict[str, Any]) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Process:
    """What one process's stream holds: forked children start their own."""

    pid: int
    stream: str
    chain: Chain = field(default_factory=Chain)
    fd: int | None = None
    ino: int = 0
    sealed_seq: int = 0  # the stream's last line that a checkpoint covers (or is)
    in_file: bool = False  # the stream has a line in the current file
    file_end: int = 0  # where this process's last line ended: if the file still ends there, that line is last
    last_hash: str = GENESIS
    next_look: float = 0.0  # time.monotonic() of the next check that the path still names our file
    ticker: threading.Thread | None = None


class JsonLinesAudit:
    """Append-only, hash-chained JSON lines, safe across processes and threads; sealed when given a sealer."""

    def __init__(self, path: Path, *, sealer: AuditSealer | None = None, interval: float = 60.0,
                 max_bytes: int = 0, replica: str | None = None,
                 on_checkpoint: Callable[[Checkpoint], None] | None = None, shipper: Shipper | None = None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sealer, self.interval, self.max_bytes = sealer, interval, max_bytes
        self.replica = replica or socket.gethostname().split(".")[0] or "localhost"
        self.on_checkpoint, self.shipper = on_checkpoint, shipper
        self._lock = threading.Lock()  # the stream's chain and descriptor
        self._seal_lock = threading.Lock()  # one checkpoint at a time
        self._wake = threading.Event()  # the ticker: rotated, or stopping
        self._proc: _Process | None = None
        self._closed = False
        self._stopping = False  # close() has begun: the ticker stops, the last checkpoint is close()'s

    @property
    def stream(self) -> str | None:
        """This process's stream name (None until it wrote a record)."""
        proc = self._proc
        return proc.stream if proc is not None and proc.pid == os.getpid() else None

    def record(self, event: AuditEvent) -> None:
        self._append(event.to_record())

    # -- writing ---------------------------------------------------------------------------------------------

    def _state(self) -> _Process:
        """This process's stream: a forked child (or the first record) starts a new one."""
        pid = os.getpid()
        if self._proc is None or self._proc.pid != pid:
            self._proc = _Process(pid, f"{self.replica}:{pid}:{secrets.token_hex(4)}")
        return self._proc

    def _append(self, entry: dict[str, Any]) -> None:
        """Chain `entry` into this process's stream and write it."""
        with self._lock:
            if self._closed:
                raise OSError("the audit trail is closed")
            proc = self._state()
            if proc.chain.seq == 0:
                self._write(proc, {"action": STREAM_START, "time": utc_now(), "details": {
                    "pid": proc.pid, "replica": self.replica,
                    "key": self.sealer.fingerprint if self.sealer else None}})
            self._write(proc, entry)
            if self.sealer is not None and proc.ticker is None:
                proc.ticker = threading.Thread(target=self._tick, name="audit-checkpoints", daemon=True)
                proc.ticker.start()

    def _write(self, proc: _Process, entry: dict[str, Any]) -> None:
        fd = self._locked_descriptor(proc)
        try:
            if proc.chain.seq and not proc.in_file:  # the stream's first line in a new file: say where it was
                self._put(fd, proc, {"action": CONTINUED, "time": utc_now(),
                                     "details": {"from": "the previous audit file (rotated)"}})
            line = self._put(fd, proc, entry)
            proc.in_file = True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        if self.shipper is not None:
            self.shipper.send(line)

    def _put(self, fd: int, proc: _Process, entry: dict[str, Any]) -> dict[str, Any]:
        """One line, linked into its stream (`seq`, `prev`) and into the file (`after`: the file's last line)."""
        size = os.fstat(fd).st_size
        after = proc.last_hash if size == proc.file_end and size else _last_line_hash(fd, size)
        line = proc.chain.link({**entry, "stream": proc.stream, "after": after})
        data = encode(line)
        try:
            written = os.write(fd, data + b"\n")
        except OSError:
            written = -1
        if written != len(data) + 1:  # a full disk: no torn line may stay for the next writer to follow
            os.ftruncate(fd, size)
            raise OSError(f"the audit record could not be written whole to {self.path}")
        proc.chain.advance(line, data)
        proc.file_end, proc.last_hash = size + len(data) + 1, proc.chain.head
        return line

    def _locked_descriptor(self, proc: _Process) -> int:
        """The current file's descriptor, under its exclusive flock; rotates the file when it is full."""
        while True:
            if proc.fd is None:
                proc.fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)  # read: the last line
                proc.ino, proc.in_file, proc.file_end = os.fstat(proc.fd).st_ino, False, 0
            fd = proc.fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            now = time.monotonic()
            if now >= proc.next_look:  # has another process rotated the file? (a path lookup: once a second)
                proc.next_look = now + 1.0
                try:
                    current = os.stat(self.path).st_ino
                except FileNotFoundError:
                    current = -1
                if current != proc.ino:  # follow the path (until then, lines went on into the rotated file)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
                    proc.fd = None
                    continue
            if self.max_bytes and os.fstat(fd).st_size >= self.max_bytes:
                try:
                    ours = os.stat(self.path).st_ino == proc.ino
                except FileNotFoundError:
                    ours = False
                if ours:  # else another process rotated it already: only follow the path
                    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
                    os.rename(self.path, self.path.with_name(f"{self.path.stem}-{stamp}{self.path.suffix}"))
                    self._wake.set()  # the ticker seals at once: a checkpoint at rotation
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                proc.fd = None
                continue
            return fd

    # -- checkpoints -----------------------------------------------------------------------------------------

    def checkpoint(self, reason: str = "interval", also: tuple[AuditSealer, ...] = ()) -> Checkpoint | None:
        """Sign this process's stream head, if records came after the last checkpoint; write and store it.

        `also`: further keys that sign the same statement, each with its certificate in the checkpoint (a key
        rotation: the verifier trusts a key that a trusted key's checkpoint introduces)."""
        if self.sealer is None:
            return None
        with self._seal_lock:
            with self._lock:
                proc = self._proc
                if proc is None or proc.pid != os.getpid() or proc.chain.seq <= proc.sealed_seq or self._closed:
                    return None
                statement = Statement(proc.stream, proc.chain.seq, proc.chain.head,
                                      datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), reason)
            # Signed outside the writer lock: requests keep writing records meanwhile (the statement names its seq).
            cp = Checkpoint(statement, (self.sealer.sign(statement),
                                        *(s.sign(statement, with_certificate=True) for s in also)))
            with self._lock:
                if self._proc is not proc or self._closed:
                    return None
                self._write(proc, {"action": CHECKPOINT, "time": statement.time, "checkpoint": cp.to_json()})
                proc.sealed_seq = proc.chain.seq if proc.chain.seq == statement.seq + 1 else statement.seq
                if proc.fd is not None:
                    os.fsync(proc.fd)  # on disk before the database says it exists
        if self.on_checkpoint is not None:
            self.on_checkpoint(cp)
        return cp

    def _tick(self) -> None:
        while not self._stopping:
            rotated = self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                if self.checkpoint("rotation" if rotated else "interval") is not None:
                    metrics.audit_checkpoint("signed")
            except Exception as exc:  # noqa: BLE001 (a KMS or database outage: the next tick tries again)
                metrics.audit_checkpoint("failed")
                log.error("audit checkpoint not signed: %s", exc)

    def close(self) -> None:
        """Seal this process's stream (a checkpoint at shutdown) and close the file."""
        if self._closed:
            return
        self._stopping = True
        self._wake.set()
        ticker = self._proc.ticker if self._proc is not None and self._proc.pid == os.getpid() else None
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(timeout=60)  # a checkpoint it is signing lands first
        try:
            if self.checkpoint("shutdown") is not None:
                metrics.audit_checkpoint("signed")
        except Exception as exc:  # noqa: BLE001 (shutting down: say so, the verifier reports the unsealed tail)
            metrics.audit_checkpoint("failed")
            log.error("audit checkpoint at shutdown not signed: %s", exc)
        with self._lock:
            self._closed = True
            proc = self._proc
            if proc is not None and proc.pid == os.getpid() and proc.fd is not None:
                os.close(proc.fd)
                proc.fd = None
        if self.shipper is not None:
            self.shipper.close()


def _last_line_hash(fd: int, size: int) -> str:
    """The SHA-256 of the file's last line (without its newline), read backwards a few KiB at a time."""
    end = size - 1  # the last line's newline
    tail, start = b"", end
    while start > 0:
        step = min(start, 8192)
        start -= step
        tail = os.pread(fd, step, start) + tail
        cut = tail.rfind(b"\n")
        if cut >= 0:
            return sha256_hex(tail[cut + 1:])
    return sha256_hex(tail) if size else GENESIS


def read_events(path: Path) -> list[dict[str, Any]]:
    """All event records (not the trail's own stream, continuation and checkpoint lines), oldest first."""
    if not path.exists():
        return []
    records = (json.loads(line) for line in path.read_text().split("\n") if line.strip())
    return [r for r in records if r.get("action") not in CONTROL]
