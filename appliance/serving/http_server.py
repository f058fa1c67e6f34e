"""hsmca's HTTP/1.1 server, on asyncio (uvloop), parsed by httptools: both listeners, TLS for the step API.

Hand-written on purpose (see the README's design decisions for the figures). Relying parties send the same OCSP
requests all day and the answer is in memory (ocsp_memo.py), so on the plain-HTTP listener the cost left is the
server's own: with a trivial 400-byte response and 8 keep-alive clients uvicorn (httptools, uvloop) answered
11.7k requests/s here, waitress + Falcon about 1.4k, and a protocol that answers from the parser's callback 40k.
No library server lets the application answer there, so this module is that protocol: `fast` sees every complete
request on the event loop and may answer it; everything else goes to the WSGI application (Falcon) in a thread
pool, one request at a time per connection, responses in order.

The HTTPS listener runs the same protocol with TLS (uvloop's start_tls, after the address caps are checked at
accept, so a refused client costs no handshake slot). What no maintained Python server here does, and this one
must (the serving-speed issue froze gunicorn's gthread workers with 8 half-sent requests), is to bound a client
in *time* however it trickles: a deadline for the TLS handshake, one for the whole request line and headers
(counted from the request's first byte, or from accept, and not extended by further bytes), one for the whole
body, one for a client that stops reading its answer, and an idle limit between keep-alive requests. A request
occupies a pool thread only once it is complete, so slow clients hold memory (bounded) but never a thread.
Connections are capped per client address and per process; past a cap the client gets a 503 and the connection
is closed (past twice the overall cap, closed without an answer). Refusals and cuts are counted in /metrics.

Bounded also in space: request line and headers (REQUEST_LINE_MAX, HEADERS_MAX), body (max_body; 413). No
upgrades, no chunked responses (bodies are whole: certificates, CRLs, OCSP responses, JSON).
"""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import math
import ssl
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.utils import formatdate
from socket import create_server, socket
from typing import Any, cast
from urllib.parse import unquote_to_bytes

import httptools

from appliance import metrics
from appliance.api.peer import PEER_CERTIFICATE

log = logging.getLogger("hsmca.http")
access_log = logging.getLogger("hsmca.access")

REQUEST_LINE_MAX = 8 * 1024
# Up to this much of an oversize body is read and dropped before the 413: a server that answers and closes while
# the client still sends makes the client see a reset, not the answer. Past it the 413 goes out at once.
DRAIN_MAX = 32 * 1024 * 1024
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


@dataclass(frozen=True, slots=True)
class Limits:
    """How long and how many; per listener process. ca.json's `server` block sets them (config.ServerConfig)."""

    handshake_timeout: float = 10.0  # TLS handshake, from accept
    header_timeout: float = 10.0  # request line + headers, from the request's first byte (from accept: the first)
    body_timeout: float = 30.0  # the whole body, from the end of the headers
    idle_timeout: float = 30.0  # keep-alive: between the end of an answer and the next request's first byte
    write_timeout: float = 30.0  # a client that stops reading its answer
    max_connections: int = 1000
    max_per_address: int = 100
    max_body: int = 64 * 1024


@dataclass(slots=True)
class Request:
    method: bytes = b""
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    keep_alive: bool = True
    version: str = "1.1"
    expect_continue: bool = False
    too_large: int = 0  # bytes of an oversize body read and dropped (answered 413 once it has been read)


class _Reject(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status


TLSContext = Callable[[], ssl.SSLContext]  # called at every handshake (the certificate may have been renewed)


class HTTPServer:
    """One listening socket, opened by `start()` on the running loop, closed by `stop()` or `shutdown()`.

    `app` may be replaced while serving (a reload): requests already in the pool finish with the one they got.
    """

    def __init__(self, app: WSGIApp, *, host: str = "", port: int = 0, sock: socket | None = None,
                 fast: FastPath | None = None, threads: int = 4, limits: Limits = Limits(),
                 tls: TLSContext | None = None, reuse_port: bool = False, name: str = "http",
                 log_access: bool = False):
        self.app, self.host, self.port, self.sock, self.fast = app, host, port, sock, fast
        self.limits, self.tls, self.name, self.log_access = limits, tls, name, log_access
        self.max_body = limits.max_body
        self.reuse_port = reuse_port  # several processes on one port (the supervisor checked it was free)
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix=name)
        self.connections = 0
        self.per_address: dict[str, int] = {}
        self.open: set[_Connection] = set()
        self.in_flight = 0  # requests in the pool
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._acceptor: asyncio.Task[None] | None = None
        self._sweeper: asyncio.TimerHandle | None = None
        self._date = (0, "")

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.tls is not None:
            # TLS connections are accepted here, not by create_server: the caps are checked on the client's
            # address before its handshake, and no byte is read before TLS owns the socket.
            if self.sock is None:
                self.sock = create_server((self.host, self.port), backlog=1024, reuse_port=self.reuse_port)
            self.sock.setblocking(False)
            self._acceptor = loop.create_task(self._accept(self.sock))
        elif self.sock is not None:
            self._server = await loop.create_server(lambda: _Connection(self), sock=self.sock, backlog=1024)
        else:
            self._server = await loop.create_server(lambda: _Connection(self), self.host, self.port, backlog=1024,
                                                    reuse_address=True, reuse_port=self.reuse_port)
        self._sweep_every = max(0.05, min(1.0, min(self.limits.header_timeout, self.limits.handshake_timeout,
                                                   self.limits.idle_timeout) / 4))
        self._sweeper = loop.call_later(self._sweep_every, self._sweep)

    @property
    def address(self) -> tuple[str, int]:
        sock = self.sock if self._server is None else self._server.sockets[0]
        assert sock is not None
        return sock.getsockname()[:2]

    async def _accept(self, sock: socket) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                client, peer = await loop.sock_accept(sock)
            except OSError as exc:  # out of descriptors, or the client left before accept: wait, go on
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            loop.create_task(self._handshake(client, peer))

    async def _handshake(self, client: socket, peer: Any) -> None:
        """Admit (or refuse) by address, then hand the socket to TLS; the protocol takes over once it is up."""
        assert self.tls is not None
        conn = _Connection(self)
        conn.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        conn.address = conn.peer[0] if conn.peer else ""
        conn.admitted = True
        refused = conn.refused = self.admit(conn, conn.address)
        if refused is not None and refused != "stopping":
            metrics.connection_refused(self.name, refused)
            if self.connections > 2 * self.limits.max_connections:  # far past the cap: not even an answer
                client.close()
                conn._gone()
                return
        conn._set("handshake", math.inf)  # connect_accepted_socket's own timeout applies
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, client, ssl=self.tls(), ssl_handshake_timeout=self.limits.handshake_timeout)
        except (asyncio.TimeoutError, TimeoutError, ConnectionAbortedError):  # uvloop aborts a handshake past its time
            metrics.connection_cut(self.name, "handshake")
            client.close()
            conn._gone()
        except (OSError, ssl.SSLError, ConnectionError, RuntimeError, ValueError):  # a failed handshake
            client.close()
            conn._gone()

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, close idle connections, give the requests in the pool up to `grace` seconds to be
        answered (with `Connection: close`), then let go."""
        self.stopping = True
        self._stop_listening()
        for conn in list(self.open):
            if not conn.busy:
                conn.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.in_flight and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def stop(self) -> None:
        """Stop at once (requests in the pool are abandoned; their connections close with the loop)."""
        self.stopping = True
        self._stop_listening()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._acceptor is not None:
            self._acceptor.cancel()

    def date_header(self, now: float) -> str:
        """The Date and Server header lines, formatted once a second."""
        second = int(now)
        if self._date[0] != second:
            self._date = (second, f"Date: {formatdate(second, usegmt=True)}\r\nServer: hsmca\r\n")
        return self._date[1]

    # -- connection accounting -----------------------------------------------------------------

    def admit(self, conn: _Connection, address: str) -> str | None:
        """Count a new connection; the reason it must be refused, if any."""
        self.connections += 1
        self.open.add(conn)
        count = self.per_address.get(address, 0) + 1
        self.per_address[address] = count
        if self.stopping:
            return "stopping"
        if count > self.limits.max_per_address:
            return "per_address"
        if self.connections > self.limits.max_connections:
            return "overall"
        return None

    def release(self, conn: _Connection, address: str) -> None:
        self.open.discard(conn)
        self.connections -= 1
        count = self.per_address.get(address, 1) - 1
        if count > 0:
            self.per_address[address] = count
        else:
            self.per_address.pop(address, None)

    def _sweep(self) -> None:
        """Close the connections whose deadline passed (one timer per server, not one per connection)."""
        now = time.monotonic()
        for conn in [c for c in self.open if c.deadline <= now]:
            conn.expire()
        if not (self.stopping and not self.open):
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_every, self._sweep)

    # -- the WSGI side (a pool thread) ---------------------------------------------------------

    def call_app(self, req: Request, peer: tuple[str, int] | None, peer_cert: bytes | None) -> Reply:
        started_at = time.perf_counter()
        environ = self._environ(req, peer, peer_cert)
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
            reply = _json_error("500 Internal Server Error", "internal error (see the server's log)")
        else:
            if started:
                reply = (started[0], list(started[1]), body)
            else:
                reply = _json_error("500 Internal Server Error", "the application sent no response")
        if self.log_access and access_log.isEnabledFor(logging.INFO):
            rid = next((v for k, v in reply[1] if k.lower() == "x-request-id"), "-")
            access_log.info('%s "%s %s" %s %d %.1fms rid=%s', peer[0] if peer else "-", req.method.decode(),
                            req.target[:200].decode("latin-1"), reply[0][:3], len(reply[2]),
                            (time.perf_counter() - started_at) * 1000, rid)
        return reply

    def _environ(self, req: Request, peer: tuple[str, int] | None, peer_cert: bytes | None) -> dict[str, Any]:
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
            "wsgi.url_scheme": "https" if self.tls is not None else "http",
            "wsgi.input": io.BytesIO(req.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            PEER_CERTIFICATE: peer_cert,
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
    """One client connection: admit, (TLS), parse, answer in order, keep alive while the client behaves.

    `deadline` (monotonic seconds) is when the server's sweep cuts the connection, for the `phase` it is in:
    handshake, headers, body, busy (no deadline: the request is the application's), write, idle.
    """

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
        self.admitted = False
        self.refused: str | None = None
        self.peer: tuple[str, int] | None = None
        self.address = ""
        self.peer_cert: bytes | None = None
        self.phase = "handshake"
        self.deadline = math.inf

    # -- transport events ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio subclasses
        server = self.server
        if self.admitted:  # TLS, handshake done: HTTPServer._handshake admitted the address before it
            ssl_object = self.transport.get_extra_info("ssl_object")
            self.peer_cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            refused = self.refused
        else:
            peer = self.transport.get_extra_info("peername")
            self.peer = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
            self.address = self.peer[0] if self.peer else ""
            self.admitted = True
            refused = server.admit(self, self.address)
            if refused is not None and refused != "stopping":
                metrics.connection_refused(server.name, refused)
                if server.connections > 2 * server.limits.max_connections:
                    self.close(abort=True)  # far past the cap: not even an answer
                    return
        if refused is not None:
            self._refuse(refused)
        else:
            self._set("headers", time.monotonic() + server.limits.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        self.closing = True
        if self.admitted:
            self.admitted = False
            self.server.release(self, self.address)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if self.phase == "idle":
            self._set("headers", time.monotonic() + self.server.limits.header_timeout)
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

    def eof_received(self) -> bool | None:
        return None  # close our side too (a half-closed client gets no more answers)

    def pause_writing(self) -> None:
        self.paused = True
        self._set("write", time.monotonic() + self.server.limits.write_timeout)
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.paused = False
        if self.transport is not None and not self.busy and not self.closing:
            self.transport.resume_reading()
        self._idle_or_next()

    # -- deadlines -----------------------------------------------------------------------------

    def _set(self, phase: str, deadline: float) -> None:
        self.phase, self.deadline = phase, deadline

    def expire(self) -> None:
        """The sweep found this connection past its deadline."""
        if self.closing or self.transport is None:
            self._gone()
            return
        if self.transport.is_closing():
            self._gone()  # closed under us (uvloop does not always report it to a start_tls protocol)
            return
        phase = self.phase
        if phase in ("headers", "body"):
            metrics.connection_cut(self.server.name, phase)
            if self.header_bytes or phase == "body" or self.req.target:
                self._reply_and_close(_json_error("408 Request Timeout", f"the request's {phase} took longer than "
                                                  "the server allows"))
                return
        elif phase in ("handshake", "write"):
            metrics.connection_cut(self.server.name, phase)
        self.close(abort=phase in ("handshake", "write"))

    def close(self, abort: bool = False) -> None:
        self.closing = True
        self.deadline = math.inf
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
        self._gone()

    # -- parser callbacks ----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.req = Request()
        self.header_bytes = 0
        if self.phase not in ("headers", "busy", "write"):  # pipelined: the deadline runs from now
            self._set("headers", time.monotonic() + self.server.limits.header_timeout)

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
                if int(value) > DRAIN_MAX:
                    raise _Reject("413 Content Too Large", self._too_large(int(value)))
                self.req.too_large = 1
        elif size == 6 and name.lower() == b"expect" and value.strip().lower() == b"100-continue":
            self.req.expect_continue = True

    def on_headers_complete(self) -> None:
        if self.phase == "headers":
            self._set("body", time.monotonic() + self.server.limits.body_timeout)
        if self.req.expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        req = self.req
        if req.too_large:
            req.too_large += len(body)
            if req.too_large > DRAIN_MAX:
                raise _Reject("413 Content Too Large", self._too_large(req.too_large))
            return
        req.body += body
        if len(req.body) > self.server.max_body:  # chunked bodies carry no Content-Length
            req.too_large, req.body = len(req.body) + 1, b""  # counted as a declared one is: 1 + bytes

    def _too_large(self, size: int) -> str:
        return f"request body of {size} bytes exceeds the limit of {self.server.max_body} bytes"

    def on_message_complete(self) -> None:
        req, parser = self.req, self.parser
        req.method = parser.get_method()
        req.version = parser.get_http_version()
        req.keep_alive = parser.should_keep_alive()
        if req.too_large:
            raise _Reject("413 Content Too Large", self._too_large(req.too_large - 1))
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
            self._set("busy", math.inf)
            self.server.in_flight += 1
            if self.transport is not None:
                self.transport.pause_reading()  # no more requests parsed until this one is answered
            future = asyncio.get_running_loop().run_in_executor(self.server.pool, self.server.call_app, req,
                                                                 self.peer, self.peer_cert)
            future.add_done_callback(functools.partial(self._done, req))
        if not self.busy and not self.closing:
            self._idle_or_next()

    def _idle_or_next(self) -> None:
        if self.busy or self.closing or self.paused:
            return
        if self.queue:
            self._next()
        elif self.phase in ("busy", "write", "body"):  # answered: idle until the next request's first byte
            self._set("idle", time.monotonic() + self.server.limits.idle_timeout)

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
        if self.closing:
            return
        if not self.paused:  # else the write deadline runs until the client reads
            self._set("idle", time.monotonic() + self.server.limits.idle_timeout)
        if self.transport is not None and not self.paused:
            self.transport.resume_reading()
        self._next()

    def _write(self, req: Request, reply: Reply, now: float) -> None:
        transport = self.transport
        if transport is None or self.closing:
            return
        status, headers, body = reply
        keep_alive = req.keep_alive and not self.server.stopping and self.server.limits.idle_timeout > 0
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
            self.close()

    def _reply_and_close(self, reply: Reply) -> None:
        req = Request(method=b"GET", keep_alive=False)
        self.queue.clear()
        self._write(req, reply, time.time())
        self.close()

    def _refuse(self, reason: str) -> None:
        message = {"per_address": "too many connections from this address",
                   "overall": "too many connections", "stopping": "the server is stopping"}[reason]
        self._reply_and_close(_json_error("503 Service Unavailable", message))
