"""The plain-HTTP listener's server: HTTP/1.1 on asyncio (uvloop), parsed by httptools.

Hand-written on purpose. Relying parties send the same OCSP requests all day, and the answer is in memory
(ocsp_memo.py), so the cost that is left is the server's own. Measured on the 2-core machine this was built on,
with a trivial 400-byte response and 8 keep-alive clients: uvicorn (httptools, uvloop) answered 11.7k
requests/s, waitress + Falcon about 1.4k, and a protocol that answers from the parser's callback with no task,
no thread and no framework 40k. No library server lets the application answer there, so this module is that
protocol: `fast` sees every complete request on the event loop and may answer it; everything else goes to the
WSGI application (Falcon) in a thread pool, one request at a time per connection, responses in order.

Bounded like the waitress set-up it replaces: request line and headers (REQUEST_LINE_MAX, HEADERS_MAX), body
(max_body; 413), connections (max_connections; 503), idle keep-alive connections closed after idle_timeout.
No TLS, no upgrades, no chunked responses (bodies are whole: CA certificates, CRLs, OCSP responses).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

log = logging.getLogger("hsmca.http")

REQUEST_LINE_MAX = 8 * 1024
HEADERS_MAX = 16 * 1024
HEADER_OVERHEAD = 128  # so at most 128 headers
Headers = list[tuple[str, str]]
Reply = tuple[str, Headers, bytes]  # status line text ("200 OK"), headers, body
FastPath = Callable[[bytes, bytes, bytes, float], Reply | None]  # method, target, body, now
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
# Headers a proxy would set: nothing here trusts them, so the application never sees them (as waitress's
# clear_untrusted_proxy_headers did).
_PROXY_HEADERS = frozenset({"forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto",
                            "x-forwarded-port", "x-forwarded-by"})


@dataclass(slots=True)
class Request:
    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True
    version: str = "1.1"
    expect_continue: bool = False


class _Reject(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


class HTTPServer:
    """One listening socket, opened by `start()` on the running loop, closed by `stop()`."""

    def __init__(self, app: WSGIApp, *, host: str, port: int, fast: FastPath | None = None, threads: int = 4,
                 max_body: int = 64 * 1024, max_connections: int = 1000, idle_timeout: float = 30.0,
                 reuse_port: bool = False):
        self.app, self.host, self.port, self.fast = app, host, port, fast
        self.max_body, self.max_connections, self.idle_timeout = max_body, max_connections, idle_timeout
        self.reuse_port = reuse_port  # several processes on one port (the supervisor checked it was free)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="http")
        self.connections = 0
        self.in_flight = 0  # requests in the pool
        self._server: asyncio.base_events.Server | None = None
        self._date = (0, "")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024,
                                                reuse_address=True, reuse_port=self.reuse_port)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[:2]

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, give the requests in the pool up to `grace` seconds to be answered, then let go."""
        if self._server is not None:
            self._server.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Stop at once (requests in the pool are abandoned; their connections close with the loop)."""
        if self._server is not None:
            self._server.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def date_header(self, now: float) -> str:
        """The Date and Server header lines, formatted once a second."""
        second = int(now)
        if self._date[0] != second:
            self._date = (second, f"Date: {formatdate(second, usegmt=True)}\r\nServer: hsmca\r\n")
        return self._date[1]

    # -- the WSGI side (a pool thread) ---------------------------------------------------------

    def call_app(self, req: Request, peer: tuple[str, int] | None) -> Reply:
        environ = self._environ(req, peer)
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[..., Any]:
            if exc_info is not None and started:
                raise exc_info[1].with_traceback(exc_info[2])
            started[:] = [status, headers]
            return _no_write

        try:
            result = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        except Exception:
            log.exception("the application failed on %s %s", req.method.decode(), req.target[:200].decode("latin-1"))
            return _json_error("500 Internal Server Error", "internal error (see the server's log)")
        if not started:
            return _json_error("500 Internal Server Error", "the application sent no response")
        status, headers = started
        return status, list(headers), body

    def _environ(self, req: Request, peer: tuple[str, int] | None) -> dict[str, Any]:
        path, _, query = req.target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": req.method.decode("latin-1"),
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),  # PEP 3333: decoded, as latin-1 text
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": self.host or "0.0.0.0",
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": f"HTTP/{req.version}",
            "REMOTE_ADDR": peer[0] if peer else "",
            "REMOTE_PORT": str(peer[1]) if peer else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(req.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        if req.body or req.method in (b"POST", b"PUT", b"PATCH"):
            environ["CONTENT_LENGTH"] = str(len(req.body))
        for raw_name, raw_value in req.headers:
            name = raw_name.decode("latin-1").lower()
            if "_" in name or name in _PROXY_HEADERS:  # `X_Foo` would pose as `X-Foo` in the environ
                continue
            value = raw_value.decode("latin-1").strip()
            if name == "content-type":
                environ["CONTENT_TYPE"] = value
            elif name != "content-length":
                key = "HTTP_" + name.upper().replace("-", "_")
                environ[key] = f"{environ[key]}, {value}" if key in environ else value
        return environ


def _no_write(data: bytes) -> None:
    raise RuntimeError("the WSGI write() callable is not supported: return the body")


def _json_error(status: str, message: str) -> Reply:
    code = int(status.split(" ", 1)[0])
    body = ('{"status": %d, "message": "%s"}' % (code, message)).encode()
    return status, [("Content-Type", "application/json")], body


class _Connection(asyncio.Protocol):
    """One client connection: parse, answer in order, keep alive while the client wants and behaves."""

    def __init__(self, server: HTTPServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.req = Request()
        self.header_bytes = 0
        self.queue: deque[Request] = deque()
        self.busy = False  # a request is in the pool
        self.paused = False  # the transport's write buffer is full
        self.closing = False
        self.peer: tuple[str, int] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.last_active = time.monotonic()

    # -- transport events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        self.server.connections += 1
        peer = self.transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        if self.server.connections > self.server.max_connections:
            self._reply_and_close(_json_error("503 Service Unavailable", "too many connections"))
            return
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections -= 1
        self.closing = True
        if self.timer is not None:
            self.timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_active = time.monotonic()
        try:
            self.parser.feed_data(data)
        except _Reject as exc:
            self._reply_and_close(_json_error(exc.status, str(exc)))
        except httptools.HttpParserUpgrade:
            self._reply_and_close(_json_error("400 Bad Request", "protocol upgrades are not served here"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Reject):
                self._reply_and_close(_json_error(cause.status, str(cause)))
            else:
                self._reply_and_close(_json_error("400 Bad Request", "malformed HTTP request"))

    def pause_writing(self) -> None:
        self.paused = True
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.busy and not self.closing:
            self.transport.resume_reading()
        self._next()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.req = Request()
        self.header_bytes = 0

    def on_url(self, url: bytes) -> None:
        self.req.target += url
        if len(self.req.target) > REQUEST_LINE_MAX:
            raise _Reject("414 URI Too Long", f"the request target is longer than {REQUEST_LINE_MAX} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self.req.headers.append((name, value))
        size = len(name)
        # Each header counts at least HEADER_OVERHEAD bytes, so one sum bounds both their size and their number.
        self.header_bytes += size + len(value) + HEADER_OVERHEAD
        if self.header_bytes > HEADERS_MAX:
            raise _Reject("431 Request Header Fields Too Large",
                          f"at most {HEADERS_MAX} bytes of headers (each counting {HEADER_OVERHEAD} more)")
        # Two headers matter before the body: compare only names of their length.
        if size == 14 and name.lower() == b"content-length":
            if value.strip().isdigit() and int(value) > self.server.max_body:
                raise _Reject("413 Content Too Large", f"the body is limited to {self.server.max_body} bytes")
        elif size == 6 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            self.req.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.req.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.req.body += body
        if len(self.req.body) > self.server.max_body:  # chunked bodies carry no Content-Length
            raise _Reject("413 Content Too Large", f"the body is limited to {self.server.max_body} bytes")

    def on_message_complete(self) -> None:
        req, parser = self.req, self.parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        self.queue.append(req)
        self._next()

    # -- answering -----------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer queued requests in order: from the fast path right here, else one at a time in the pool."""
        fast = self.server.fast
        while self.queue and not self.busy and not self.paused and not self.closing:
            req = self.queue.popleft()
            now = time.time()
            try:
                reply = fast(req.method, req.target, req.body, now) if fast is not None else None
            except Exception:  # the fast path is an optimisation: on any surprise, the application answers
                log.exception("the fast path failed; handing the request to the application")
                reply = None
            if reply is not None:
                self._write(req, reply, now)
                continue
            self.busy = True
            self.server.in_flight += 1
            if self.transport is not None:
                self.transport.pause_reading()  # no more requests parsed until this one is answered
            future = asyncio.get_running_loop().run_in_executor(self.server.pool, self.server.call_app, req,
                                                                 self.peer)
            future.add_done_callback(functools.partial(self._done, req))

    def _done(self, req: Request, future: asyncio.Future[Reply]) -> None:
        self.busy = False
        self.server.in_flight -= 1
        if self.closing:
            return
        try:
            reply = future.result()
        except Exception:  # cancelled at shutdown, or the pool is gone
            reply = _json_error("503 Service Unavailable", "the server is stopping")
            req.keep_alive = False
        self._write(req, reply, time.time())
        self.last_active = time.monotonic()  # idle from now on, however long the application took
        if self.transport is not None and not self.closing and not self.paused:
            self.transport.resume_reading()
        self._next()

    def _write(self, req: Request, reply: Reply, now: float) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        status, headers, body = reply
        keep_alive = req.keep_alive
        head = f"HTTP/1.1 {status}\r\n"
        has_length = False
        for name, value in headers:
            if len(name) == 14 and name.lower() == "content-length":
                has_length = True
            elif len(name) == 10 and name.lower() == "connection":
                keep_alive = keep_alive and value.strip().lower() != "close"
                continue
            head += f"{name}: {value}\r\n"
        if not has_length:
            head += f"Content-Length: {len(body)}\r\n"
        head += self.server.date_header(now)
        if not keep_alive:
            head += "Connection: close\r\n"
        elif req.version == "1.0":
            head += "Connection: keep-alive\r\n"
        data = (head + "\r\n").encode("latin-1")
        transport.write(data if req.method == b"HEAD" or not body else data + body)
        if not keep_alive:
            self.closing = True
            transport.close()

    def _reply_and_close(self, reply: Reply) -> None:
        req = Request(method=b"GET", keep_alive=False)
        self.queue.clear()
        self._write(req, reply, time.time())
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    # -- idle connections ----------------------------------------------------------------------

    def _arm(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.server.idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        if self.closing or self.transport is None:
            return
        idle = time.monotonic() - self.last_active
        if idle >= self.server.idle_timeout and not self.busy:
            self.closing = True
            self.transport.close()
            return
        self.timer = asyncio.get_running_loop().call_later(max(0.1, self.server.idle_timeout - idle),
                                                           self._check_idle)
