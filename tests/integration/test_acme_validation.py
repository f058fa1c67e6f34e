"""The ACME validation authority against real loopback servers: HTTP, TLS with ALPN, DNS (dnslib).

Every challenge is run for real: names resolve through the test DNS server (acme_dns.py), the
http-01 server is http.server, the tls-alpn-01 server is Python's ssl with certificates built by
cryptography. A "forbidden" address is 127.0.0.2, where a server listens and counts visitors, so
the tests prove the policy check comes before any connection, not just that validation failed.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dns.message
import dns.query
import josepy
import pytest
from acme import challenges, standalone
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.acme.validation import (
    ID_PE_ACME_IDENTIFIER,
    ValidationError,
    ValidationSettings,
    dns01_txt_value,
    validate,
)
from tests.integration.acme_dns import HOOKS, AcmeDNS

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
KEY_AUTH = TOKEN + ".9jg46WB3rR_AHD-EBXdN7cBkH1WOu0tA3M9fm21mqTI"
FORBIDDEN = ipaddress.ip_address("127.0.0.2")


def allowed(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The policy of these tests: anything but 127.0.0.2."""
    return address != FORBIDDEN


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failure(challenge: str, ident_type: str, value: str, settings: ValidationSettings,
            token: str = TOKEN, key_auth: str = KEY_AUTH) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        validate(challenge, ident_type, value, token, key_auth, settings, allowed)
    return info.value


# --- the DNS server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def acme_dns() -> Iterator[AcmeDNS]:
    with AcmeDNS() as server:
        server.set_a("forbidden.test", "127.0.0.2")
        server.set_a("mixed.test", "127.0.0.1", "127.0.0.2")
        server.set_a("mapped.test", "::ffff:127.0.0.2")
        yield server


def test_dns_server_answers_over_udp_and_tcp(acme_dns: AcmeDNS) -> None:
    acme_dns.set_txt("_acme-challenge.proto.test", "v1")
    host, port = acme_dns.address.split(":")
    for send in (dns.query.udp, dns.query.tcp):
        a = send(dns.message.make_query("anything.example.", "A"), host, port=int(port), timeout=2)
        assert [rr.address for rr in a.answer[0]] == ["127.0.0.1"]
        aaaa = send(dns.message.make_query("anything.example.", "AAAA"), host, port=int(port), timeout=2)
        assert aaaa.answer == [] and aaaa.rcode() == 0
        txt = send(dns.message.make_query("_acme-challenge.proto.test.", "TXT"), host, port=int(port), timeout=2)
        assert [s for rr in txt.answer[0] for s in rr.strings] == [b"v1"]


# --- http-01 -------------------------------------------------------------------------------------


@dataclass
class HTTPRoutes:
    """What the test HTTP server answers per path, and every request it saw (path, Host)."""

    routes: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)
    seen: list[tuple[str, str]] = field(default_factory=list)
    delay: float = 0.0


def start_http(address: str, port: int, routes: HTTPRoutes,
               tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802
            routes.seen.append((self.path, self.headers.get("Host", "")))
            status, headers, body = routes.routes.get(self.path, (404, {}, b"not found"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if routes.delay:  # a peer that drips: headers now, the body never in time
                self.wfile.flush()
                time.sleep(routes.delay)
            self.wfile.write(body)

    server = ThreadingHTTPServer((address, port), Handler)
    server.daemon_threads = True
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def http_sites() -> Iterator[tuple[int, HTTPRoutes, HTTPRoutes]]:
    """The applicant's server on 127.0.0.1:P and a 'forbidden' one on 127.0.0.2:P (same port)."""
    for _ in range(20):
        port = free_port()
        good, bad = HTTPRoutes(), HTTPRoutes()
        try:
            servers = [start_http("127.0.0.1", port, good), start_http("127.0.0.2", port, bad)]
        except OSError:
            continue
        break
    else:
        raise RuntimeError("no port free on both 127.0.0.1 and 127.0.0.2")
    yield port, good, bad
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def site(http_sites: tuple[int, HTTPRoutes, HTTPRoutes], acme_dns: AcmeDNS
         ) -> Iterator[tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]]:
    port, good, bad = http_sites
    for routes in (good, bad):
        routes.routes.clear()
        routes.seen.clear()
        routes.delay = 0.0
    yield ValidationSettings(http01_port=port, resolvers=(acme_dns.address,), timeout=2.0), good, bad
    assert bad.seen == [], "the VA contacted an address the policy forbids"


CHALLENGE = f"/.well-known/acme-challenge/{TOKEN}"


def test_http01_valid(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (200, {}, KEY_AUTH.encode() + b"\r\n")
    validate("http-01", "dns", "www.test", TOKEN, KEY_AUTH, settings, allowed)
    assert good.seen == [(CHALLENGE, f"www.test:{settings.http01_port}")]


def test_http01_ip_identifier(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (200, {}, KEY_AUTH.encode())
    validate("http-01", "ip", "127.0.0.1", TOKEN, KEY_AUTH, settings, allowed)
    assert good.seen == [(CHALLENGE, f"127.0.0.1:{settings.http01_port}")]


def test_http01_follows_redirects_to_other_names(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    port = settings.http01_port
    good.routes[CHALLENGE] = (302, {"Location": f"http://other.test:{port}/elsewhere?x=1"}, b"")
    good.routes["/elsewhere?x=1"] = (301, {"Location": "/final"}, b"")
    good.routes["/final"] = (200, {}, KEY_AUTH.encode())
    validate("http-01", "dns", "www.test", TOKEN, KEY_AUTH, settings, allowed)
    assert good.seen == [(CHALLENGE, f"www.test:{port}"), ("/elsewhere?x=1", f"other.test:{port}"),
                         ("/final", f"other.test:{port}")]


def test_http01_redirect_to_https(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes], tmp_path: Path) -> None:
    """https targets are fetched without certificate verification (RFC 8555 §8.3), SNI = the name."""
    settings, good, _ = site
    https = HTTPRoutes(routes={"/final": (200, {}, KEY_AUTH.encode())})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*acme_cert(tmp_path, names=[x509.DNSName("unrelated.example")], with_extension=False))
    sni: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: sni.append(name)
    server = start_http("127.0.0.1", 0, https, tls=context)
    try:
        port = server.server_address[1]
        good.routes[CHALLENGE] = (302, {"Location": f"https://secure.test:{port}/final"}, b"")
        validate("http-01", "dns", "www.test", TOKEN, KEY_AUTH,
                 ValidationSettings(http01_port=settings.http01_port, tlsalpn01_port=port,
                                    resolvers=settings.resolvers, timeout=2), allowed)
        assert https.seen == [("/final", f"secure.test:{port}")] and sni == ["secure.test"]
    finally:
        server.shutdown()
        server.server_close()


def test_http01_redirect_loop(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (302, {"Location": CHALLENGE}, b"")
    e = failure("http-01", "dns", "www.test", settings)
    assert e.problem == "connection" and "Too many redirects" in e.detail
    assert len(good.seen) == 11


@pytest.mark.parametrize("location, why", [
    ("http://www.test:1/x", "followed only to ports"),
    ("ftp://www.test/x", "only http and https"),
    ("https://www.test:2/x", "followed only to ports"),
])
def test_http01_redirect_rules(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes], location: str,
                               why: str) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (307, {"Location": location}, b"")
    e = failure("http-01", "dns", "www.test", settings)
    assert (e.problem, why in e.detail) == ("connection", True), e.detail


def test_http01_redirect_to_forbidden_address(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (302, {"Location": f"http://forbidden.test:{settings.http01_port}/x"}, b"")
    e = failure("http-01", "dns", "www.test", settings)
    assert e.problem == "rejectedIdentifier"
    assert e.detail == "forbidden.test resolves to 127.0.0.2, which the policy forbids"
    good.routes[CHALLENGE] = (302, {"Location": f"http://127.0.0.2:{settings.http01_port}/x"}, b"")
    assert failure("http-01", "dns", "www.test", settings).problem == "rejectedIdentifier"


@pytest.mark.parametrize("value, ident_type, detail", [
    ("forbidden.test", "dns", "forbidden.test resolves to 127.0.0.2, which the policy forbids"),
    ("mixed.test", "dns", "mixed.test resolves to 127.0.0.2, which the policy forbids"),
    ("127.0.0.2", "ip", "127.0.0.2 is an address the policy forbids"),
    ("mapped.test", "dns", "mapped.test resolves to 127.0.0.2, which the policy forbids"),
    ("::ffff:127.0.0.2", "ip", "127.0.0.2 is an address the policy forbids"),
])
def test_http01_forbidden_address_is_never_contacted(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes],
                                                     value: str, ident_type: str, detail: str) -> None:
    settings, good, bad = site
    bad.routes[CHALLENGE] = (200, {}, KEY_AUTH.encode())
    e = failure("http-01", ident_type, value, settings)
    assert (e.problem, e.detail) == ("rejectedIdentifier", detail)
    assert good.seen == []  # and the fixture checks that 127.0.0.2 saw nothing


def test_http01_wrong_body(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (200, {}, b"not the key authorization")
    e = failure("http-01", "dns", "www.test", settings)
    assert e.problem == "incorrectResponse"
    assert "does not match" in e.detail and "not the key authorization" in e.detail


def test_http01_body_too_large(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (200, {}, KEY_AUTH.encode() + b" " * 9000)
    e = failure("http-01", "dns", "www.test", settings)
    assert e.problem == "incorrectResponse" and "larger than 8192 bytes" in e.detail


def test_http01_not_found(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, _, _ = site
    e = failure("http-01", "dns", "www.test", settings)
    assert e.problem == "unauthorized" and e.detail.endswith(f"{CHALLENGE}: HTTP 404")


def test_http01_slow_server_times_out(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    good.routes[CHALLENGE] = (200, {}, KEY_AUTH.encode())
    good.delay = 3.0
    started = time.monotonic()
    e = failure("http-01", "dns", "www.test", ValidationSettings(
        http01_port=settings.http01_port, resolvers=settings.resolvers, timeout=0.5))
    assert time.monotonic() - started < 2.5  # the peer would take 3 s
    assert e.problem == "connection" and "Timeout" in e.detail


def test_http01_connection_refused(acme_dns: AcmeDNS) -> None:
    settings = ValidationSettings(http01_port=free_port(), resolvers=(acme_dns.address,), timeout=2)
    e = failure("http-01", "dns", "www.test", settings)
    assert e.problem == "connection" and "refused" in e.detail.lower()


def test_http01_refuses_wildcards_and_bad_tokens(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes]) -> None:
    settings, good, _ = site
    assert failure("http-01", "dns", "*.www.test", settings).problem == "rejectedIdentifier"
    assert failure("http-01", "dns", "www.test", settings, token="../../etc").problem == "malformed"
    assert good.seen == []


def test_nxdomain_and_dead_resolver() -> None:
    with AcmeDNS(suffixes=("zone.test",)) as zone:
        settings = ValidationSettings(http01_port=free_port(), resolvers=(zone.address,), timeout=2)
        e = failure("http-01", "dns", "www.elsewhere.test", settings)
        assert e.problem == "dns" and "NXDOMAIN" in e.detail and "www.elsewhere.test" in e.detail
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        e = failure("dns-01", "dns", "www.test", ValidationSettings(resolvers=(dead,), timeout=0.5))
        assert time.monotonic() - started < 2.5
        assert e.problem == "dns" and "timed out" in e.detail


# --- dns-01 --------------------------------------------------------------------------------------


def test_dns01(acme_dns: AcmeDNS) -> None:
    settings = ValidationSettings(resolvers=(acme_dns.address,), timeout=2)
    acme_dns.set_txt("_acme-challenge.d.test", "some-other-value")
    acme_dns.set_txt("_acme-challenge.d.test", dns01_txt_value(KEY_AUTH))
    validate("dns-01", "dns", "d.test", TOKEN, KEY_AUTH, settings, allowed)
    validate("dns-01", "dns", "*.d.test", TOKEN, KEY_AUTH, settings, allowed)  # the base name's record
    acme_dns.clear_txt("_acme-challenge.d.test", dns01_txt_value(KEY_AUTH))
    e = failure("dns-01", "dns", "d.test", settings)
    assert (e.problem, e.detail) == (
        "unauthorized", "Incorrect TXT record 'some-other-value' found at _acme-challenge.d.test")
    acme_dns.clear_txt("_acme-challenge.d.test")
    e = failure("dns-01", "dns", "d.test", settings)
    assert (e.problem, e.detail) == ("unauthorized", "No TXT record found at _acme-challenge.d.test")
    assert failure("dns-01", "ip", "127.0.0.1", settings).problem == "rejectedIdentifier"


def test_dns01_value_is_base64url_sha256() -> None:
    digest = hashlib.sha256(KEY_AUTH.encode()).digest()
    value = dns01_txt_value(KEY_AUTH)
    assert len(value) == 43 and "=" not in value and "+" not in value and "/" not in value
    assert base64.urlsafe_b64decode(value + "=") == digest


# --- hook scripts for lego and certbot -----------------------------------------------------------


def run_hook(script: str, *args: str, env: dict[str, str]) -> None:
    subprocess.run([str(HOOKS / script), *args], env={**os.environ, **env}, check=True, timeout=10)


def test_lego_exec_hook(acme_dns: AcmeDNS) -> None:
    settings = ValidationSettings(resolvers=(acme_dns.address,), timeout=2)
    value = dns01_txt_value(KEY_AUTH)
    env = acme_dns.hook_env()
    run_hook("lego_exec.sh", "present", "_acme-challenge.lego.test.", value, "120", env=env)
    assert acme_dns.txt("_acme-challenge.lego.test") == [value]
    validate("dns-01", "dns", "lego.test", TOKEN, KEY_AUTH, settings, allowed)
    run_hook("lego_exec.sh", "cleanup", "_acme-challenge.lego.test.", value, env=env)
    assert failure("dns-01", "dns", "lego.test", settings).problem == "unauthorized"
    bad = subprocess.run([str(HOOKS / "lego_exec.sh"), "present", "x.test", 'a"b'], env={**os.environ, **env},
                         capture_output=True, timeout=10)
    assert bad.returncode == 2 and acme_dns.txt("x.test") == []


def test_certbot_hooks(acme_dns: AcmeDNS) -> None:
    settings = ValidationSettings(resolvers=(acme_dns.address,), timeout=2)
    value = dns01_txt_value(KEY_AUTH)
    env = {**acme_dns.hook_env(), "CERTBOT_DOMAIN": "*.cb.test", "CERTBOT_VALIDATION": value}
    run_hook("certbot_auth.sh", env=env)
    validate("dns-01", "dns", "*.cb.test", TOKEN, KEY_AUTH, settings, allowed)
    run_hook("certbot_cleanup.sh", env=env)
    assert acme_dns.txt("_acme-challenge.cb.test") == []


# --- tls-alpn-01 ---------------------------------------------------------------------------------


def acme_cert(tmp: Path, *, names: list[x509.GeneralName], digest: bytes | None = None,
              critical: bool = True, with_extension: bool = True) -> tuple[Path, Path]:
    """A self-signed tls-alpn-01 certificate (RFC 8737 §3), or a deliberately wrong one."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn")]))
               .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme-tls-alpn")]))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.SubjectAlternativeName(names), critical=False))
    if with_extension:
        value = digest if digest is not None else hashlib.sha256(KEY_AUTH.encode()).digest()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, b"\x04\x20" + value), critical=critical)
    cert = builder.sign(key, hashes.SHA256())
    tag = os.urandom(4).hex()
    cert_path, key_path = tmp / f"{tag}.crt", tmp / f"{tag}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class TLSServer:
    port: int
    sni: list[str | None]
    alpn: list[str | None]
    stop: Callable[[], None]


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Callable[..., TLSServer]]:
    """Starts TLS servers on 127.0.0.1 (and 127.0.0.2 for the forbidden case) with a given cert."""
    stops: list[Callable[[], None]] = []

    def start(cert: tuple[Path, Path], alpn: list[str] | None = None, address: str = "127.0.0.1",
              port: int = 0) -> TLSServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*cert)
        context.set_alpn_protocols(alpn if alpn is not None else ["acme-tls/1"])
        seen = TLSServer(0, [], [], lambda: None)
        context.sni_callback = lambda _sock, name, _ctx: seen.sni.append(name)
        listener = socket.create_server((address, port))
        listener.settimeout(0.2)
        running = threading.Event()
        running.set()

        def serve() -> None:
            while running.is_set():
                try:
                    conn, _ = listener.accept()
                except (TimeoutError, OSError):
                    continue
                try:
                    conn.settimeout(2)
                    with context.wrap_socket(conn, server_side=True) as tls:
                        seen.alpn.append(tls.selected_alpn_protocol())
                except (ssl.SSLError, OSError):
                    pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()

        def stop() -> None:
            running.clear()
            thread.join(2)
            listener.close()

        seen.port, seen.stop = int(listener.getsockname()[1]), stop
        stops.append(stop)
        return seen

    yield start
    for stop in stops:
        stop()


def tls_settings(acme_dns: AcmeDNS, port: int) -> ValidationSettings:
    return ValidationSettings(tlsalpn01_port=port, resolvers=(acme_dns.address,), timeout=2)


def test_tlsalpn01_valid_dns(tmp_path: Path, tls_server: Callable[..., TLSServer], acme_dns: AcmeDNS) -> None:
    server = tls_server(acme_cert(tmp_path, names=[x509.DNSName("alpn.test")]))
    validate("tls-alpn-01", "dns", "alpn.test", TOKEN, KEY_AUTH, tls_settings(acme_dns, server.port), allowed)
    for _ in range(100):  # the server thread notes the handshake a moment after the client is done
        if server.alpn:
            break
        time.sleep(0.02)
    assert server.sni == ["alpn.test"] and server.alpn == ["acme-tls/1"]


def test_tlsalpn01_valid_ip(tmp_path: Path, tls_server: Callable[..., TLSServer], acme_dns: AcmeDNS) -> None:
    ip = ipaddress.ip_address("127.0.0.1")
    server = tls_server(acme_cert(tmp_path, names=[x509.IPAddress(ip)]))
    validate("tls-alpn-01", "ip", "127.0.0.1", TOKEN, KEY_AUTH, tls_settings(acme_dns, server.port), allowed)
    assert server.sni == ["1.0.0.127.in-addr.arpa"]  # RFC 8738 §6


@pytest.mark.parametrize("kind, detail", [
    ("wrong-digest", "does not hold SHA-256 of the key authorization"),
    ("no-extension", "no acmeIdentifier extension"),
    ("not-critical", "not critical"),
    ("two-names", "must be exactly alpn.test, not [alpn.test, other.test]"),
    ("other-name", "must be exactly alpn.test, not [other.test]"),
])
def test_tlsalpn01_wrong_certificate(tmp_path: Path, tls_server: Callable[..., TLSServer], acme_dns: AcmeDNS,
                                     kind: str, detail: str) -> None:
    names: list[x509.GeneralName] = [x509.DNSName("alpn.test")]
    kw: dict[str, object] = {}
    if kind == "wrong-digest":
        kw["digest"] = hashlib.sha256(b"something else").digest()
    elif kind == "no-extension":
        kw["with_extension"] = False
    elif kind == "not-critical":
        kw["critical"] = False
    elif kind == "two-names":
        names.append(x509.DNSName("other.test"))
    else:
        names = [x509.DNSName("other.test")]
    server = tls_server(acme_cert(tmp_path, names=names, **kw))  # type: ignore[arg-type]
    e = failure("tls-alpn-01", "dns", "alpn.test", tls_settings(acme_dns, server.port))
    assert e.problem == "incorrectResponse" and detail in e.detail, e.detail


def test_tlsalpn01_without_alpn(tmp_path: Path, tls_server: Callable[..., TLSServer], acme_dns: AcmeDNS) -> None:
    server = tls_server(acme_cert(tmp_path, names=[x509.DNSName("alpn.test")]), alpn=["http/1.1"])
    e = failure("tls-alpn-01", "dns", "alpn.test", tls_settings(acme_dns, server.port))
    assert e.problem == "tls" and "did not negotiate the ALPN protocol 'acme-tls/1'" in e.detail


def test_tlsalpn01_forbidden_address_is_never_contacted(tmp_path: Path, tls_server: Callable[..., TLSServer],
                                                        acme_dns: AcmeDNS) -> None:
    cert = acme_cert(tmp_path, names=[x509.DNSName("forbidden.test")])
    server = tls_server(cert, address="127.0.0.2")
    e = failure("tls-alpn-01", "dns", "forbidden.test", tls_settings(acme_dns, server.port))
    assert (e.problem, e.detail) == ("rejectedIdentifier",
                                     "forbidden.test resolves to 127.0.0.2, which the policy forbids")
    assert failure("tls-alpn-01", "ip", "127.0.0.2", tls_settings(acme_dns, server.port)).problem == \
        "rejectedIdentifier"
    assert failure("tls-alpn-01", "dns", "*.alpn.test", tls_settings(acme_dns, server.port)).problem == \
        "rejectedIdentifier"
    time.sleep(0.3)  # one accept timeout of the server loop: a connection would have been handshaken
    assert server.sni == [] and server.alpn == []


def test_tlsalpn01_not_tls(site: tuple[ValidationSettings, HTTPRoutes, HTTPRoutes], acme_dns: AcmeDNS) -> None:
    settings, _, _ = site  # an HTTP server where TLS is expected
    e = failure("tls-alpn-01", "dns", "www.test", tls_settings(acme_dns, settings.http01_port))
    assert e.problem == "tls" and "TLS handshake with www.test port" in e.detail


def test_unknown_challenge_and_identifier(acme_dns: AcmeDNS) -> None:
    settings = ValidationSettings(resolvers=(acme_dns.address,), timeout=1)
    assert failure("http-02", "dns", "www.test", settings).problem == "malformed"
    assert failure("http-01", "email", "a@b.test", settings).problem == "unsupportedIdentifier"
    assert failure("http-01", "ip", "not-an-ip", settings).problem == "rejectedIdentifier"
    assert failure("http-01", "dns", "bad_name.test", settings).problem == "rejectedIdentifier"
    assert failure("http-01", "dns", "127.0.0.1", settings).problem == "rejectedIdentifier"


# --- interoperability with certbot's protocol library (acme) ------------------------------------


def test_certbot_standalone_http01_server_and_dns01_value(acme_dns: AcmeDNS) -> None:
    """certbot's own http-01 responder (what `certbot --standalone` runs) and its dns-01 value."""
    account = josepy.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    chall = challenges.HTTP01(token=os.urandom(32))
    response, key_authorization = chall.response_and_validation(account)
    resource = standalone.HTTP01RequestHandler.HTTP01Resource(chall=chall, response=response,
                                                              validation=key_authorization)
    server = standalone.HTTP01Server(("127.0.0.1", 0), {resource}, timeout=2)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        settings = ValidationSettings(http01_port=server.server_address[1], resolvers=(acme_dns.address,),
                                      timeout=2)
        validate("http-01", "dns", "certbot.test", chall.encode("token"), key_authorization, settings, allowed)
    finally:
        server.shutdown()
        server.server_close()
    dns_chall = challenges.DNS01(token=chall.token)
    assert dns01_txt_value(dns_chall.key_authorization(account)) == dns_chall.validation(account)


def test_tlsalpn01_silent_peer_times_out(acme_dns: AcmeDNS) -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # the kernel accepts; nobody ever speaks TLS
        settings = ValidationSettings(tlsalpn01_port=silent.getsockname()[1], resolvers=(acme_dns.address,),
                                      timeout=0.5)
        started = time.monotonic()
        e = failure("tls-alpn-01", "dns", "alpn.test", settings)
        assert time.monotonic() - started < 2.5
    assert e.problem == "connection" and "Timeout after 0.5 s during the TLS handshake" in e.detail
