"""OpenSSH Key Revocation Lists (KRLs): the binary file sshd's `RevokedKeys` and `ssh-keygen -Q` read.

Hand-written from OpenSSH's PROTOCOL.krl because no Python library writes KRLs: `cryptography` makes SSH keys
and certificates but not their revocation list, and shelling out to `ssh-keygen -k` would need every CA public
key and a spec file on disk. The format is small: a header, then one KRL_SECTION_CERTIFICATES section per CA
naming the CA's public key and holding subsections of revoked serials. Only what a CA needs is written:
revocation by (CA, serial); never by key ID, explicit key or fingerprint, no bitmaps, no extensions.

No KRL_SECTION_SIGNATURE either: sshd loads `RevokedKeys` without any trusted signing key, so a signature
would prove nothing to it, and OpenSSH >= 9.4 refuses to load a KRL that carries one. The file's integrity
comes from how it is distributed.

Inputs are checked strictly because sshd fails closed: a KRL it cannot parse (a garbled CA key, a serial
of 0, a NUL in the comment) makes it refuse every public key and certificate, not just the revoked ones.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta, timezone

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_key

__all__ = ["build_krl", "ssh_key_blob"]

KRL_MAGIC = b"SSHKRL\n\x00"
KRL_FORMAT_VERSION = 1
KRL_SECTION_CERTIFICATES = 1
KRL_SECTION_CERT_SERIAL_LIST = 0x20
KRL_SECTION_CERT_SERIAL_RANGE = 0x21

_U64_LIMIT = 1 << 64
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# A run of consecutive serials this long or longer is cheaper as a range subsection (1 type byte, a 4-byte
# length, two uint64s: 21 bytes) than as 8 bytes per serial inside the serial-list subsection.
_MIN_RANGE_RUN = 3
# The key types hsmca's CAs sign with, as named inside their wire blobs.
_CA_KEY_TYPES = frozenset(
    {b"ssh-ed25519", b"ssh-rsa", b"ecdsa-sha2-nistp256", b"ecdsa-sha2-nistp384", b"ecdsa-sha2-nistp521"})

SSHCAPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


def ssh_key_blob(public_key: SSHCAPublicKey) -> bytes:
    """The SSH wire-format blob of a public key: what a KRL names a CA by, and what a certificate embeds.

    It is the base64 part of the key's `ssh-... AAAA...` line. EC keys must be on P-256, P-384 or P-521
    (cryptography raises ValueError for other curves); DSA is refused, as OpenSSH has dropped it.
    """
    if not isinstance(public_key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, ed25519.Ed25519PublicKey)):
        raise TypeError(f"not an SSH CA public key (EC, RSA or Ed25519): {type(public_key).__name__}")
    line = public_key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    return base64.b64decode(line.split(b" ")[1], validate=True)


def build_krl(revoked: Mapping[bytes, Iterable[int]], *, version: int, generated_at: datetime,
              comment: str = "") -> bytes:
    """A KRL revoking, for each CA public key blob in `revoked`, the certificates it signed with those serials.

    `version` is the KRL's krl_version (raise it with every new KRL), `generated_at` an aware datetime
    (whole seconds are kept). Output depends only on the arguments: CAs are sorted by blob, serials
    deduplicated and sorted. An empty mapping, or CAs with no serials, give a valid KRL revoking nothing.
    Bad values raise ValueError, wrong types TypeError (see the module docstring for why this is strict).
    """
    header = (KRL_MAGIC + struct.pack(">I", KRL_FORMAT_VERSION)
              + struct.pack(">QQQ", _check_u64(version, "KRL version"), _seconds(generated_at), 0)
              + _string(b"") + _string(_comment_bytes(comment)))
    sections: list[tuple[bytes, bytes]] = []
    for ca_blob, serials in revoked.items():
        _check_ca_blob(ca_blob)
        body = _serial_subsections(_checked_serials(serials))
        if body:  # a CA without serials gets no section: PROTOCOL.krl wants one or more subsections
            sections.append((ca_blob, body))
    sections.sort()
    parts = [header]
    for ca_blob, body in sections:
        parts.append(bytes((KRL_SECTION_CERTIFICATES,)) + _string(_string(ca_blob) + _string(b"") + body))
    return b"".join(parts)


def _string(data: bytes) -> bytes:
    """An SSH `string`: uint32 length, then the bytes."""
    if len(data) >= 1 << 32:
        raise ValueError("a KRL field cannot exceed 4 GiB")
    return struct.pack(">I", len(data)) + data


def _check_u64(value: int, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not {type(value).__name__}")
    if not 0 <= value < _U64_LIMIT:
        raise ValueError(f"{what} {value} does not fit a uint64")
    return value


def _seconds(generated_at: datetime) -> int:
    """Seconds since the epoch; a naive datetime is refused rather than guessed to be UTC or local time."""
    if not isinstance(generated_at, datetime):
        raise TypeError(f"generated_at must be a datetime, not {type(generated_at).__name__}")
    if generated_at.utcoffset() is None:
        raise ValueError("generated_at must be timezone-aware")
    seconds = (generated_at - _EPOCH) // timedelta(seconds=1)
    if seconds < 0:
        raise ValueError(f"generated_at {generated_at.isoformat()} is before 1970 and cannot be a KRL date")
    return seconds


def _comment_bytes(comment: str) -> bytes:
    """UTF-8; OpenSSH reads the comment as a C string, so a NUL in it would make the whole KRL unreadable."""
    if not isinstance(comment, str):
        raise TypeError(f"comment must be a str, not {type(comment).__name__}")
    if "\x00" in comment:
        raise ValueError("the KRL comment cannot contain a NUL character (OpenSSH would reject the KRL)")
    return comment.encode("utf-8")


def _check_ca_blob(blob: bytes) -> None:
    """Refuse anything OpenSSH would fail to parse or never match, since either breaks or voids the KRL.

    An empty blob means "any CA" in a KRL, which would revoke these serials for every CA's certificates;
    a certificate blob parses but is never the signer of a certificate; a truncated or non-canonical blob
    makes sshd reject the whole file. The blob must be exactly what `ssh_key_blob` gives for the key.
    """
    if not isinstance(blob, bytes):
        raise TypeError(f"a CA key blob must be bytes, not {type(blob).__name__}")
    if not blob:
        raise ValueError("a CA key blob must not be empty (in a KRL that would mean every CA)")
    name_length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    name = blob[4:4 + name_length]
    if name_length < 0 or len(name) != name_length:
        raise ValueError("the CA key blob is not an SSH public key blob (no key type name)")
    if name not in _CA_KEY_TYPES:
        raise ValueError(f"the CA key blob's type {name!r} is not a CA key type (Ed25519, RSA or ECDSA P-256/384/521)")
    try:
        key = load_ssh_public_key(name + b" " + base64.b64encode(blob))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"the CA key blob ({name.decode()}) does not parse: {exc}") from exc
    if not isinstance(key, SSHCAPublicKey) or ssh_key_blob(key) != blob:
        raise ValueError(f"the CA key blob ({name.decode()}) is not in canonical SSH wire form")


def _checked_serials(serials: Iterable[int]) -> list[int]:
    """Sorted, deduplicated serials, each 0 < s < 2**64."""
    unique: set[int] = set()
    for serial in serials:
        if not isinstance(serial, int) or isinstance(serial, bool):
            raise TypeError(f"a certificate serial must be an int, not {type(serial).__name__}")
        if serial == 0:
            raise ValueError("serial 0 cannot be revoked by serial: OpenSSH ignores serial 0 (the default when a CA "
                             "sets none) and refuses to load a KRL listing it; revoke such certificates by key ID")
        if not 0 < serial < _U64_LIMIT:
            raise ValueError(f"certificate serial {serial} is outside 1..2**64-1")
        unique.add(serial)
    return sorted(unique)


def _serial_subsections(serials: list[int]) -> bytes:
    """One serial-list subsection for lone serials, then one range subsection per run of consecutive ones."""
    singles: list[int] = []
    ranges: list[tuple[int, int]] = []
    start = 0
    for i in range(1, len(serials) + 1):
        if i < len(serials) and serials[i] == serials[i - 1] + 1:
            continue
        if i - start >= _MIN_RANGE_RUN:
            ranges.append((serials[start], serials[i - 1]))
        else:
            singles.extend(serials[start:i])
        start = i
    parts: list[bytes] = []
    if singles:
        parts.append(bytes((KRL_SECTION_CERT_SERIAL_LIST,)) + _string(struct.pack(f">{len(singles)}Q", *singles)))
    for low, high in ranges:
        parts.append(bytes((KRL_SECTION_CERT_SERIAL_RANGE,)) + _string(struct.pack(">QQ", low, high)))
    return b"".join(parts)
