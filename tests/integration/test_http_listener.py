"""The plain-HTTP listener's server (appliance/serving/http_server.py) over real sockets: keep-alive,
pipelining in order, HTTP/1.0, the limits (413, 414, 431, connections), 100-continue, HEAD, idle connections,
a failing application, and what the WSGI application sees."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvloop

from appliance.serving.http_server import HTTPServer, Reply


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Echoes what a WSGI application is given; `/boom` raises; `/slow` sleeps a little."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("application bug")
    if path == "/slow":
        time.sleep(0.2)
    body = environ["wsgi.input"].read()
    seen = {k: v for k, v in environ.items() if k.isupper()}
    data = json.dumps({**seen, "body": body.decode("latin-1")}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]


def fast(method: bytes, target: bytes, body: bytes, now: float) -> Reply | None:
    if target == b"/fast":
        return "200 OK", [("Content-Type", "text/plain")], b"fast:" + body
    return None


class Running:
    def __init__(self, **options: Any):
        self.loop = uvloop.new_event_loop()
        self.server = HTTPServer(app, host="127.0.0.1", port=0, fast=fast, **options)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.address[1]

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        return sock

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture
def listener() -> Iterator[Running]:
    r = Running(max_body=1024, idle_timeout=1.0, max_connections=20)
    yield r
    r.stop()


def read_response(sock: socket.socket, buf: bytearray, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
    """One response from `buf` + the socket (leaves what follows in `buf`)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed; got {bytes(buf)!r}")
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    del buf[:end + 4]
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(buf) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed in the body")
        buf += chunk
    body = bytes(buf[:length])
    del buf[:length]
    return status, headers, body


def closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError):
        return True


def test_keep_alive_and_pipelined_requests_are_answered_in_order(listener: Running) -> None:
    sock = listener.connect()
    buf = bytearray()
    # Slow application request first, then a fast one: the fast answer must wait its turn.
    sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                 b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                 b"GET /a%2Fb?q=1 HTTP/1.1\r\nHost: x\r\n\r\n")
    s1, _, b1 = read_response(sock, buf)
    s2, h2, b2 = read_response(sock, buf)
    s3, _, b3 = read_response(sock, buf)
    assert (s1, s2, s3) == (200, 200, 200)
    assert json.loads(b1)["PATH_INFO"] == "/slow"
    assert b2 == b"fast:abc" and h2["content-length"] == "8" and "date" in h2 and h2["server"] == "hsmca"
    seen = json.loads(b3)
    assert seen["PATH_INFO"] == "/a/b" and seen["QUERY_STRING"] == "q=1"  # PEP 3333: decoded path
    sock.close()


def test_what_the_application_sees(listener: Running) -> None:
    sock = listener.connect()
    buf = bytearray()
    sock.sendall(b"POST /echo HTTP/1.1\r\nHost: ca.example\r\nContent-Type: application/json\r\n"
                 b"X-Forwarded-For: 6.6.6.6\r\nX_Sneaky: 1\r\nAccept: a\r\nAccept: b\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    status, _, body = read_response(sock, buf)
    seen = json.loads(body)
    assert status == 200 and seen["body"] == "abcde" and seen["CONTENT_LENGTH"] == "5"
    assert seen["CONTENT_TYPE"] == "application/json" and seen["HTTP_HOST"] == "ca.example"
    assert seen["HTTP_ACCEPT"] == "a, b" and seen["REMOTE_ADDR"] == "127.0.0.1"
    assert "HTTP_X_FORWARDED_FOR" not in seen and "HTTP_X_SNEAKY" not in seen
    sock.close()


def test_http_1_0_closes_unless_kept_alive(listener: Running) -> None:
    sock = listener.connect()
    buf = bytearray()
    sock.sendall(b"GET /fast HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
    status, headers, _ = read_response(sock, buf)
    assert status == 200 and headers["connection"] == "keep-alive"
    sock.sendall(b"GET /x HTTP/1.0\r\n\r\n")
    status, headers, _ = read_response(sock, buf)
    assert status == 200 and headers["connection"] == "close" and closed(sock)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n", 413),
    (b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n" + b"a" * 2048 + b"\r\n0\r\n\r\n", 413),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n", 431),
    (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400),
])
def test_bad_requests_get_a_json_error_and_the_connection_closes(
        listener: Running, request_bytes: bytes, status: int) -> None:
    sock = listener.connect()
    buf = bytearray()
    sock.sendall(request_bytes)
    got, headers, body = read_response(sock, buf)
    assert got == status and headers["connection"] == "close"
    assert json.loads(body)["status"] == status and json.loads(body)["message"]
    assert closed(sock)


def test_expect_100_continue_and_head(listener: Running) -> None:
    sock = listener.connect()
    buf = bytearray()
    sock.sendall(b"POST /fast HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    interim, _, _ = read_response(sock, buf, head_only=True)
    assert interim == 100
    sock.sendall(b"hi")
    status, _, body = read_response(sock, buf)
    assert status == 200 and body == b"fast:hi"
    sock.sendall(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    status, headers, _ = read_response(sock, buf, head_only=True)
    assert status == 200 and int(headers["content-length"]) > 0  # the length of the GET, no body
    status, _, body = read_response(sock, buf)  # the next response starts right after the head
    assert status == 200 and body == b"fast:"
    sock.close()


def test_a_failing_application_is_a_500_and_the_connection_lives_on(listener: Running) -> None:
    sock = listener.connect()
    buf = bytearray()
    sock.sendall(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = read_response(sock, buf)
    assert status == 500 and "internal error" in json.loads(body)["message"]
    sock.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_response(sock, buf)[0] == 200
    sock.close()


def test_idle_connections_are_closed(listener: Running) -> None:
    sock = listener.connect()
    sock.settimeout(5)
    t0 = time.monotonic()
    assert closed(sock)  # idle_timeout 1 s
    assert 0.5 < time.monotonic() - t0 < 4


def test_too_many_connections_get_a_503() -> None:
    r = Running(max_connections=2, idle_timeout=5.0)
    try:
        held = [r.connect(), r.connect()]
        time.sleep(0.2)
        extra = r.connect()
        status, _, body = read_response(extra, bytearray())
        assert status == 503 and "too many connections" in json.loads(body)["message"]
        for s in held:
            s.close()
        time.sleep(0.2)
        again = r.connect()
        again.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(again, bytearray())[0] == 200
    finally:
        r.stop()


def test_shutdown_answers_the_requests_in_the_pool_first() -> None:
    r = Running(idle_timeout=5.0)
    try:
        sock = r.connect()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # 0.2 s in the application
        time.sleep(0.05)
        done = asyncio.run_coroutine_threadsafe(r.server.shutdown(grace=5.0), r.loop)
        status, _, body = read_response(sock, bytearray())
        assert status == 200 and json.loads(body)["PATH_INFO"] == "/slow"
        done.result(5)
        with pytest.raises(OSError):
            r.connect()  # no longer accepting
    finally:
        r.stop()
