"""The storage authority (SA): certificates recorded before signing, single-use tokens, intermediates."""

from .crls import CRLInfo, CRLNumberTaken, CRLRecord
from .errors import (
    CertificateNotFound,
    IntermediateExists,
    IntermediateNotFound,
    InvalidTransition,
    SerialCollision,
    StoreError,
    StoreUnavailable,
    TokenReplayed,
)
from .records import (
    CertificateRecord,
    CertificateStatus,
    IntermediateRecord,
    IntermediateState,
    OneTimeToken,
    Reservation,
    intermediate_state,
)
from .revocations import RevocationReason, RevocationRecord, Revoked
from .store import STALE_REASON, Store

__all__ = [
    "STALE_REASON",
    "CertificateNotFound",
    "CertificateRecord",
    "CRLInfo",
    "CRLNumberTaken",
    "CRLRecord",
    "CertificateStatus",
    "IntermediateExists",
    "IntermediateNotFound",
    "IntermediateRecord",
    "IntermediateState",
    "InvalidTransition",
    "OneTimeToken",
    "Reservation",
    "RevocationReason",
    "RevocationRecord",
    "Revoked",
    "SerialCollision",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "TokenReplayed",
    "intermediate_state",
]
