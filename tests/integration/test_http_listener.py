"""hsmca's HTTP server (appliance/serving/http_server.py) over real sockets: keep-alive, pipelining in order,
HTTP/1.0, the limits (413, 414, 431, connections overall and per address), 100-continue, HEAD, idle connections,
a failing application, what the WSGI application sees; the deadlines that a trickle of bytes does not extend
(headers, body, a client that does not read, a TLS handshake), and TLS with an optional client certificate."""

from __future__ import annotations

import asyncio
import datetime
import json
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from appliance.api.peer import PEER_CERTIFICATE
from appliance.serving.http_server import HTTPServer, Limits, Reply


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """Echoes what a WSGI application is given; `/boom` raises; `/slow` sleeps a little."""
    path = environ["PATH_INFO"]
    if path == "/boom":
        raise RuntimeError("application bug")
    if path == "/slow":
        time.sleep(0.2)
    if path == "/big":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"x" * (32 * 1024 * 1024)]
    body = environ["wsgi.input"].read()
    seen = {k: v for k, v in environ.items() if k.isupper()}
    seen["peer_cert"] = len(environ[PEER_CERTIFICATE]) if environ.get(PEER_CERTIFICATE) else None
    data = json.dumps({**seen, "body": body.decode("latin-1")}).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [data]


def fast(method: bytes, target: bytes, body: bytes, now: float) -> Reply | None:
    if target == b"/fast":
        return "200 OK", [("Content-Type", "text/plain")], b"fast:" + body
    return None


class Running:
    def __init__(self, *, tls: ssl.SSLContext | None = None, **limits: Any):
        self.loop = uvloop.new_event_loop()
        self.server = HTTPServer(app, host="127.0.0.1", port=0, fast=fast, limits=Limits(**limits),
                                 tls=(lambda: tls) if tls is not None else None)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.address[1]

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0))
        return sock

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.server.stop)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


@pytest.fixture
def listener() -> Iterator[Running]:
    r = Running(max_body=1024, idle_timeout=1.0, header_timeout=1.0, max_connections=20)
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
    (b"POST /x HTTP/1.1\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000, 413),  # read, dropped, then refused
    (b"POST /x HTTP/1.1\r\nContent-Length: 50000000\r\n\r\n", 413),  # too large to drain: refused at once
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
    with Running(max_connections=2, idle_timeout=5.0) as r:
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


def test_shutdown_answers_the_requests_in_the_pool_first() -> None:
    with Running(idle_timeout=5.0) as r:
        sock = r.connect()
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")  # 0.2 s in the application
        time.sleep(0.05)
        done = asyncio.run_coroutine_threadsafe(r.server.shutdown(grace=5.0), r.loop)
        status, _, body = read_response(sock, bytearray())
        assert status == 200 and json.loads(body)["PATH_INFO"] == "/slow"
        done.result(5)
        with pytest.raises(OSError):
            r.connect()  # no longer accepting


def cut(reason: str, listener: str = "http") -> float:
    return REGISTRY.get_sample_value("hsmca_connections_cut_total", {"listener": listener, "reason": reason}) or 0.0


def trickle_until_answered(sock: socket.socket, data: bytes, every: float, give_up: float) -> tuple[bytes, float]:
    """Send `data` one byte every `every` seconds until the server answers or closes; what it sent, and when."""
    t0 = time.monotonic()
    for byte in data:
        if select.select([sock], [], [], every)[0] or time.monotonic() - t0 > give_up:
            break
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
    sock.settimeout(max(0.1, give_up - (time.monotonic() - t0)))
    return read_until_closed(sock), time.monotonic() - t0


def read_until_closed(sock: socket.socket) -> bytes:
    """All the server sends until it closes, resets, or the socket's timeout passes."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return received


def test_a_trickle_of_header_bytes_does_not_extend_the_header_deadline() -> None:
    with Running(header_timeout=1.0, idle_timeout=30.0) as r:
        before = cut("headers")
        got, took = trickle_until_answered(r.connect(), b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 200, 0.1, 6)
        assert got.startswith(b"HTTP/1.1 408 ") and b"headers" in got, got
        assert 0.9 < took < 2.5 and cut("headers") == before + 1


def test_a_trickle_of_body_bytes_does_not_extend_the_body_deadline() -> None:
    with Running(body_timeout=1.0) as r:
        sock = r.connect()
        sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n")
        got, took = trickle_until_answered(sock, b"b" * 500, 0.1, 6)
        assert got.startswith(b"HTTP/1.1 408 ") and b"body" in got, got
        assert 0.9 < took < 2.5


def test_a_client_that_does_not_read_its_answer_is_cut() -> None:
    with Running(write_timeout=1.0) as r:
        sock = r.connect()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        before = cut("write")
        deadline = time.monotonic() + 10
        while cut("write") == before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cut("write") == before + 1
        assert r.server.connections == 0 and not r.server.open  # the server let go (the kernel may still send)
        sock.close()


def test_connections_are_capped_per_address() -> None:
    with Running(max_per_address=2, header_timeout=5.0) as r:
        held = [r.connect("127.0.0.2"), r.connect("127.0.0.2")]
        time.sleep(0.2)
        status, _, body = read_response(r.connect("127.0.0.2"), bytearray())
        assert status == 503 and "from this address" in json.loads(body)["message"]
        other = r.connect("127.0.0.1")  # another address is served as before
        other.sendall(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(other, bytearray())[0] == 200
        for sock in held:
            sock.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for localhost and a client certificate, as PEM files."""
    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])

    def issue(name: str, key: ec.EllipticCurvePrivateKey, ca: bool = False) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(hours=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    files = {}
    for name, cn in (("ca", "test CA"), ("server", "localhost"), ("client", "client")):
        key = ca_key if name == "ca" else ec.generate_private_key(ec.SECP256R1())
        cert = issue(cn, key, ca=name == "ca")
        (d / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (d / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))
        files[name], files[name + "_key"] = d / f"{name}.crt", d / f"{name}.key"
    return files


def server_context(pki: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["server"], pki["server_key"])
    ctx.load_verify_locations(cafile=str(pki["ca"]))
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def tls_connect(r: Running, pki: dict[str, Path], source: str = "127.0.0.1", client: bool = False) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(pki["ca"]))
    if client:
        ctx.load_cert_chain(pki["client"], pki["client_key"])
    return ctx.wrap_socket(r.connect(source), server_hostname="localhost")


def test_tls_with_and_without_a_client_certificate(pki: dict[str, Path]) -> None:
    with Running(tls=server_context(pki)) as r:
        for client, expected in ((False, None), (True, True)):
            sock = tls_connect(r, pki, client=client)
            sock.sendall(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = read_response(sock, bytearray())
            seen = json.loads(body)
            assert status == 200 and seen["SERVER_PROTOCOL"] == "HTTP/1.1"
            assert (seen["peer_cert"] is not None) == bool(expected)
            sock.close()


@pytest.mark.parametrize("holders", [8, 100])
def test_half_sent_tls_requests_do_not_stall_other_clients(pki: dict[str, Path], holders: int) -> None:
    """What froze gunicorn's gthread workers (8 connections with unfinished headers): 4 application threads
    here, and `holders` TLS connections from another address holding half-sent headers."""
    with Running(tls=server_context(pki), header_timeout=10.0) as r:
        held = []
        for _ in range(holders):
            sock = tls_connect(r, pki, source="127.0.0.2")
            sock.sendall(b"POST /x HTTP/1.1\r\nHost: x\r\nContent-")
            held.append(sock)
        t0 = time.monotonic()
        sock = tls_connect(r, pki)
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200
        assert time.monotonic() - t0 < 2.0
        for s in held:
            s.close()


def test_a_tls_client_that_never_finishes_its_handshake_is_cut(pki: dict[str, Path]) -> None:
    with Running(tls=server_context(pki), handshake_timeout=1.0) as r:
        before = cut("handshake")
        sock = r.connect()  # TCP only: no ClientHello
        sock.settimeout(5)
        t0 = time.monotonic()
        assert closed(sock)
        assert 0.9 < time.monotonic() - t0 < 3 and cut("handshake") == before + 1


# -- whatever a client sends ------------------------------------------------------------------

_PIECES = st.sampled_from([
    b"GET ", b"POST ", b"HEAD ", b"/x", b"/fast", b"/boom", b"?q=1", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", b"\r\n",
    b"Host: x\r\n", b"Content-Length: 3\r\n", b"Content-Length: -1\r\n", b"Content-Length: 99999999999\r\n",
    b"Transfer-Encoding: chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n", b"Expect: 100-continue\r\n",
    b"Connection: close\r\n", b"Upgrade: h2c\r\n", b"X-A: \x00\xff\r\n", b"abc", b" ", b"\n", b"\x16\x03\x01",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(_PIECES, st.binary(max_size=40)), max_size=12))
def test_any_bytes_get_answers_below_500_or_a_close(listener: Running, data: list[bytes]) -> None:
    """Fragments of requests, valid or not, in any order: every answer is a well-formed HTTP response below 500
    (the application's own /boom aside), nothing hangs past the header deadline, and the server forgets the
    connection once it is closed."""
    sock = listener.connect()
    sock.settimeout(3)
    try:
        sock.sendall(b"".join(data))
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    received = read_until_closed(sock)
    sock.close()
    for head in received.split(b"HTTP/1.1 ")[1:]:
        status = int(head[:3])
        assert 100 <= status < 500 or (status == 500 and b"internal error" in head), head[:200]
    deadline = time.monotonic() + 3
    while listener.server.connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert listener.server.connections == 0 and not listener.server.per_address
