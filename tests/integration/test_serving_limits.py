"""A running `hsmca serve` cannot be frozen by slow clients (what froze its gunicorn predecessor): real sockets,
attackers on 127.0.0.2 so that the per-address cap of 127.0.0.1, where the honest client is, stays free."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from appliance.certutil import load_certificates
from tests.integration.conftest import DevCA, Server, start_server
from tests.integration.signing import issue_in_process, sign_bodies
from tests.unit.test_metrics import parse, value

ATTACKER = "127.0.0.2"


@pytest.fixture(scope="module")
def server(dev_ca: DevCA) -> Iterator[Server]:
    s = start_server(dev_ca)  # ca.json's defaults: 10 s for headers, 100 connections per address per process
    yield s
    s.stop()


def https_port(server: Server) -> int:
    return int(server.url.rsplit(":", 1)[1])


def half_sent_tls(server: Server, count: int) -> list[ssl.SSLSocket]:
    """`count` TLS connections from the attacker's address, handshake done, headers begun and never finished."""
    ctx = ssl.create_default_context(cafile=str(server.ca.root))
    held = []
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", https_port(server)), timeout=10, source_address=(ATTACKER, 0))
        try:
            tls = ctx.wrap_socket(raw, server_hostname="localhost")
        except (OSError, ssl.SSLError):  # refused past the per-address cap (a 503 after the handshake) is fine
            raw.close()
            continue
        tls.sendall(b"POST /1.0/sign HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/js")
        held.append(tls)
    return held


@pytest.mark.parametrize("holders", [8, 100])
def test_half_sent_tls_headers_do_not_stop_signing(server: Server, holders: int) -> None:
    body = sign_bodies(server, [f"honest-{holders}.internal"])[0]
    held = half_sent_tls(server, holders)
    try:
        assert len(held) >= min(holders, 100)  # the first 100 per worker are admitted: they hold what they can
        t0 = time.monotonic()
        resp = server.post("/1.0/sign", json=body)
        took = time.monotonic() - t0
        assert resp.status_code == 201, resp.text
        assert took < 2.0, f"a sign request took {took:.2f} s beside {holders} half-sent requests"
    finally:
        for sock in held:
            sock.close()


def test_trickling_plain_http_connections_do_not_stop_ocsp(server: Server, dev_ca: DevCA) -> None:
    (cert,) = issue_in_process(dev_ca, ["ocsp-victim.internal"])
    issuer = load_certificates(dev_ca.intermediate)[0]
    der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(Encoding.DER)
    host, port = server.http_url.removeprefix("http://").rsplit(":", 1)
    trickling = []
    try:
        for _ in range(2000):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind((ATTACKER, 0))
            sock.connect_ex((host, int(port)))
            trickling.append(sock)
        time.sleep(0.5)
        for sock in trickling:  # one byte each, as a trickle would: none of them completes its request line
            try:
                sock.send(b"G")
            except OSError:
                pass
        t0 = time.monotonic()
        resp = requests.post(f"{server.http_url}/ocsp", data=der,
                             headers={"Content-Type": "application/ocsp-request"}, timeout=10)
        took = time.monotonic() - t0
        assert resp.status_code == 200 and took < 2.0, (resp.status_code, took)
        answer = ocsp.load_der_ocsp_response(resp.content)
        assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert answer.serial_number == cert.serial_number
        metrics = parse(requests.get(f"{server.http_url}/metrics", timeout=10).text)
        assert value(metrics, "hsmca_connections_refused_total", listener="http", reason="per_address") > 0
    finally:
        for sock in trickling:
            sock.close()


def test_a_trickle_is_cut_at_the_header_deadline(server: Server) -> None:
    """One byte a second does not keep a TLS connection: past `headerTimeout` (10 s by default) it gets a 408."""
    ctx = ssl.create_default_context(cafile=str(server.ca.root))
    raw = socket.create_connection(("127.0.0.1", https_port(server)), timeout=30, source_address=(ATTACKER, 0))
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    t0 = time.monotonic()
    got = b""
    try:
        for byte in b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 40:
            tls.sendall(bytes([byte]))
            tls.settimeout(1.0)
            try:
                got = tls.recv(4096)
                break
            except TimeoutError:
                continue
    except OSError:
        pass
    took = time.monotonic() - t0
    assert got.startswith(b"HTTP/1.1 408 "), got
    assert 9 < took < 13, took
    tls.close()


def test_the_server_certificate_still_verifies(server: Server) -> None:
    """The listener's certificate is the one the CA issued itself (the TLS layer changed under it)."""
    ctx = ssl.create_default_context(cafile=str(server.ca.root))
    with socket.create_connection(("localhost", https_port(server)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as tls:
        cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
        assert tls.version() in ("TLSv1.2", "TLSv1.3")
    assert cert.issuer == load_certificates(server.ca.intermediate)[0].subject
