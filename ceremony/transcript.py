"""The ceremony transcript: hash-chained JSON lines, each ceremony sealed by a signature of the root key.

An auditor holding only the root certificate must be able to tell whether a transcript is the one the
ceremonies wrote: each line names the SHA-256 of the line before it (no line can be changed, removed or
moved without breaking a link), and each ceremony (segment) ends with a seal signed by the root key,
which covers the whole file up to it through the chain. Later ceremonies append to the same file.

Lines are canonical JSON (sorted keys, no spaces, UTF-8), each written with flush and fsync: a crash
loses at most the line being written, and a partial line is detected, never silently continued.
PINs and shares never belong here; `record` refuses details keys that would only ever carry one.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from kms.chained_log import (
    GENESIS,
    Chain,
    LinkCheck,
    SealError,
    b64_signature,
    canonical,
    parse_lines,
    sha256_hex,
    signature_problem,
    signer_for,
    split_lines,
)

__all__ = ["GENESIS", "Report", "Segment", "Transcript", "TranscriptError", "canonical", "file_digest", "sha256_hex",
           "summary", "verify"]

START, SEAL = "ceremony.start", "seal"
_REQUIRED = {"seq": int, "time": str, "ceremony": str, "step": str, "action": str, "prev": str}
_SECRET_KEYS = {"pin", "so_pin", "user_pin", "share", "mnemonic", "mnemonics", "secret", "password", "passphrase"}


class TranscriptError(Exception):
    """The transcript cannot be opened or written; the message tells the operator what to do."""


def file_digest(path: Path) -> dict[str, str]:
    """An `inputs`/`outputs` entry for a file, hashed exactly as it is on disk."""
    return {"sha256": sha256_hex(Path(path).read_bytes()), "path": str(path)}


def _secret_keys(value: Any) -> list[str]:
    """Keys anywhere in `value` that name a secret: a guard against a caller's slip, not a filter."""
    if isinstance(value, Mapping):
        return [str(k) for k in value if str(k).lower() in _SECRET_KEYS] + \
            [found for item in value.values() for found in _secret_keys(item)]
    return [found for item in value for found in _secret_keys(item)] if isinstance(value, list | tuple) else []


@dataclass
class Segment:
    """One ceremony of the file as read; `intact`: no broken link or bad line after its first line."""

    ceremony_id: str
    kind: str
    started: str
    sealed_at: str | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    signer_sha256: str | None = None
    signature_ok: bool = False
    first_line: int = 0
    intact: bool = True


@dataclass
class Report:
    segments: list[Segment] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    matched: dict[str, str] = field(default_factory=dict)  # file label -> "step X of ceremony Y"

    @property
    def ok(self) -> bool:
        return not self.problems


def _walk(data: bytes, check_seal: Callable[[int, dict[str, Any]], list[str]] | None) -> Report:
    """Check framing, seq, hash links and segment structure, and the seals with `check_seal`."""
    report, current = Report(), None

    def flag(number: int, problem: str) -> None:
        report.problems.append(problem)
        if current is not None and number > current.first_line:
            current.intact = False  # its seal no longer vouches for every line of it

    raws, torn = split_lines(data)
    if not data:
        flag(1, "the transcript is empty")
    elif torn:
        flag(len(raws) + 1, torn)
    chain = LinkCheck()  # one chain through every ceremony of the file
    for number, raw, obj, bad in parse_lines(raws):
        if bad is not None:
            flag(number, bad)
            chain.check(number, raw, {})  # the next line must still link to this one
            continue
        missing = [k for k, t in _REQUIRED.items() if not isinstance(obj, dict) or not isinstance(obj.get(k), t)]
        if missing:
            flag(number, f"line {number} lacks or mistypes the field(s) {', '.join(missing)}")
            chain.check(number, raw, obj if isinstance(obj, dict) else {})
            continue
        if current is None or obj["ceremony"] != current.ceremony_id:
            if current is not None and current.sealed_at is None:
                flag(number, f"line {number} starts ceremony {obj['ceremony']} but ceremony {current.ceremony_id} "
                     f"(from line {current.first_line}) was not sealed before it")
            details = obj.get("details")
            kind = details.get("kind", "unknown") if obj["step"] == START and isinstance(details, dict) else "unknown"
            current = Segment(obj["ceremony"], str(kind), obj["time"], first_line=number)
            report.segments.append(current)
            if obj["step"] != START:
                flag(number, f"line {number} starts ceremony {obj['ceremony']} with {obj['step']!r}, not {START!r}")
        elif current.sealed_at is not None:
            flag(number, f"line {number} continues ceremony {current.ceremony_id} after its seal")
        current.steps.append(obj)
        for problem in chain.check(number, raw, obj):
            flag(number, problem)
        if obj["step"] == SEAL:
            signer = obj.get("signer")
            current.sealed_at = obj["time"]
            current.signer_sha256 = signer.get("sha256") if isinstance(signer, dict) else None
            if check_seal is not None:
                seal_problems = check_seal(number, obj)
                current.signature_ok = not seal_problems
                report.problems.extend(seal_problems)
    if current is not None and current.sealed_at is None:
        report.problems.append(f"ceremony {current.ceremony_id} (from line {current.first_line}) has no seal at its "
                               "end: the ceremony was interrupted or the transcript was cut short")
    return report


class Transcript:
    """Appends one ceremony (segment) to a transcript file; `seal` ends it with a signature."""

    def __init__(self, path: Path, ceremony_id: str, seq: int, prev: str, clock: Callable[[], datetime]) -> None:
        self._path, self._ceremony_id, self._clock = path, ceremony_id, clock
        self._chain = Chain(seq, prev)
        self._sealed = False

    @property
    def path(self) -> Path:
        return self._path

    @property
    def ceremony_id(self) -> str:
        return self._ceremony_id

    @classmethod
    def open(cls, path: Path, ceremony_kind: str, *, clock: Callable[[], datetime] | None = None) -> Transcript:
        """Start a new ceremony in `path`: a new file, or the continuation of an intact, sealed transcript."""
        path, seq, prev = Path(path), 0, GENESIS
        if path.exists():
            data = path.read_bytes()
            if data:
                report = _walk(data, None)
                if report.problems:
                    raise TranscriptError(
                        f"the transcript {path} cannot be continued: {'; '.join(report.problems)}. Keep this file "
                        "as evidence (`hsmca ceremony verify` reports on it) and write this ceremony to a new file.")
                seq, prev = report.segments[-1].steps[-1]["seq"], sha256_hex(data[:-1].rsplit(b"\n", 1)[-1])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.fchmod(fd, 0o644)  # auditors read it whatever the umask: it holds no secret
            os.close(fd)
            fd = os.open(path.parent, os.O_RDONLY)  # make the new directory entry durable too
            os.fsync(fd)
            os.close(fd)
        transcript = cls(path, str(uuid.uuid4()), seq, prev, clock or (lambda: datetime.now(timezone.utc)))
        transcript._write(transcript._line({"step": START, "action": f"Start of the {ceremony_kind} ceremony",
                                            "details": {"kind": ceremony_kind}}))
        return transcript

    def record(self, step: str, action: str, *, inputs: Mapping[str, Mapping[str, str]] | None = None,
               outputs: Mapping[str, Mapping[str, str]] | None = None,
               details: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Append one step; inputs/outputs map a name to {"sha256": ..., "path": ...} (see `file_digest`)."""
        if step in (START, SEAL) or not step or not action:
            raise TranscriptError(f"a step needs an action and a name other than {START!r} and {SEAL!r}")
        entry: dict[str, Any] = {"step": step, "action": action}
        for name, files in (("inputs", inputs), ("outputs", outputs)):
            if files:
                bad = [k for k, v in files.items() if not isinstance(v, Mapping) or len(str(v.get("sha256"))) != 64]
                if bad:
                    raise TranscriptError(f"{name} {', '.join(bad)} lack a SHA-256 (use file_digest)")
                entry[name] = {k: dict(v) for k, v in files.items()}
        if details:
            if found := _secret_keys(details):
                raise TranscriptError(f"the details of step {step!r} have the field(s) {', '.join(found)}: "
                                      "PINs, shares and secrets never go in a transcript")
            entry["details"] = dict(details)
        line = self._line(entry)
        self._write(line)
        return line

    def seal(self, key: Any, certificate: x509.Certificate) -> dict[str, Any]:
        """End the ceremony with a signature by `key`, checked with `certificate` before it is written."""
        subject = certificate.subject.rfc4514_string()
        try:
            algorithm, sign = signer_for(key)
        except SealError as exc:
            raise TranscriptError(str(exc)) from None
        line = self._line({"step": SEAL, "action": f"Transcript sealed by {subject}", "algorithm": algorithm,
                           "signer": {"subject": subject, "sha256": sha256_hex(
                               certificate.public_bytes(serialization.Encoding.DER))}})
        signed = canonical(line)
        signature = sign(signed)
        problem = signature_problem(certificate.public_key(), algorithm, signature, signed)
        if problem is not None:
            raise TranscriptError(f"not sealed: the key does not match the certificate of {subject} ({problem})")
        line["signature"] = base64.b64encode(signature).decode("ascii")
        self._write(line)
        self._sealed = True
        return line

    def _line(self, entry: dict[str, Any]) -> dict[str, Any]:
        if self._sealed:
            raise TranscriptError(f"ceremony {self._ceremony_id} is sealed; nothing more can be recorded in it")
        try:
            canonical(entry)
        except (TypeError, ValueError) as exc:
            raise TranscriptError(f"a transcript line must be plain JSON: {exc}") from exc
        moment = self._clock()
        moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        return self._chain.link({"time": moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                 "ceremony": self._ceremony_id, **entry})

    def _write(self, line: dict[str, Any]) -> None:
        data = canonical(line)
        with open(self._path, "ab") as f:
            f.write(data + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._chain.advance(line, data)


def _entries(step: Mapping[str, Any], direction: str) -> list[tuple[str, dict[str, Any]]]:
    files = step.get(direction)
    return [(k, v) for k, v in files.items() if isinstance(v, dict)] if isinstance(files, dict) else []


def verify(path: Path, root: x509.Certificate, files: Mapping[str, bytes]) -> Report:
    """Check a transcript with the root certificate, and that each given file is an output of it.

    Every seal must verify with the root key (it seals the root ceremony and the later ones). A file
    counts only as the output of an intact segment whose seal verifies; it is hashed exactly as given.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise TranscriptError(f"cannot read the transcript {path}: {exc}") from exc
    root_sha256 = sha256_hex(root.public_bytes(serialization.Encoding.DER))

    def check_seal(number: int, line: dict[str, Any]) -> list[str]:
        found, signer = [], line.get("signer")
        signer_sha256 = signer.get("sha256") if isinstance(signer, dict) else None
        if signer_sha256 != root_sha256:
            found.append(f"line {number}: the seal names the signer certificate sha256 {signer_sha256}, "
                         f"not the root certificate (sha256 {root_sha256})")
        algorithm, encoded = line.get("algorithm"), line.get("signature")
        signature = b64_signature(encoded)
        if signature is None:
            return [*found, f"line {number}: the seal has no valid base64 signature"]
        signed = canonical({k: v for k, v in line.items() if k != "signature"})
        problem = signature_problem(root.public_key(), str(algorithm), signature, signed)
        if problem is not None:
            found.append(f"line {number}: the seal does not verify with the root certificate's key: {problem}")
        return found

    report = _walk(data, check_seal)
    try:
        root.verify_directly_issued_by(root)
    except (ValueError, TypeError, InvalidSignature) as exc:
        report.problems.append(f"the root certificate {root.subject.rfc4514_string()} is not self-signed: "
                               f"{exc or type(exc).__name__}")
    good: dict[str, str] = {}
    bad: dict[str, str] = {}
    for segment in report.segments:
        for step in segment.steps:
            for name, out in _entries(step, "outputs"):
                where = f"step {step['step']} (#{step['seq']}, output {name!r}) of ceremony {segment.ceremony_id}"
                (good if segment.signature_ok and segment.intact else bad).setdefault(str(out.get("sha256")), where)
    for label, content in files.items():
        digest = sha256_hex(content)
        if digest in good:
            report.matched[label] = good[digest]
        elif digest in bad:
            report.problems.append(f"the {label} file (sha256 {digest}) is recorded as the output of {bad[digest]}, "
                                   "but that ceremony's record does not verify")
        else:
            report.problems.append(f"the {label} file (sha256 {digest}) is not an output of any ceremony "
                                   "in this transcript")
    return report


def _short(digest: object) -> str:
    return f"{digest[:16]}…" if isinstance(digest, str) else "?"


def summary(report: Report) -> str:
    """A plain-text account of the transcript for an auditor's file, ending with the verdict."""
    out: list[str] = []
    for n, segment in enumerate(report.segments, start=1):
        seal = "NOT SEALED"
        if segment.sealed_at is not None:
            verdict = "signature verified" if segment.signature_ok else "signature NOT verified"
            seal = f"{segment.sealed_at} ({verdict}, signer sha256 {_short(segment.signer_sha256)})"
        out += [f"Ceremony {n}: {segment.kind}", f"  id:      {segment.ceremony_id}",
                f"  started: {segment.started}", f"  sealed:  {seal}"]
        for step in segment.steps:
            out.append(f"  #{step['seq']} {step['time']} {step['step']}: {step['action']}")
            for direction in ("inputs", "outputs"):
                for name, entry in _entries(step, direction):
                    where = f" ({entry['path']})" if entry.get("path") else ""
                    out.append(f"      {direction[:-1]} {name}: sha256 {_short(entry.get('sha256'))}{where}")
            details = step.get("details")
            for key, value in details.items() if isinstance(details, dict) and step["step"] != START else ():
                shown = (", ".join(map(str, value)) if isinstance(value, list) else value if isinstance(value, str)
                         else json.dumps(value, ensure_ascii=False))
                out.append(f"      {key}: {shown}")
        out.append("")
    out += [f"File {label}: {where}" for label, where in report.matched.items()]
    out.append("VERIFIED" if report.ok else "FAILED")
    out += [f"  - {problem}" for problem in report.problems]
    return "\n".join(out) + "\n"
