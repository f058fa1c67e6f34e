"""`hsmca audit verify`: check every stream's chain and every checkpoint's signature, offline, file by file.

A record changed, removed, inserted or moved breaks its stream's links at that line, and is reported by file and
line. A stream's last lines after its last checkpoint are not sealed (a killed process leaves them; so does a file
cut after a checkpoint): without the database they are reported as an unsealed tail, a warning; with it, a
checkpoint the database holds but the files do not is a truncation, a failure. Files are read line by line,
so a 256 MiB file does not need 256 MiB of memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from cryptography import x509

from appliance.audit.seal import CHECKPOINT, CONTINUED, STREAM_START, Statement
from appliance.audit.trail import encode
from appliance.certutil import fingerprint
from kms.chained_log import GENESIS, b64_signature, sha256_hex, signature_problem

_RECENT_LIMIT = 200_000
MAX_LINE = 16 << 20  # records are a few KiB (a request is bounded by server.maxRequestBytes); longer: not one
_REQUIRED = {"seq": int, "prev": str, "after": str, "stream": str, "action": str, "time": str}


class KnownCheckpoint(Protocol):
    """A checkpoint as the database holds it (appliance.store.audit_checkpoints.StoredCheckpoint)."""

    stream: str
    seq: int
    head: str
    time: datetime


@dataclass
class Stream:
    name: str
    first: str  # "FILE line N"
    last: str = ""
    first_seq: int = 0
    seq: int = 0
    head: str = GENESIS
    records: int = 0  # event records (not the trail's own lines)
    checkpoints: int = 0
    sealed_seq: int = 0  # the last seq a verified checkpoint covers (its own line included when it is the head)
    first_time: str = ""
    last_time: str = ""
    broken: bool = False
    # seq -> (SHA-256, where, an event record?) for the lines after the last verified checkpoint's statement
    recent: dict[int, tuple[str, str, bool]] = field(default_factory=dict)
    checkpoint_heads: dict[int, str] = field(default_factory=dict)  # statement seq -> head, as in the files

    def unsealed(self) -> list[str]:
        """Where the event records after the last verified checkpoint are (the trail's own lines need no seal)."""
        return [where for seq, (_, where, event) in sorted(self.recent.items()) if event and seq > self.sealed_seq]


@dataclass
class Report:
    files: list[str] = field(default_factory=list)
    lines: int = 0
    streams: dict[str, Stream] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # sha256 -> subject of the keys that signed checkpoints

    @property
    def ok(self) -> bool:
        return not self.problems


class _Verifier:
    def __init__(self, keys: Iterable[x509.Certificate]):
        self.report = Report()
        self.trusted = {fingerprint(c): c for c in keys}
        self.file_head, self.file_last = GENESIS, ""  # the current file's last line: its hash, where it is

    def problem(self, where: str, text: str, stream: Stream | None = None) -> None:
        self.report.problems.append(f"{where}: {text}")
        if stream is not None:
            stream.broken = True

    def file(self, path: Path) -> None:
        label = str(path)
        self.report.files.append(label)
        try:
            f = path.open("rb")
        except OSError as exc:
            self.problem(label, f"cannot be read ({exc.strerror or exc})")
            return
        with f:
            number, self.file_head, self.file_last = 0, GENESIS, ""
            while raw := f.readline(MAX_LINE + 1):
                number += 1
                self.report.lines += 1
                where = f"{label} line {number}"
                if len(raw) > MAX_LINE:
                    self.problem(where, f"is longer than {MAX_LINE} bytes: not a line the audit trail writes")
                    while raw and not raw.endswith(b"\n"):  # skip the rest of it, a bounded piece at a time
                        raw = f.readline(MAX_LINE + 1)
                    continue
                if not raw.endswith(b"\n"):
                    self.problem(where, "is incomplete (no newline at its end): the file was cut or a write was "
                                 "interrupted")
                    break
                self.line(where, raw[:-1])
                self.file_head, self.file_last = sha256_hex(raw[:-1]), where
            if number == 0:
                self.report.warnings.append(f"{label}: the file is empty")

    def line(self, where: str, raw: bytes) -> None:
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            self.problem(where, f"is not valid JSON ({type(exc).__name__}): the line was changed")
            return
        missing = [k for k, t in _REQUIRED.items() if not isinstance(obj, dict) or not isinstance(obj.get(k), t)]
        if missing:
            self.problem(where, f"lacks or mistypes {', '.join(missing)}: not a line the audit trail writes")
            return
        name, seq, digest = obj["stream"], obj["seq"], sha256_hex(raw)
        if obj["after"] != self.file_head:  # the file's own order: every line names the one above it
            before = f"the line above it ({self.file_last})" if self.file_last else "the start of the file"
            self.problem(where, f"does not follow {before}: lines of the file were removed, inserted or moved")
        stream = self.report.streams.get(name)
        if stream is None:
            stream = self.report.streams[name] = Stream(name, where, first_seq=seq, first_time=obj["time"])
            if obj["action"] == CONTINUED:
                self.report.warnings.append(f"{where}: stream {name} continues from an earlier file, not given "
                                            f"(its lines before seq {seq} are not checked)")
                stream.seq, stream.head, stream.sealed_seq = seq - 1, obj["prev"], seq - 1
            elif seq != 1 or obj["prev"] != GENESIS or obj["action"] != STREAM_START:
                self.problem(where, f"stream {name} begins at seq {seq} without its first line: the lines before "
                             "it were removed", stream)
                stream.seq, stream.head, stream.sealed_seq = seq - 1, obj["prev"], seq - 1
        if obj["prev"] != stream.head:
            self.problem(where, f"does not link to the line before it in stream {name} ({stream.last}): that "
                         "line was changed, or a line was removed, inserted or moved between them", stream)
        if seq != stream.seq + 1:
            kind = "removed" if seq > stream.seq + 1 else "inserted or moved"
            self.problem(where, f"stream {name} jumps from seq {stream.seq} to {seq}: a line was {kind}", stream)
        if encode(obj) != raw:
            self.problem(where, "is not in the form the audit trail writes: the line was edited", stream)
        stream.seq, stream.head, stream.last, stream.last_time = seq, digest, where, obj["time"]
        event = obj["action"] not in (CHECKPOINT, STREAM_START, CONTINUED)
        stream.records += event
        stream.recent[seq] = (digest, where, event)
        if len(stream.recent) > _RECENT_LIMIT:  # never sealed (no audit key?): keep memory bounded
            for old in sorted(stream.recent)[: _RECENT_LIMIT // 2]:
                del stream.recent[old]
        if obj["action"] == CHECKPOINT:
            stream.checkpoints += 1
            self.checkpoint(where, stream, obj)

    def checkpoint(self, where: str, stream: Stream, obj: dict[str, Any]) -> None:
        cp = obj.get("checkpoint")
        statement = Statement.parse(cp.get("statement")) if isinstance(cp, dict) else None
        if statement is None or not isinstance(cp, dict):
            self.problem(where, "is a checkpoint without a valid statement", stream)
            return
        if set(cp) != {"statement", "signatures"} or obj["time"] != statement.time or \
                set(obj) != {"action", "after", "checkpoint", "prev", "seq", "stream", "time"}:
            self.problem(where, "is a checkpoint with fields its statement does not cover: the line was edited", stream)
            return
        if statement.stream != stream.name or statement.seq >= obj["seq"]:
            self.problem(where, f"its statement names stream {statement.stream} seq {statement.seq}, not a line "
                         f"before it in stream {stream.name}", stream)
            return
        stream.checkpoint_heads[statement.seq] = statement.head
        entry = stream.recent.get(statement.seq)
        head = entry[0] if entry else statement.head if statement.seq <= stream.sealed_seq else None
        if head != statement.head:
            self.problem(where, f"its statement's head does not match the SHA-256 of stream {stream.name}'s "
                         f"line seq {statement.seq}: a line before it was changed", stream)
            return
        valid, seen = False, []
        signatures = cp.get("signatures")
        signatures = [s for s in signatures if isinstance(s, dict)] if isinstance(signatures, list) else []
        introduced = self.introduced(signatures)
        for sig in signatures:
            key = sig.get("key")
            cert = self.trusted.get(key) or introduced.get(key) if isinstance(key, str) else None
            if cert is None:
                seen.append(f"a key not given (certificate sha256 {key})")
                continue
            signature = b64_signature(sig.get("signature"))
            why = "no valid base64 signature" if signature is None else signature_problem(
                cert.public_key(), str(sig.get("algorithm")), signature, statement.text().encode())
            if why is not None:
                self.problem(where, f"the checkpoint signature by {cert.subject.rfc4514_string()} fails: {why}",
                             stream)
                return
            self.report.keys[key] = cert.subject.rfc4514_string()
            valid = True
        if not valid or all(sig.get("key") in introduced for sig in signatures):
            self.problem(where, "the checkpoint is signed by no given audit key: "
                         f"{'; '.join(seen) or 'it has no signature'}", stream)
            return
        self.trusted.update(introduced)  # a key rotation: the trusted key vouched for the new one
        self.report.warnings += [f"{where}: the checkpoint also carries a signature by {what}: not checked"
                                 for what in seen]
        stream.sealed_seq = max(stream.sealed_seq, statement.seq)
        stream.recent = {s: e for s, e in stream.recent.items() if s > statement.seq}

    def introduced(self, signatures: list[dict[str, Any]]) -> dict[str, x509.Certificate]:
        """Certificates carried by a checkpoint's signatures (a key rotation) for keys not trusted yet."""
        found = {}
        for sig in signatures:
            der = b64_signature(sig.get("certificate"))
            if der is None or sig.get("key") in self.trusted:
                continue
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                continue
            if fingerprint(cert) == sig.get("key"):
                found[fingerprint(cert)] = cert
        return found

    def finish(self, known: Iterable[KnownCheckpoint] | None) -> Report:
        for stream in self.report.streams.values():
            tail = stream.unsealed()
            if tail:
                self.report.warnings.append(
                    f"stream {stream.name}: {len(tail)} line(s) from {tail[0]} to {tail[-1]} come after its last "
                    "checkpoint and are not sealed (the process was stopped without a checkpoint, e.g. killed, or "
                    "the file was cut after it)")
        for cp in known or ():
            found = self.report.streams.get(cp.stream)
            held = f"stream {cp.stream}: the database holds its checkpoint of seq {cp.seq} " \
                   f"({cp.time:%Y-%m-%dT%H:%M:%SZ})"
            if found is None:
                self.report.problems.append(
                    f"{held} but no file given has this stream: its records were removed (or give its file)")
            elif cp.seq > found.seq:
                self.report.problems.append(
                    f"{held} but the files end at seq {found.seq} ({found.last}): the file was truncated")
            elif cp.seq >= found.first_seq and cp.seq not in found.checkpoint_heads:
                self.report.problems.append(
                    f"{held} but its checkpoint line is not in the files: the file was truncated, or the line removed")
            elif found.checkpoint_heads.get(cp.seq, cp.head) != cp.head:
                self.report.problems.append(
                    f"stream {cp.stream}: the checkpoint of seq {cp.seq} in the files does not match the database's")
        return self.report


def verify(files: Iterable[Path], keys: Iterable[x509.Certificate],
           known: Iterable[KnownCheckpoint] | None = None) -> Report:
    """Check `files` (in the order given: rotated files first) with the audit key certificates `keys`;
    `known`: the database's checkpoints (from a time on), to detect truncation."""
    verifier = _Verifier(keys)
    for path in files:
        verifier.file(Path(path))
    return verifier.finish(known)


def summary(report: Report) -> str:
    """A plain-text account an auditor can file, ending with the verdict."""
    out = [f"Files:       {len(report.files)} ({', '.join(report.files)})", f"Lines:       {report.lines}"]
    times = sorted(t for s in report.streams.values() for t in (s.first_time, s.last_time) if t)
    if times:
        out.append(f"Time span:   {times[0]} to {times[-1]}")
    for key, subject in sorted(report.keys.items()):
        out.append(f"Audit key:   {subject} (certificate sha256 {key})")
    out.append(f"Streams:     {len(report.streams)}")
    for s in report.streams.values():
        sealed = f"sealed to seq {s.sealed_seq}" if s.sealed_seq else "never sealed"
        sealed += f", {len(s.unsealed())} unsealed" if s.unsealed() else ""
        out.append(f"  {s.name}: seq {s.first_seq}-{s.seq}, {s.records} records, {s.checkpoints} checkpoints, "
                   f"{sealed}{', BROKEN' if s.broken else ''} (from {s.first})")
    out += [f"Warning: {w}" for w in report.warnings]
    out.append("VERIFIED" if report.ok else "FAILED")
    out += [f"  - {p}" for p in report.problems]
    return "\n".join(out) + "\n"
