"""Render every failure in step-ca's error shape, with a stable type and never a traceback."""

from __future__ import annotations

import logging
from typing import Any

import falcon

from appliance.audit import scrub
from appliance.errors import CAError

log = logging.getLogger("hsmca.api")


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


def handle_unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    rid = getattr(req.context, "request_id", "-")
    log.exception("unexpected error in request %s", rid)
    _render(resp, 500, error_body(500, f"internal error; the server log has the details "
                                       f"(request id {rid})", req, "internal"))


def install(app: falcon.App) -> None:
    # Falcon picks the most specific registered handler, whatever the order.
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(falcon.HTTPError, handle_http_error)
    app.add_error_handler(CAError, handle_ca_error)
