"""Cross-cutting request handling: a request id on everything, and bounded bodies."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import falcon

from appliance.errors import BadRequest, PayloadTooLarge

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContext:
    """Accept a sane client `X-Request-Id` (for tracing through proxies), else make one."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        resp.set_header("X-Request-Id", req.context.request_id)


class BodyLimit:
    """Refuse a declared oversize body before reading a byte of it.

    Checked once the route is known, so that a resource that audits its refusals (it has a
    `reject(req, error)` method) records this one too.
    """

    # Up to this much of an oversize body is read and discarded before answering: a server that
    # answers and closes while the client is still sending makes the client see a reset, not
    # the 413. Beyond it the connection is simply closed.
    DRAIN_LIMIT = 32 * 1024 * 1024

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def process_resource(self, req: falcon.Request, resp: falcon.Response, resource: Any,
                         params: dict[str, Any]) -> None:
        req.context.max_body = self.max_bytes
        length = req.content_length
        if length is not None and length > self.max_bytes:
            if length <= self.DRAIN_LIMIT:
                while req.bounded_stream.read(64 * 1024):
                    pass
            else:
                resp.set_header("Connection", "close")
            error = PayloadTooLarge(f"request body of {length} bytes exceeds the limit of "
                                    f"{self.max_bytes} bytes")
            reject = getattr(resource, "reject", None)
            if reject is not None:
                reject(req, error)
            raise error


def read_body(req: falcon.Request) -> bytes:
    """Read at most the limit (+1 to detect more), also when the body is chunked."""
    limit: int = getattr(req.context, "max_body", 64 * 1024)
    data = req.bounded_stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return data


def read_json_object(req: falcon.Request) -> dict[str, Any]:
    """The bounded body as a JSON object; anything else is a 400 that says what was wrong."""
    raw = read_body(req)
    try:
        body = json.loads(raw)
    except RecursionError:  # json.loads recurses once per level of nesting
        raise BadRequest("error reading request body: malformed JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"error reading request body: malformed JSON ({exc})") from None
    if not isinstance(body, dict):
        raise BadRequest("error reading request body: expected a JSON object")
    return body


def remote_addr(req: falcon.Request) -> str | None:
    value: Any = req.remote_addr
    return str(value) if value else None
