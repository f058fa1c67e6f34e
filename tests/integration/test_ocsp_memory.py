"""The plain-HTTP listener's OCSP memory stays within `ocsp.memoryBytes` under a flood, over real sockets against
a real `hsmca serve`.

The attack that was measured: ~150,000 nonce-less OCSP requests for one good certificate, each with a different
unknown extension, sent as ~8 KB GETs, grew each listener process from 108 to 579 MiB (every request was
remembered under its DER and its GET path). Here the same flood, then 50,000 short GETs, each a different
%-encoding of the plain request, that the memory does remember (each path a key of its own) until its byte
bound evicts them. The listeners' RSS, read from /proc, must grow by less than memoryBytes plus MARGIN.
"""

from __future__ import annotations

import base64
import random
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp

from appliance.certutil import load_certificates
from tests.integration.conftest import DevCA, Server, children_of, cmdline, issue_through, make_ca, start_server

pytestmark = pytest.mark.slow

MIB = 1024 * 1024
MEMORY_BYTES = 4 * MIB
MARGIN = 16 * MIB  # the allocator's slack, the parser's buffers, the interpreter warming up
FLOOD = 150_000  # ~8 KB GETs, each with an unknown extension of its own
SPELLINGS = 50_000  # short GETs, each a %-encoding of the plain request no earlier one used
CONNECTIONS = 16
BATCH = 32  # requests written at once on a connection before its answers are read (pipelined)
UNKNOWN_OID = x509.ObjectIdentifier("1.3.6.1.4.1.55555.7")
VARYING = 12  # bytes of the extension's value that differ per request (16 base64 characters)
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    ca = make_ca(tmp_path_factory.mktemp("ocsp-memory-ca"))
    ca.edit_config(lambda c: c.setdefault("ocsp", {}).update(memoryBytes=MEMORY_BYTES))
    return ca


@pytest.fixture(scope="module")
def server(ca: DevCA) -> Iterator[Server]:
    s = start_server(ca, workers=1)
    yield s
    s.stop()


def listeners(server: Server) -> list[int]:
    return [p for p in children_of(server.proc.pid) if "appliance.serving.http " in cmdline(p) + " "]


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def padded_paths(cert: x509.Certificate, issuer: x509.Certificate) -> Iterator[str]:
    """GET targets of ~8 KB: a ~4 KB request whose unknown extension differs in VARYING bytes each time, its
    base64 partly %-encoded. Built by splicing base64 text (the varying bytes sit on a 3-byte boundary), so the
    client's cost per request stays far below the server's."""
    marker = b"\xee" * 16
    value = secrets.token_bytes(3900) + marker
    der = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
           .add_extension(x509.UnrecognizedExtension(UNKNOWN_OID, value), critical=False)
           .build().public_bytes(Encoding.DER))
    assert len(der) <= 4096  # the largest request the responder reads
    at = der.index(marker) + 3 - der.index(marker) % 3
    head = base64.b64encode(der[:at]).decode()
    tail = base64.b64encode(der[at + VARYING:]).decode()
    head = "".join(f"%{ord(ch):02X}" for ch in head[:1300]) + head[1300:]  # a client may %-encode any character
    prefix = "/ocsp/" + head
    while True:
        yield prefix + "".join(random.choices(B64, k=16)) + tail


def spelled_paths(cert: x509.Certificate, issuer: x509.Certificate) -> Iterator[str]:
    """Short GET targets, each a different %-encoding of the same plain request (random characters encoded)."""
    der = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1()).build().public_bytes(Encoding.DER)
    text = base64.b64encode(der).decode()
    seen: set[int] = set()
    while True:
        mask = random.getrandbits(len(text))
        if mask in seen:
            continue
        seen.add(mask)
        yield "/ocsp/" + "".join(f"%{ord(ch):02X}" if mask >> i & 1 else ch for i, ch in enumerate(text))


def read_answer(sock: socket.socket, buf: bytearray) -> tuple[bytes, bytes]:
    """One response's head and body from `buf` + the socket (what follows stays in `buf`)."""
    while (end := buf.find(b"\r\n\r\n")) < 0:
        chunk = sock.recv(262144)
        if not chunk:
            raise ConnectionError("closed before the response headers")
        buf += chunk
    head = bytes(buf[:end])
    at = head.lower().find(b"content-length: ") + 16
    length = int(head[at:head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
    while len(buf) < end + 4 + length:
        chunk = sock.recv(262144)
        if not chunk:
            raise ConnectionError("closed in the body")
        buf += chunk
    body = bytes(buf[end + 4:end + 4 + length])
    del buf[:end + 4 + length]
    return head, body


def flood(server: Server, paths: list[str]) -> dict[str, int]:
    """Send every path as a keep-alive, pipelined GET over CONNECTIONS connections; count the answers by their
    X-OCSP-Cache (and "bad": not 200, or not a successful response about a good certificate, in a sample)."""
    host, port = server.http_url.removeprefix("http://").split(":")
    counts: dict[str, int] = {}
    lock = threading.Lock()
    failures: list[BaseException] = []

    def one(share: list[str]) -> None:
        local: dict[str, int] = {}
        try:
            with socket.create_connection((host, int(port)), timeout=60) as sock:
                buf = bytearray()
                for start in range(0, len(share), BATCH):
                    batch = share[start:start + BATCH]
                    sock.sendall("".join(f"GET {p} HTTP/1.1\r\nHost: ca\r\n\r\n" for p in batch).encode())
                    for i in range(len(batch)):
                        head, body = read_answer(sock, buf)
                        source = head.split(b"X-OCSP-Cache: ", 1)[1].split(b"\r\n", 1)[0].decode() \
                            if b"X-OCSP-Cache: " in head else "none"
                        ok = head.startswith(b"HTTP/1.1 200 ")
                        if ok and (start + i) % 5000 == 0:
                            got = ocsp.load_der_ocsp_response(body)
                            ok = got.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL \
                                and got.certificate_status == ocsp.OCSPCertStatus.GOOD
                        key = source if ok else "bad"
                        local[key] = local.get(key, 0) + 1
        except BaseException as exc:  # reported by the caller
            failures.append(exc)
        with lock:
            for k, v in local.items():
                counts[k] = counts.get(k, 0) + v

    threads = [threading.Thread(target=one, args=(paths[i::CONNECTIONS],)) for i in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures
    return counts


def test_a_flood_of_distinct_requests_leaves_the_listeners_within_memory_bytes(server: Server, ca: DevCA) -> None:
    cert = load_certificates(issue_through(server, "flooded.example"))[0]
    issuer = load_certificates(ca.intermediate)[0]
    pids = listeners(server)
    assert len(pids) == 2, pids  # server.httpWorkers
    padded, spelled = padded_paths(cert, issuer), spelled_paths(cert, issuer)
    assert 7800 < len(next(padded)) < 8192  # ~8 KB, under the listener's request-line limit
    # Warm up both processes (new connections land on either): the CertID is remembered, the code paths run.
    warm = flood(server, [next(padded) for _ in range(2000)] + [next(spelled) for _ in range(200)])
    assert warm.get("bad", 0) == 0, warm
    before = {p: rss(p) for p in pids}

    started = time.monotonic()
    counts = flood(server, [next(padded) for _ in range(FLOOD)])
    counts_spelled = flood(server, [next(spelled) for _ in range(SPELLINGS)])
    took = time.monotonic() - started
    after = {p: rss(p) for p in pids}

    assert sum(counts.values()) == FLOOD and counts.get("bad", 0) == 0, counts
    assert counts.get("memory", 0) >= FLOOD - 100, counts  # answered from the CertID's entry
    assert sum(counts_spelled.values()) == SPELLINGS and counts_spelled.get("bad", 0) == 0, counts_spelled
    grown = {p: (after[p] - before[p]) / MIB for p in pids}
    print(f"\n{FLOOD} ~8 KB GETs + {SPELLINGS} spellings in {took:.1f} s; RSS before "
          f"{[round(before[p] / MIB) for p in pids]} MiB, grown by {[round(g, 1) for g in grown.values()]} MiB")
    for p in pids:
        assert after[p] - before[p] < MEMORY_BYTES + MARGIN, \
            f"listener {p} grew by {grown[p]:.0f} MiB (bound: {(MEMORY_BYTES + MARGIN) / MIB:.0f} MiB)"
