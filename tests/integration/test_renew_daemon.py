"""Short-lived certificates kept alive: `hsmca renew --daemon`, and the server's own TLS certificate.

Both with 60-second certificates against a real `hsmca serve`: the daemon renews repeatedly, replaces
the file atomically under a reader that parses it continuously, runs its hook and rides out the CA
being stopped and started again on the same port; the server renews its listener's certificate while
a client keeps requesting over one keep-alive connection and over new ones, without a failure.
"""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from cryptography import x509

from tests.integration.conftest import HSMCA, DevCA, hsmca, make_ca, openssl_verify_chain, start_server, wait_for


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    ca = make_ca(tmp_path_factory.mktemp("ca"))

    def short_lived(cfg: dict[str, Any]) -> None:
        cfg["authority"]["claims"] = {"minTLSCertDuration": "30s"}
        cfg.setdefault("server", {})["tlsCertificateLifetime"] = "60s"

    ca.edit_config(short_lived)
    return ca


class Reader(threading.Thread):
    """Parses the certificate file as fast as it can; a torn or empty read is an error."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path, self.stop = path, threading.Event()
        self.reads, self.errors, self.serials = 0, [], []  # type: tuple[int, list[str], list[int]]

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                chain = x509.load_pem_x509_certificates(self.path.read_bytes())
                if len(chain) != 2:
                    raise ValueError(f"{len(chain)} certificates")
            except (OSError, ValueError) as exc:
                self.errors.append(str(exc))
                continue
            self.reads += 1
            if not self.serials or self.serials[-1] != chain[0].serial_number:
                self.serials.append(chain[0].serial_number)


def test_renew_daemon_survives_a_ca_restart(ca: DevCA, tmp_path: Path):
    started = time.monotonic()
    server = start_server(ca)
    crt, key = tmp_path / "svc.crt", tmp_path / "svc.key"
    hsmca(ca, "certificate", "svc.corp", str(crt), str(key), "--ca-url", server.url, "--root", str(ca.root),
          "--password-file", str(ca.password_file), "--not-after", "60s", "--force")
    key_before = key.read_bytes()
    hook_log, daemon_log = tmp_path / "hook.log", tmp_path / "daemon.log"
    reader = Reader(crt)
    reader.start()
    daemon = subprocess.Popen(
        [HSMCA, "renew", str(crt), str(key), "--daemon", "--ca-url", server.url, "--root", str(ca.root),
         "--exec", f"echo renewed >> {hook_log}"],
        env=ca.env(), stdout=daemon_log.open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: len(reader.serials) >= 2, 45, "the first renewal")
        port = urlsplit(server.url).port
        http_port = urlsplit(server.http_url).port
        server.stop()
        wait_for(lambda: "renewal failed" in daemon_log.read_text(), 45, "a renewal attempt while the CA is down")
        time.sleep(3)
        server = start_server(ca, port=port, http_port=http_port)
        wait_for(lambda: len(reader.serials) >= 3, 60, "a renewal after the CA came back")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            assert daemon.wait(timeout=15) == 0
        finally:
            reader.stop.set()
            reader.join(5)
            server.stop()
    log = daemon_log.read_text()
    assert not reader.errors, reader.errors[:5]
    assert reader.reads > 100
    assert log.count("renewed ") >= 2 and "renewal failed" in log, log
    assert len(hook_log.read_text().splitlines()) >= 2
    assert key.read_bytes() == key_before  # renewal keeps the key
    assert ": OK" in openssl_verify_chain(ca.root, crt)
    assert time.monotonic() - started < 180


def peer_serial(url: str, root: Path) -> int:
    """A new TLS connection; the serial of the certificate the server presents on it."""
    parts = urlsplit(url)
    ctx = ssl.create_default_context(cafile=str(root))
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=parts.hostname) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_server_certificate_is_renewed_without_dropping_connections(ca: DevCA):
    server = start_server(ca)
    parts = urlsplit(server.url)
    assert parts.hostname and parts.port
    keep_alive = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=10,
                                             context=ssl.create_default_context(cafile=str(ca.root)))
    try:
        seen: list[int] = []
        failures: list[str] = []
        local_ends: set[Any] = set()
        requests_done = 0
        deadline = time.monotonic() + 55  # 60 s certificates renew every ~20 s
        while time.monotonic() < deadline and len(set(seen)) < 3:
            try:
                keep_alive.request("GET", "/health")
                answer = keep_alive.getresponse()
                answer.read()
                assert answer.status == 200 and keep_alive.sock is not None
                local_ends.add(keep_alive.sock.getsockname())
                assert requests.get(f"{server.url}/version", verify=str(ca.root), timeout=10).status_code == 200
                seen.append(peer_serial(server.url, ca.root))
                requests_done += 2
            except (AssertionError, requests.RequestException, OSError, http.client.HTTPException) as exc:
                failures.append(repr(exc))
            time.sleep(0.1)
    finally:
        keep_alive.close()
        server.stop()
    assert not failures, failures[:5]
    assert len(set(seen)) >= 2, "the server's certificate was not renewed"
    assert len(local_ends) == 1, "the keep-alive connection was dropped and reopened"
    assert requests_done > 100
    assert "renewed the server's TLS certificate" in server.log()
