"""Checkpoints: the audit key's signature over one stream's chain head, in a form `openssl` can check alone.

The signed bytes are a one-line statement, not a JSON re-encoding, so an auditor needs no canonicaliser:

    hsmca-audit-checkpoint/1 stream=S seq=N head=H time=T reason=R

`head` is the SHA-256 of the stream's line number `seq` (the line's bytes without its newline: `sha256sum`
of `sed -n 'Lp' FILE | tr -d '\\n'`), and the signature is the audit key's over the statement's UTF-8 bytes
(`openssl dgst -sha256 -verify audit.pub -signature sig.der statement.txt`; README, Audit trail).
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.certutil import fingerprint
from kms.chained_log import signature_problem, signer_for

PREFIX = "hsmca-audit-checkpoint/1"
CHECKPOINT = "audit.checkpoint"
STREAM_START = "audit.stream"
CONTINUED = "audit.continued"  # the first line of a stream in a file after rotation
CONTROL = (CHECKPOINT, STREAM_START, CONTINUED)
_STATEMENT = re.compile(
    rf"^{re.escape(PREFIX)} stream=(\S+) seq=([1-9][0-9]{{0,18}}) head=([0-9a-f]{{64}}) time=(\S+) reason=([a-z-]+)$")


@dataclass(frozen=True)
class Statement:
    """What a checkpoint signs; the checkpoint line's own `time` is this `time`, so nothing in it goes unsigned
    but its links (which the chain checks) and the signatures themselves."""

    stream: str
    seq: int
    head: str
    time: str
    reason: str  # interval, shutdown, rotation, key-rotation, key-created

    def text(self) -> str:
        return (f"{PREFIX} stream={self.stream} seq={self.seq} head={self.head} time={self.time} "
                f"reason={self.reason}")

    @classmethod
    def parse(cls, text: object) -> Statement | None:
        m = _STATEMENT.match(text) if isinstance(text, str) else None
        return cls(m[1], int(m[2]), m[3], m[4], m[5]) if m else None


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement, as written into the stream and stored in the database."""

    statement: Statement
    signatures: tuple[dict[str, str], ...]  # {"key": cert sha256, "algorithm": ..., "signature": base64}

    @property
    def reason(self) -> str:
        return self.statement.reason

    def to_json(self) -> dict[str, Any]:
        return {"statement": self.statement.text(), "signatures": list(self.signatures)}


class AuditSealer:
    """The audit key (opened through kms/ on first use, after any fork) and the certificate the CA issued for it."""

    def __init__(self, open_key: Callable[[], Any], certificate: x509.Certificate):
        self._open_key, self.certificate = open_key, certificate
        self.fingerprint = fingerprint(certificate)
        self._key: Any = None
        self._lock = threading.Lock()

    def sign(self, statement: Statement, *, with_certificate: bool = False) -> dict[str, str]:
        with self._lock:
            if self._key is None:
                self._key = self._open_key()
            key = self._key
        algorithm, sign = signer_for(key)
        data = statement.text().encode()
        signature = sign(data)
        problem = signature_problem(self.certificate.public_key(), algorithm, signature, data)
        if problem is not None:  # the KMS key is not the one the certificate names: never write such a seal
            raise ValueError(f"the audit key does not match its certificate ({problem})")
        signed = {"key": self.fingerprint, "algorithm": algorithm, "signature": base64.b64encode(signature).decode()}
        if with_certificate:
            signed["certificate"] = base64.b64encode(self.certificate.public_bytes(Encoding.DER)).decode()
        return signed
