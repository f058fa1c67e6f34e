"""Signed audit checkpoints in the database, beside the audit files they vouch for.

A checkpoint in an audit file proves the lines before it, but nothing proves that the file still reaches its
last checkpoint: cut short after (or at) one, it verifies cleanly. The database keeps each stream's
checkpoints on a different medium, usually a different machine, so the verifier compares the highest
sequence number recorded here with what the file holds and notices the truncation.

Rows are written once and never changed: the primary key (stream, seq) allows one head per line, whichever
replica writes it. Adding the same checkpoint again (a retry after a lost answer) is a no-op; a different
head for a recorded (stream, seq) means two histories for one stream and is refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from .engine import Repository
from .errors import StoreError
from .records import check_text, now_utc, utc
from .schema import (
    AUDIT_REASON_LENGTH,
    AUDIT_STATEMENT_LENGTH,
    AUDIT_STREAM_LENGTH,
    audit_checkpoints,
)

MAX_SEQ = 2**63 - 1  # BIGINT on every backend
SIGNATURE_FIELDS = frozenset({"key", "algorithm", "signature"})
_HEAD = re.compile(r"[0-9a-f]{64}")

_a = audit_checkpoints.c


class CheckpointConflict(StoreError):
    """A different head is already recorded for this (stream, seq): the stream has two histories."""


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    """One signed checkpoint: `head` is the hex SHA-256 of line `seq` of `stream`, `time` aware UTC."""

    stream: str
    seq: int
    head: str
    time: datetime
    reason: str  # interval, shutdown, rotation, key-rotation
    statement: str  # the exact text signed
    signatures: list[dict[str, str]]  # {"key": cert SHA-256, "algorithm": ..., "signature": base64}


class AuditCheckpointStore(Repository):
    """The audit_checkpoints table, over the Store's transactions."""

    def add(self, cp: StoredCheckpoint, *, now: datetime | None = None) -> None:
        """Record `cp` (recorded_at = now); a no-op when already recorded with the same head, CheckpointConflict
        when recorded with another."""
        row = _row(cp, utc(now or now_utc(), "now"))
        try:
            with self._write("recording an audit checkpoint") as conn:
                if _same_or_conflict(conn, cp):
                    return
                conn.execute(audit_checkpoints.insert(), row)
        except StoreError as exc:
            if not isinstance(exc.__cause__, IntegrityError):
                raise
            # Another writer inserted the same (stream, seq) between our read and our insert: decide on its
            # row, read in a fresh transaction (a repeatable-read snapshot would not show it).
            with self._read("reading an audit checkpoint") as conn:
                recorded = _same_or_conflict(conn, cp)
            if not recorded:
                raise

    def since(self, time: datetime | None) -> list[StoredCheckpoint]:
        """Every checkpoint whose statement time is at or after `time` (all when None), by stream then seq."""
        query = sa.select(audit_checkpoints)
        if time is not None:
            query = query.where(_a.time >= utc(time, "time"))
        with self._read("reading audit checkpoints") as conn:
            rows = conn.execute(query.order_by(_a.stream, _a.seq)).all()
        return [_record(r) for r in rows]


def _same_or_conflict(conn: Connection, cp: StoredCheckpoint) -> bool:
    """True when `cp` is already recorded; CheckpointConflict when another head is; False when absent."""
    head = conn.execute(sa.select(_a.head).where(_a.stream == cp.stream, _a.seq == cp.seq)).scalar_one_or_none()
    if head is None:
        return False
    if head != cp.head:
        raise CheckpointConflict(f"audit stream {cp.stream!r} already has a checkpoint at seq {cp.seq} with head "
                                 f"{head}, not {cp.head}")
    return True


def _row(cp: StoredCheckpoint, now: datetime) -> dict[str, Any]:
    """The row for `cp`, validated so that bad input is a caller error rather than a database one."""
    check_text(cp.stream, "stream", AUDIT_STREAM_LENGTH)
    if isinstance(cp.seq, bool) or not isinstance(cp.seq, int):
        raise TypeError(f"seq must be an int, not {type(cp.seq).__name__}")
    if not 0 < cp.seq <= MAX_SEQ:
        raise ValueError("seq must be a positive 64-bit integer")
    if not isinstance(cp.head, str) or not _HEAD.fullmatch(cp.head):
        raise ValueError("head must be 64 lowercase hex digits (a SHA-256)")
    check_text(cp.reason, "reason", AUDIT_REASON_LENGTH)
    check_text(cp.statement, "statement", AUDIT_STATEMENT_LENGTH)
    return {"stream": cp.stream, "seq": cp.seq, "head": cp.head, "time": utc(cp.time, "time"), "reason": cp.reason,
            "statement": cp.statement, "signatures": _signatures(cp.signatures), "recorded_at": now}


def _signatures(value: object) -> list[dict[str, str]]:
    """A non-empty list of {"key", "algorithm", "signature"} string dicts (a key rotation's new key also carries its
    "certificate"): a checkpoint nobody signed proves nothing."""
    if isinstance(value, str | bytes) or not isinstance(value, Sequence) or not value:
        raise ValueError("signatures must be a non-empty list of dicts")
    out = []
    for sig in value:
        if (not isinstance(sig, dict) or not SIGNATURE_FIELDS <= set(sig) <= SIGNATURE_FIELDS | {"certificate"}
                or not all(isinstance(v, str) and v for v in sig.values())):
            raise ValueError('each signature must be {"key", "algorithm", "signature"[, "certificate"]} with '
                             'non-empty strings')
        out.append(dict(sig))
    return out


def _record(row: Any) -> StoredCheckpoint:
    return StoredCheckpoint(row.stream, int(row.seq), row.head, row.time, row.reason, row.statement,
                            [dict(s) for s in row.signatures])
