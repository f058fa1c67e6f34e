"""`POST /ocsp` and `GET /ocsp/{base64 request}` (RFC 6960 appendix A, RFC 5019 §5): transport only.

GET: the request is base64 in the path, url-encoded or not, so it may hold `/`, `+` and `=`. The WSGI
server has already percent-decoded PATH_INFO (`%2F` is `/` there), so the route takes the rest of the path
with a `path` converter and the resource reads it from PATH_INFO itself (Falcon strips a trailing slash,
which can be the last base64 character).
"""

from __future__ import annotations

import base64
import binascii
from datetime import UTC, datetime
from email.utils import format_datetime

import falcon

from appliance.authority import Authority
from appliance.errors import PayloadTooLarge
from appliance.ocsp import MALFORMED, MAX_REQUEST_BYTES, UNKNOWN_MEMO_SECONDS, Answer, sha1

OCSP_RESPONSE = "application/ocsp-response"
MAX_GET_CHARS = (MAX_REQUEST_BYTES * 4) // 3 + 4


class OCSP:
    """One resource for both methods; `marker` is the path up to the encoded request (`/ocsp/`, `/1.0/ocsp/`)."""

    def __init__(self, authority: Authority, marker: str = "/ocsp/"):
        self.authority, self.marker = authority, marker

    def on_post(self, req: falcon.Request, resp: falcon.Response, encoded: str = "") -> None:
        data = req.bounded_stream.read(MAX_REQUEST_BYTES + 1)
        if len(data) > MAX_REQUEST_BYTES:
            raise PayloadTooLarge(f"an OCSP request is at most {MAX_REQUEST_BYTES} bytes")
        _send(resp, self.authority.ocsp.respond(data), cacheable=False)

    def on_get(self, req: falcon.Request, resp: falcon.Response, encoded: str = "") -> None:
        path = str(req.env.get("PATH_INFO") or req.path)
        at = path.find(self.marker)
        text = path[at + len(self.marker):] if at >= 0 else encoded
        if len(text) > MAX_GET_CHARS:
            raise PayloadTooLarge(f"an OCSP request is at most {MAX_REQUEST_BYTES} bytes")
        der = _decode(text)
        answer = self.authority.ocsp.respond(der) if der is not None else Answer(MALFORMED, status="malformed")
        _send(resp, answer, cacheable=True)


def _decode(text: str) -> bytes | None:
    """Standard or URL-safe base64, padded or not; a `+` some proxy turned into a space is put back."""
    text = text.replace(" ", "+").replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None


def _send(resp: falcon.Response, answer: Answer, *, cacheable: bool) -> None:
    resp.content_type = OCSP_RESPONSE
    resp.data = answer.der
    resp.set_header("X-OCSP-Cache", "hit" if answer.cached else "miss")
    if not cacheable:  # POST: HTTP caches do not keep it anyway (RFC 5019 §5)
        return
    if answer.this_update is None or answer.next_update is None:  # an unsigned error
        resp.cache_control = ["no-store"]
        return
    # RFC 5019 §6.2: caches may keep it until nextUpdate, and must not re-encode it.
    max_age = max(0, int((answer.next_update - datetime.now(UTC)).total_seconds()))
    if answer.status == "unknown":  # a serial unknown now may be one being issued: not for a day
        max_age = min(max_age, UNKNOWN_MEMO_SECONDS)
    resp.cache_control = ["public", f"max-age={max_age}", "no-transform"]
    resp.set_header("Last-Modified", format_datetime(answer.this_update, usegmt=True))
    resp.set_header("Expires", format_datetime(answer.next_update, usegmt=True))
    resp.etag = f'"{sha1(answer.der).hex()}"'


def add_ocsp_routes(app: falcon.App, authority: Authority, prefixes: tuple[str, ...] = ("",)) -> None:
    """`{prefix}/ocsp` (POST, and GET of nothing: malformed) and `{prefix}/ocsp/{request}` (GET, POST)."""
    for p in prefixes:
        resource = OCSP(authority, f"{p}/ocsp/")
        app.add_route(f"{p}/ocsp", resource)
        app.add_route(f"{p}/ocsp/{{encoded:path}}", resource)
