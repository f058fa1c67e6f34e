"""Errors of the storage authority, shaped for the web layer's status mapping."""

from __future__ import annotations

import logging

from appliance.errors import CAError, Conflict, ServiceUnavailable

log = logging.getLogger(__name__)


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


def as_ca_error(exc: StoreError) -> CAError:
    """StoreUnavailable → ServiceUnavailable (503) naming the reason; InvalidTransition → Conflict (409);
    anything else → CAError (500) with a generic message (log the cause with logging at ERROR, without parameters)."""
    if isinstance(exc, StoreUnavailable):
        return ServiceUnavailable(exc.reason)  # the reason is safe to show (see StoreUnavailable)
    if isinstance(exc, InvalidTransition):
        return Conflict(str(exc))
    # The client learns nothing of the cause; the log gets the store's own message, which never carries a
    # statement's parameters, and the type of any underlying error (no traceback: it would print the SQL).
    cause = f"{type(exc).__name__}: {exc}"
    if exc.__cause__ is not None:
        cause += f" (from {type(exc.__cause__).__name__})"
    log.error("storage error answered with a 500: %s", cause)
    return CAError("internal error in the certificate database; the server log has the details")
