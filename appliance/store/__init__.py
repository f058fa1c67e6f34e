"""The storage authority (SA): certificates recorded before signing, single-use tokens, intermediates.

`Store` opens the database; each aggregate is a repository on it: `store.certificates`, `store.tokens`,
`store.intermediates`, `store.revocations`, `store.leases`, `store.crls`, `store.ocsp`, `store.acme`,
`store.audit_checkpoints`.
"""

from .acme import ACMEStore
from .audit_checkpoints import AuditCheckpointStore, CheckpointConflict, StoredCheckpoint
from .certificates import STALE_REASON, CertificateStore
from .crls import CRLInfo, CRLNumberTaken, CRLRecord, CRLStore
from .errors import (
    CertificateNotFound,
    IntermediateExists,
    IntermediateNotFound,
    InvalidTransition,
    SerialCollision,
    StoreError,
    StoreUnavailable,
    TokenReplayed,
    as_ca_error,
)
from .intermediates import IntermediateStore
from .leases import LeaseStore
from .ocsp import OCSPStore
from .records import (
    CertificateRecord,
    CertificateStatus,
    IntermediateRecord,
    IntermediateState,
    OneTimeToken,
    Reservation,
    intermediate_state,
)
from .revocations import RevocationReason, RevocationRecord, RevocationStore, Revoked
from .store import Store
from .tokens import TokenStore

__all__ = [
    "STALE_REASON",
    "ACMEStore",
    "AuditCheckpointStore",
    "CertificateNotFound",
    "CertificateRecord",
    "CertificateStore",
    "CRLInfo",
    "CRLNumberTaken",
    "CRLRecord",
    "CRLStore",
    "CertificateStatus",
    "CheckpointConflict",
    "IntermediateExists",
    "IntermediateNotFound",
    "IntermediateRecord",
    "IntermediateState",
    "IntermediateStore",
    "InvalidTransition",
    "LeaseStore",
    "OCSPStore",
    "OneTimeToken",
    "Reservation",
    "RevocationReason",
    "RevocationRecord",
    "RevocationStore",
    "Revoked",
    "SerialCollision",
    "Store",
    "StoredCheckpoint",
    "StoreError",
    "StoreUnavailable",
    "TokenReplayed",
    "TokenStore",
    "as_ca_error",
    "intermediate_state",
]
