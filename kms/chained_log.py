"""Hash-chained JSON lines and the signatures that seal them, for the ceremony transcript and the audit trail.

A chained log is a file of canonical JSON lines (sorted keys, no spaces, UTF-8). Each line of a chain names its
sequence number (`seq`, from 1) and the SHA-256 of the chain's previous line (`prev`, `GENESIS` for the first):
no line can be changed, removed, inserted or moved without breaking a link. A seal (the ceremony's last line, an
audit checkpoint) is a signature made through `kms/` over exact bytes, so one key vouches for everything before
it. It lives in `kms/` because a seal is a key operation and because `ceremony/` may import `kms/` but never
the online service (`appliance/`); it imports nothing but cryptography and `kms.signer`.

Hand-written: no library offers hash-chained, signed JSON lines that `sha256sum` and `openssl` can check.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from kms.signer import default_hash

GENESIS = "0" * 64
_HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}


class SealError(Exception):
    """A key cannot seal (its type has no signature scheme here)."""


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The one byte form of a line: what is written, hashed and signed."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signer_for(key: Any) -> tuple[str, Callable[[bytes], bytes]]:
    """(algorithm name, sign function) for a key opened through kms/, with the hash kms chooses for it."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "Ed25519", key.sign
    if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) and (h := default_hash(key)) is not None:
        name = h.name.upper().replace("-", "")
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return f"ECDSA-{name}", lambda data: key.sign(data, ec.ECDSA(h))
        return f"RSA-PKCS1v15-{name}", lambda data: key.sign(data, padding.PKCS1v15(), h)
    raise SealError(f"cannot seal with a key of type {type(key).__name__}")


def signature_problem(public_key: Any, algorithm: str, signature: bytes, data: bytes) -> str | None:
    """None if `signature` verifies, else why not. The key's type decides; `algorithm` only picks the hash."""
    family, _, hash_name = algorithm.rpartition("-")
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey) and algorithm == "Ed25519":
            public_key.verify(signature, data)
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and family == "ECDSA" and hash_name in _HASHES:
            public_key.verify(signature, data, ec.ECDSA(_HASHES[hash_name]()))
        elif isinstance(public_key, rsa.RSAPublicKey) and family == "RSA-PKCS1v15" and hash_name in _HASHES:
            public_key.verify(signature, data, padding.PKCS1v15(), _HASHES[hash_name]())
        else:
            return f"algorithm {algorithm!r} does not fit a key of type {type(public_key).__name__}"
    except InvalidSignature:
        return "the signature does not verify"
    return None


def b64_signature(value: object) -> bytes | None:
    """The signature bytes of a line's base64 field, or None when it is missing or not base64."""
    try:
        return base64.b64decode(value if isinstance(value, str) and value else "-", validate=True)
    except binascii.Error:
        return None


@dataclass
class Chain:
    """The writer's end of one chain: numbers and links each new line."""

    seq: int = 0
    head: str = GENESIS  # SHA-256 of the last line written

    def link(self, entry: Mapping[str, Any]) -> dict[str, Any]:
        """`entry` as the chain's next line (not yet counted: call `advance` once it is written)."""
        return {**entry, "seq": self.seq + 1, "prev": self.head}

    def advance(self, line: Mapping[str, Any], data: bytes) -> None:
        self.seq, self.head = int(line["seq"]), sha256_hex(data)


@dataclass
class LinkCheck:
    """The reader's end of one chain: checks each line's `seq` and `prev` against the line before it."""

    seq: int = 0
    head: str = GENESIS
    last_line: int = 0  # the file line number of the chain's previous line (0: none yet)

    def check(self, number: int, raw: bytes, obj: Mapping[str, Any]) -> list[str]:
        """Problems of line `number` (raw bytes `raw`, parsed `obj`) as the chain's next line; then advance."""
        problems = []
        if obj.get("prev") != self.head:
            before = "the start of the chain" if not self.last_line else f"line {self.last_line}"
            problems.append(f"line {number}: its prev does not match the SHA-256 of {before} "
                            "(a line was changed, removed or moved)")
        seq = obj.get("seq")
        if seq != self.seq + 1:
            problems.append(f"line {number}: seq is {seq}, expected {self.seq + 1} "
                            "(a line was removed, added or moved)")
        if canonical(obj) != raw:
            problems.append(f"line {number} is not in the canonical form the writer uses (it was edited)")
        self.seq = seq if isinstance(seq, int) else self.seq + 1
        self.head, self.last_line = sha256_hex(raw), number
        return problems


def split_lines(data: bytes) -> tuple[list[bytes], str | None]:
    """The complete lines of a file, and a problem when its last line has no newline (a cut or torn write)."""
    raws = data.split(b"\n")
    tail = raws.pop()
    if tail:
        return raws, (f"line {len(raws) + 1} is incomplete (no newline at its end): the file was truncated "
                      "or a write was interrupted")
    return raws, None


def parse_lines(raws: list[bytes]) -> Iterator[tuple[int, bytes, Any, str | None]]:
    """(line number, raw, parsed value or None, problem or None) for each line (the caller checks its shape)."""
    for number, raw in enumerate(raws, start=1):
        try:
            yield number, raw, json.loads(raw.decode("utf-8")), None
        except (UnicodeDecodeError, ValueError) as exc:
            yield number, raw, None, f"line {number} is not valid JSON: {exc}"
