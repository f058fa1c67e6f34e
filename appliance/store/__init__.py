"""The storage authority (SA): certificates recorded before signing, and single-use tokens."""

from .errors import (
    CertificateNotFound,
    InvalidTransition,
    SerialCollision,
    StoreError,
    StoreUnavailable,
)
from .records import CertificateRecord, CertificateStatus, Reservation
from .store import STALE_REASON, Store

__all__ = [
    "STALE_REASON",
    "CertificateNotFound",
    "CertificateRecord",
    "CertificateStatus",
    "InvalidTransition",
    "Reservation",
    "SerialCollision",
    "Store",
    "StoreError",
    "StoreUnavailable",
]
