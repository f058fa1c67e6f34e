"""Errors that cross layers: each carries the HTTP status that fits and a stable type.

The authority raises these; the web layer renders them in step-ca's error shape
(`{"status": …, "message": …}` plus `type`, `detail`, `requestId`). A message is written for the
person who made the request, so it says what was wrong and never contains a secret.
"""

from __future__ import annotations


class CAError(Exception):
    """A request the CA refuses or cannot serve, with the status a client should see."""

    status: int = 500
    type: str = "internal"

    def __init__(self, message: str, *, reasons: tuple[str, ...] = (), type: str | None = None):
        super().__init__(message)
        self.message = message
        self.reasons = reasons or (message,)
        if type is not None:
            self.type = type


class BadRequest(CAError):
    status = 400
    type = "badRequest"


class Unauthorized(CAError):
    status = 401
    type = "unauthorized"


class Forbidden(CAError):
    status = 403
    type = "forbidden"


class PolicyDenied(Forbidden):
    type = "policyDenied"


class NotFound(CAError):
    status = 404
    type = "notFound"


class Conflict(CAError):
    status = 409
    type = "conflict"


class PayloadTooLarge(CAError):
    status = 413
    type = "payloadTooLarge"


class ServiceUnavailable(CAError):
    status = 503
    type = "serviceUnavailable"


class LintRefused(Forbidden):
    """The certificate about to be signed would not validate (lint before sign); `rule` names what it breaks."""

    type = "lintFailed"

    def __init__(self, rule: str, message: str, *, reasons: tuple[str, ...] = ()):
        super().__init__(f"the certificate would not validate ({rule}): {message}", reasons=reasons)
        self.rule = rule
