"""Errors of the key layer, one class per thing a caller can do something about.

The online service maps them to HTTP (BackendUnavailable → 503, the rest → a refusal), the
ceremony prints them; so each carries a human `reason`. Reasons never contain a PIN: key URIs
are shown redacted and PKCS#11 failures by their return-code name only.
"""

from __future__ import annotations


class KMSError(Exception):
    """A key operation failed; `reason` says why in words an operator can act on."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidKeyURI(KMSError):
    """The key URI is malformed, names an unknown scheme, or lacks what the operation needs."""


class KeyNotFound(KMSError):
    """No key (or no token) matches the URI."""


class KeyExists(KMSError):
    """Refusing to create a key: an object with that label or id is already on the token."""


class PermissionDenied(KMSError):
    """The backend refused our credentials (wrong or locked PIN, unreadable PIN source)."""


class BackendUnavailable(KMSError):
    """Transient: device error, session lost even after one retry, module missing. Retry later."""


class UnsupportedAlgorithm(KMSError):
    """The key type, hash, padding or salt length is not one hsmca signs with."""


class SigningFailed(KMSError):
    """The backend refused or botched this signature; retrying the same request will not help."""
