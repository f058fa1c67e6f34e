"""Render every failure in step-ca's error shape, with a stable type and never a traceback.

Store errors are mapped once (`appliance.store.as_ca_error`: unavailable → 503, invalid transition → 409,
the rest → 500 with the cause logged). A request that ends in an unexpected error still leaves an audit
record with its request id, unless the layer that failed wrote one already.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import falcon

from appliance.audit import AuditEvent, scrub
from appliance.errors import CAError
from appliance.store import StoreError, as_ca_error

log = logging.getLogger("hsmca.api")


class Recorder(Protocol):
    def record(self, event: AuditEvent) -> None: ...


def error_body(status: int, message: str, req: falcon.Request, type_: str,
               reasons: tuple[str, ...] = ()) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "message": scrub(message), "type": type_}
    if len(reasons) > 1:
        body["detail"] = [scrub(r) for r in reasons]
    rid = getattr(req.context, "request_id", None)
    if rid:
        body["requestId"] = rid
    return body


def _render(resp: falcon.Response, status: int, body: dict[str, Any]) -> None:
    resp.status = status
    resp.content_type = falcon.MEDIA_JSON
    resp.media = body


def handle_ca_error(req: falcon.Request, resp: falcon.Response, ex: CAError, params: Any) -> None:
    if ex.status >= 500:
        log.warning("request %s failed: %s", getattr(req.context, "request_id", "-"), ex.message)
    _render(resp, ex.status, error_body(ex.status, ex.message, req, ex.type, ex.reasons))


def handle_http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError,
                      params: Any) -> None:
    message = ex.description or ex.title or "error"
    if ex.status_code == 404 and not ex.description:
        message = f"{req.path} was not found"
    elif ex.status_code == 405:
        message = f"method {req.method} is not allowed on {req.path}"
    _render(resp, ex.status_code, error_body(ex.status_code, message, req, "http"))
    headers = ex.headers or {}
    pairs = list(headers.items()) if isinstance(headers, dict) else list(headers)
    for name, value in pairs:
        resp.set_header(name, value)


def audit_unexpected(recorder: Recorder | None, req: falcon.Request, exc: Exception, status: int = 500) -> None:
    """One audit record for a request that failed where nothing audited it (no secret: the type only)."""
    if recorder is None or getattr(exc, "audited", False):
        return
    try:
        recorder.record(AuditEvent(
            action=f"http.{req.method} {req.path[:200]}", decision="error",
            request_id=getattr(req.context, "request_id", None), remote_addr=req.remote_addr or None,
            reasons=(f"internal error ({type(exc).__name__})",), status=status))
    except Exception:  # noqa: BLE001 - the trail's own failure must not hide the request's
        log.exception("cannot audit the failed request %s", getattr(req.context, "request_id", "-"))


def install(app: falcon.App, recorder: Recorder | None = None) -> None:
    """Falcon picks the most specific registered handler, whatever the order."""

    def handle_store_error(req: falcon.Request, resp: falcon.Response, ex: StoreError, params: Any) -> None:
        error = as_ca_error(ex)
        if error.status >= 500:
            audit_unexpected(recorder, req, ex, error.status)
        handle_ca_error(req, resp, error, params)

    def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
        rid = getattr(req.context, "request_id", "-")
        log.exception("unexpected error in request %s", rid)
        audit_unexpected(recorder, req, ex)
        _render(resp, 500, error_body(500, f"internal error; the server log has the details "
                                           f"(request id {rid})", req, "internal"))

    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(CAError, handle_ca_error)
    app.add_error_handler(StoreError, handle_store_error)
