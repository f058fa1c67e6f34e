"""The audit trail: one `record(event)` for every issuance and every refusal.

JSON lines for now (hash chaining and signed checkpoints come later). Several worker processes
append to one file: each record is a single `write` on an O_APPEND descriptor under an exclusive
`flock`, so lines never interleave. Tokens, passwords and keys have no field here, and any string
that looks like a JWT or a PEM block is scrubbed before it is written.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Protocol

_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*")
_PEM = re.compile(r"-----BEGIN [A-Z ]+-----.*?(-----END [A-Z ]+-----|$)", re.S)


def scrub(text: str) -> str:
    """Remove token- or key-shaped material from free text (error messages quote inputs)."""
    return _PEM.sub("[pem redacted]", _JWT.sub("[token redacted]", text))


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
        rec["time"] = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        rec["reasons"] = [scrub(r) for r in self.reasons]
        rec["sans"] = list(self.sans)
        return {k: v for k, v in rec.items() if v not in (None, [], {})}


_FIELDS = tuple(f.name for f in fields(AuditEvent))


class AuditLog(Protocol):
    def record(self, event: AuditEvent) -> None: ...


class JsonLinesAudit:
    """Append-only JSON lines file, safe across processes and threads."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    def _descriptor(self) -> int:
        # A descriptor inherited across fork would share its lock state: reopen per process.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._pid = os.getpid()
        return self._fd

    def record(self, event: AuditEvent) -> None:
        line = (json.dumps(event.to_record(), sort_keys=True, default=str) + "\n").encode()
        with self._lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                os.write(fd, line)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = None


def read_events(path: Path) -> list[dict[str, Any]]:
    """All records, oldest first (for `hsmca audit` and the tests)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
