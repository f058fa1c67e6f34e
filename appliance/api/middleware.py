"""Cross-cutting request handling: a request id on everything, and bounded bodies."""

from __future__ import annotations

import re
import uuid
from typing import Any

import falcon

from appliance.errors import PayloadTooLarge

_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContext:
    """Accept a sane client `X-Request-Id` (for tracing through proxies), else make one."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        given = req.get_header("X-Request-Id")
        req.context.request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        resp.set_header("X-Request-Id", req.context.request_id)


class BodyLimit:
    """Refuse a declared oversize body before reading a byte of it."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.max_body = self.max_bytes
        length = req.content_length
        if length is not None and length > self.max_bytes:
            resp.set_header("Connection", "close")
            raise PayloadTooLarge(f"request body of {length} bytes exceeds the limit of "
                                  f"{self.max_bytes} bytes")


def read_body(req: falcon.Request) -> bytes:
    """Read at most the limit (+1 to detect more), also when the body is chunked."""
    limit: int = req.context.max_body
    data = req.bounded_stream.read(limit + 1)
    if len(data) > limit:
        raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
    return data


def remote_addr(req: falcon.Request) -> str | None:
    value: Any = req.remote_addr
    return str(value) if value else None
