"""Errors of the storage authority, shaped for the web layer's status mapping."""

from __future__ import annotations


class StoreError(Exception):
    """A storage request that cannot be honoured as asked (bad config, bad state, bad input)."""


class StoreUnavailable(StoreError):
    """The database could not answer; the web layer turns this into 503 with `reason`.

    The reason names the driver's complaint but never the statement's parameters or credentials,
    so it is safe to show to a client and to write to a log.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class SerialCollision(StoreError):
    """A serial was already recorded; serials are never overwritten nor reused."""


class CertificateNotFound(StoreError):
    """No certificate (or reservation) is recorded under that serial."""


class InvalidTransition(StoreError):
    """The certificate or intermediate is not in the state the requested change starts from."""


class TokenReplayed(StoreError):
    """The one-time token offered with a reservation was already used; nothing was recorded."""


class IntermediateExists(StoreError):
    """An intermediate with that id (key) or name is already recorded; records are not overwritten."""


class IntermediateNotFound(StoreError):
    """No intermediate is recorded under that id or name."""
