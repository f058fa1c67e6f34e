"""Plain, immutable records that cross the storage boundary (no ORM objects leak out)."""

from __future__ import annotations

import base64
import enum
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

# RFC 5280 caps serials at 20 octets, so a positive DER INTEGER is below 2**159; hsmca makes
# 128-bit ones, but certificates recorded by other tooling may use the whole range.
MAX_SERIAL = 2**159 - 1
MAX_JTI_LENGTH = 256
MAX_NAME_LENGTH = 255  # provisioner names
MAX_ISSUER_LENGTH = 128  # an intermediate's identifier, e.g. a hex SKI
MAX_REQUEST_ID_LENGTH = 128
MAX_SUBJECT_LENGTH = 4096  # stored as TEXT: 4096 utf8mb4 characters fit MySQL's 64 KiB
MAX_REASON_LENGTH = 1024
MAX_BLOB_LENGTH = 2**24 - 1  # MEDIUMBLOB on MySQL
MAX_KEY_URI_LENGTH = 4096  # stored as TEXT, like subjects


class CertificateStatus(enum.StrEnum):
    """Life of a serial: recorded before signing, then either issued or abandoned (never reused)."""

    RESERVED = "reserved"
    ISSUED = "issued"
    ABANDONED = "abandoned"


@dataclass(frozen=True, slots=True)
class Reservation:
    """What the CA records before it asks the HSM for a signature."""

    serial: int
    issuer: str
    subject: str
    sans: Sequence[str]
    not_before: datetime
    not_after: datetime
    provisioner: str
    tbs: bytes
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class OneTimeToken:
    """A token id to burn in the same transaction as a reservation (used iff reserved)."""

    jti: str
    provisioner: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class CertificateRecord:
    """A recorded serial with everything known about it; datetimes are aware UTC."""

    serial: int
    issuer: str
    subject: str
    sans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    provisioner: str
    tbs: bytes
    der: bytes | None
    status: CertificateStatus
    reserved_at: datetime
    issued_at: datetime | None
    status_reason: str | None
    request_id: str | None

    @property
    def pem(self) -> str | None:
        """PEM is derived on demand so the certificate is stored once, as DER."""
        if self.der is None:
            return None
        body = "\n".join(textwrap.wrap(base64.b64encode(self.der).decode("ascii"), 64))
        return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


class IntermediateState(enum.StrEnum):
    """Where an intermediate stands; derived from its times, never stored (see intermediate_state)."""

    AWAITING_CERTIFICATE = "awaiting-certificate"
    PENDING = "pending"
    ACTIVE = "active"
    RETIRED = "retired"


@dataclass(frozen=True, slots=True)
class IntermediateRecord:
    """An intermediate CA: its KMS key, its CSR and, once installed, its certificate.

    `id` is the lowercase hex SubjectKeyIdentifier digest, the value certificates.issuer holds.
    Datetimes are aware UTC; `activate_at` None means not scheduled.
    """

    id: str
    name: str
    key_uri: str
    public_key: bytes  # SubjectPublicKeyInfo DER
    csr: bytes | None
    certificate: bytes | None
    subject: str  # RFC 4514
    not_before: datetime | None
    not_after: datetime | None
    activate_at: datetime | None
    retired_at: datetime | None
    created_at: datetime
    installed_at: datetime | None
    chain: bytes | None = None  # PEM served after the certificate (a cross-certificate in a root rollover)


def intermediate_state(rec: IntermediateRecord, active_id: str | None, now: datetime) -> IntermediateState:
    """The state of `rec` at `now`, given the id the active query returned for that moment.

    Derived rather than stored so that a scheduled activation takes effect at its time with no
    writer, and a superseded intermediate reads as retired without anyone marking it.
    """
    moment = utc(now, "now")
    if rec.certificate is None:
        return IntermediateState.AWAITING_CERTIFICATE
    if rec.retired_at is not None and rec.retired_at <= moment:
        return IntermediateState.RETIRED
    if rec.id == active_id:
        return IntermediateState.ACTIVE
    if rec.activate_at is None or rec.activate_at > moment:
        return IntermediateState.PENDING
    return IntermediateState.RETIRED  # it was active until a later activation superseded it


def check_serial(serial: int) -> int:
    """Refuse serials that no RFC 5280 certificate can carry before they reach SQL."""
    if isinstance(serial, bool) or not isinstance(serial, int):
        raise TypeError(f"serial must be an int, not {type(serial).__name__}")
    if not 0 < serial <= MAX_SERIAL:
        raise ValueError("serial must be a positive integer of at most 20 octets")
    return serial


def check_text(value: object, field: str, max_length: int, *, empty_ok: bool = False) -> str:
    """Length limits are checked here so an oversized value is a caller error, not a 503."""
    if not isinstance(value, str):
        raise TypeError(f"{field} must be a str, not {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{field} cannot be empty")
    if len(value) > max_length:
        raise ValueError(f"{field} is longer than {max_length} characters")
    return value


def utc(value: object, field: str) -> datetime:
    """Naive datetimes are ambiguous about their zone, so they are refused rather than guessed."""
    if not isinstance(value, datetime):
        raise TypeError(f"{field} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{field} must be timezone-aware")
    return value.astimezone(UTC)


def now_utc() -> datetime:
    """The current time as aware UTC: what every `now=None` of the store means."""
    return datetime.now(UTC)


def check_reservation(rec: Reservation) -> None:
    """Validate a reservation completely before the insert, so bad input never looks like an outage."""
    check_serial(rec.serial)
    check_text(rec.issuer, "issuer", MAX_ISSUER_LENGTH)
    check_text(rec.subject, "subject", MAX_SUBJECT_LENGTH, empty_ok=True)
    check_text(rec.provisioner, "provisioner", MAX_NAME_LENGTH)
    if isinstance(rec.sans, str) or not all(isinstance(s, str) and s for s in rec.sans):
        raise TypeError("sans must be a sequence of non-empty strings such as 'dns:a.example'")
    if utc(rec.not_after, "not_after") < utc(rec.not_before, "not_before"):
        raise ValueError("not_after is before not_before")
    if not isinstance(rec.tbs, bytes) or not rec.tbs or len(rec.tbs) > MAX_BLOB_LENGTH:
        raise ValueError("tbs must be non-empty DER bytes")
    if rec.request_id is not None:
        check_text(rec.request_id, "request_id", MAX_REQUEST_ID_LENGTH)
