"""Every private-key operation of hsmca: one signer interface over HSMs and cloud KMSs.

A CA key is named by a URI and opened through the registry; what comes back is a cryptography
private key (`CAKey`) whose signatures are made inside the backend, so cryptography's certificate,
CSR, CRL and OCSP builders sign through it unchanged. Nothing here can export a private key.
"""

from kms.cacerts import CAProfile, intermediate_certificate, new_serial, root_certificate
from kms.errors import (
    BackendUnavailable,
    InvalidKeyURI,
    KeyExists,
    KeyNotFound,
    KMSError,
    PermissionDenied,
    SigningFailed,
    UnsupportedAlgorithm,
)
from kms.keyspec import KeySpec, default_hash_for, key_spec_for
from kms.registry import (
    Backend,
    BackendFactory,
    backends_health,
    close_all,
    create_key,
    open_key,
    register_backend,
    registered_schemes,
)
from kms.signer import CAKey, KMSKey, default_hash, spec_of
from kms.uri import KeyURI, parse_key_uri

__all__ = [
    "Backend", "BackendFactory", "BackendUnavailable", "CAKey", "CAProfile", "InvalidKeyURI", "KMSError", "KMSKey",
    "KeyExists",
    "KeyNotFound", "KeySpec", "KeyURI", "PermissionDenied", "SigningFailed", "UnsupportedAlgorithm",
    "backends_health", "close_all", "create_key", "default_hash", "default_hash_for",
    "intermediate_certificate", "key_spec_for", "new_serial", "open_key", "parse_key_uri",
    "register_backend", "registered_schemes", "root_certificate", "spec_of",
]
