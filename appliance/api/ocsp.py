"""`POST /ocsp` and `GET /ocsp/{base64 request}` (RFC 6960 appendix A, RFC 5019 §5): transport only.

GET: the request is base64 in the path, url-encoded or not, so it may hold `/`, `+` and `=`. The WSGI
server has already percent-decoded PATH_INFO (`%2F` is `/` there), so the route takes the rest of the path
with a `path` converter and the resource reads it from PATH_INFO itself (Falcon strips a trailing slash,
which can be the last base64 character).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from urllib.parse import unquote_to_bytes

import falcon

from appliance import metrics
from appliance.errors import PayloadTooLarge
from appliance.status.ocsp import MALFORMED, MAX_REQUEST_BYTES, UNKNOWN_MEMO_SECONDS, Answer, sha1
from appliance.status.ocsp_memo import OCSPMemo

OCSP_RESPONSE = "application/ocsp-response"
MAX_GET_CHARS = (MAX_REQUEST_BYTES * 4) // 3 + 4
Responder = Callable[[bytes], Answer]
Headers = list[tuple[str, str]]


class OCSP:
    """One resource for both methods; `marker` is the path up to the encoded request (`/ocsp/`, `/1.0/ocsp/`).
    `respond` is the authority's responder, or the plain-HTTP listener's memory in front of it."""

    def __init__(self, respond: Responder, marker: str = "/ocsp/"):
        self.respond, self.marker = respond, marker

    def on_post(self, req: falcon.Request, resp: falcon.Response, encoded: str = "") -> None:
        data = req.bounded_stream.read(MAX_REQUEST_BYTES + 1)
        if len(data) > MAX_REQUEST_BYTES:
            raise PayloadTooLarge(f"an OCSP request is at most {MAX_REQUEST_BYTES} bytes")
        _send(resp, self.respond(data), cacheable=False)

    def on_get(self, req: falcon.Request, resp: falcon.Response, encoded: str = "") -> None:
        path = str(req.env.get("PATH_INFO") or req.path)
        at = path.find(self.marker)
        text = path[at + len(self.marker):] if at >= 0 else encoded
        if len(text) > MAX_GET_CHARS:
            raise PayloadTooLarge(f"an OCSP request is at most {MAX_REQUEST_BYTES} bytes")
        der = _decode(text)
        answer = self.respond(der) if der is not None else Answer(MALFORMED, status="malformed")
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
    for name, value in answer_headers(answer, cacheable, datetime.now(UTC).timestamp()):
        resp.set_header(name, value)


def answer_headers(answer: Answer, cacheable: bool, now: float) -> Headers:
    """The headers beside the response (RFC 5019 §6): GET responses are cacheable until nextUpdate."""
    source = ("X-OCSP-Cache", "memory" if answer.memory else "hit" if answer.cached else "miss")
    if not cacheable:  # POST: HTTP caches do not keep it anyway (RFC 5019 §5)
        return [source]
    if answer.this_update is None or answer.next_update is None:  # an unsigned error
        return [source, ("Cache-Control", "no-store")]
    expires_at, validators = _fixed(answer)
    # RFC 5019 §6.2: caches may keep it until nextUpdate, and must not re-encode it.
    max_age = max(0, int(expires_at - now))
    if answer.status == "unknown":  # a serial unknown now may be one being issued: not for a day
        max_age = min(max_age, UNKNOWN_MEMO_SECONDS)
    return [source, ("Cache-Control", f"public, max-age={max_age}, no-transform"), *validators]


_FIXED: dict[bytes, tuple[float, tuple[tuple[str, str], ...]]] = {}
_FIXED_MAX = 4096


def _fixed(answer: Answer) -> tuple[float, tuple[tuple[str, str], ...]]:
    """nextUpdate as a timestamp, and Last-Modified, Expires and ETag: fixed per response, so worked out once
    (the listener's memory serves one response many times)."""
    found = _FIXED.get(answer.der)
    if found is None:
        assert answer.this_update is not None and answer.next_update is not None
        if len(_FIXED) >= _FIXED_MAX:
            _FIXED.clear()
        found = _FIXED[answer.der] = (answer.next_update.timestamp(), (
            ("Last-Modified", format_datetime(answer.this_update, usegmt=True)),
            ("Expires", format_datetime(answer.next_update, usegmt=True)),
            ("ETag", f'"{sha1(answer.der).hex()}"')))
    return found


class FastPath:
    """OCSP answers the plain-HTTP listener gives on its event loop, from memory only: (status, headers, body),
    or None to hand the request to the application (a miss, or any other route)."""

    def __init__(self, memo: OCSPMemo, path: bytes = b"/ocsp"):
        self.memo, self.path, self.prefix = memo, path, path + b"/"
        self.answered = {"POST": 0, "GET": 0}  # since the last flush (a metric update costs ~3 us; this, 0.1)

    def flush_metrics(self) -> None:
        """Add the answers counted since the last call to the metric (call it on the same loop, every second)."""
        for method, count in self.answered.items():
            if count:
                metrics.ocsp_answered_from_memory(method, count)
                self.answered[method] = 0

    def __call__(self, method: bytes, target: bytes, body: bytes, now: float
                 ) -> tuple[str, Headers, bytes] | None:
        if method == b"POST" and (target == self.path or target.startswith(self.prefix)):
            if len(body) > MAX_REQUEST_BYTES:
                return None
            answer, cacheable, name = self.memo.lookup(body, now), False, "POST"
        elif method == b"GET" and target.startswith(self.prefix):
            # The GET path itself is a key: a client asking again sends the same characters.
            alias = b"\x01GET" + target  # 0x01: no DER request (0x30) nor CertID key (0x00) starts so
            answer = self.memo.lookup_alias(alias, now)
            if answer is None:
                if b"?" in target or len(target) > len(self.prefix) + 3 * MAX_GET_CHARS:
                    return None
                der = _decode(unquote_to_bytes(target[len(self.prefix):]).decode("latin-1"))
                if der is None or len(der) > MAX_REQUEST_BYTES:
                    return None
                answer = self.memo.lookup(der, now, alias=alias)
            cacheable, name = True, "GET"
        else:
            return None
        if answer is None:
            return None
        self.answered[name] += 1
        return "200 OK", [("Content-Type", OCSP_RESPONSE), *answer_headers(answer, cacheable, now)], answer.der


def add_ocsp_routes(app: falcon.App, respond: Responder, prefixes: tuple[str, ...] = ("",)) -> None:
    """`{prefix}/ocsp` (POST, and GET of nothing: malformed) and `{prefix}/ocsp/{request}` (GET, POST)."""
    for p in prefixes:
        resource = OCSP(respond, f"{p}/ocsp/")
        app.add_route(f"{p}/ocsp", resource)
        app.add_route(f"{p}/ocsp/{{encoded:path}}", resource)
