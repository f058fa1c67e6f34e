"""The storage authority (SA): certificates recorded before signing, and single-use tokens."""

from .errors import (
    CertificateNotFound,
    InvalidTransition,
    SerialCollision,
    StoreError,
    StoreUnavailable,
    TokenReplayed,
)
from .records import CertificateRecord, CertificateStatus, OneTimeToken, Reservation
from .store import STALE_REASON, Store

__all__ = [
    "STALE_REASON",
    "CertificateNotFound",
    "CertificateRecord",
    "CertificateStatus",
    "InvalidTransition",
    "OneTimeToken",
    "Reservation",
    "SerialCollision",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenReplayed",
]
