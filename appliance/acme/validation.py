"""The ACME validation authority (VA): does the applicant control the identifier? (RFC 8555 §8)

`validate()` runs one challenge (http-01, dns-01, tls-alpn-01; IP identifiers per RFC 8738) and
returns None, or raises `ValidationError` with an RFC 8555 problem type and a detail for the
person running the client. The protocol server calls it off the request path and retries.

Why these rules:
- The CA reaches out to addresses that an applicant chose, so every address it would contact
  (the identifier's, and every redirect target's) goes through the caller's `address_allowed`
  first, and the connection is made to that very address: no second DNS look-up can slip a
  forbidden one in (DNS rebinding).
- One deadline (`settings.timeout`) bounds the whole validation, redirects included, and a
  watchdog closes a socket whose peer drips bytes, so a validation never hangs a worker.

Problem types, so that clients and operators see a stable vocabulary:
  rejectedIdentifier  bad identifier, wrong challenge for it, or an address the policy forbids
  unsupportedIdentifier  not a "dns" or "ip" identifier;  malformed  unknown challenge, bad token
  dns          a look-up failed (NXDOMAIN, SERVFAIL, timeout, no address)
  connection   could not connect, timed out, bad redirect, broken HTTP
  tls          the TLS handshake failed, or acme-tls/1 was not negotiated
  unauthorized http-01 answered with a status other than 200; dns-01 TXT missing or wrong
  incorrectResponse  the answer arrived but is not the key authorization (body, certificate)
Nothing here logs a key authorization.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import dns.resolver
from cryptography import x509

from appliance.acme.resolver import (
    DNSProblem,
    IPAddress,
    check_dns_name,
    lookup_txt,
    make_resolver,
    resolve_addresses,
    reverse_name,
)
from appliance.certutil import read_extensions

log = logging.getLogger(__name__)

HTTP01, DNS01, TLSALPN01 = "http-01", "dns-01", "tls-alpn-01"
ACME_TLS_ALPN = "acme-tls/1"
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
MAX_BODY = 8192
MAX_REDIRECTS = 10
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,256}$")

AddressPolicy = Callable[[IPAddress], bool]


@dataclass(frozen=True)
class ValidationSettings:
    """Per ACME provisioner: where the VA connects and which resolvers it asks."""

    http01_port: int = 80
    tlsalpn01_port: int = 443
    resolvers: tuple[str, ...] = ()  # "HOST:PORT"; empty = the system's resolvers
    timeout: float = 10.0


class ValidationError(Exception):
    """A failed validation: `problem` is the ACME error type's suffix, `detail` says why."""

    problem: str
    detail: str

    def __init__(self, problem: str, detail: str):
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


@dataclass(frozen=True)
class _Identifier:
    type: str  # "dns" or "ip"
    value: str  # normalised: lower case, no trailing dot; an IP's canonical text
    ip: IPAddress | None

    @property
    def wildcard(self) -> bool:
        return self.value.startswith("*.")


class _Deadline:
    """The time left for the whole validation."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self, doing: str) -> float:
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise ValidationError("connection", f"Timeout after {self.seconds:g} s {doing}")
        return remaining

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self.end


class _Watchdog:
    """Shuts a socket down at the deadline: socket timeouts bound each read, not a dripping peer.

    It holds a duplicate of the descriptor: wrapping the socket in TLS detaches the original, and
    a duplicate can neither go stale nor, once closed here, hit a descriptor number reused elsewhere.
    """

    def __init__(self, deadline: _Deadline, sock: socket.socket):
        self._dup = sock.dup()
        self._timer = threading.Timer(max(deadline.end - time.monotonic(), 0.0), self._fire)
        self._timer.daemon = True

    def _fire(self) -> None:
        try:
            self._dup.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self._dup.close()


def validate(challenge_type: str, identifier_type: str, identifier_value: str, token: str,
             key_authorization: str, settings: ValidationSettings,
             address_allowed: Callable[[ipaddress.IPv4Address | ipaddress.IPv6Address], bool]) -> None:
    """Run one challenge; return None when it proves control, raise ValidationError otherwise."""
    started = time.monotonic()
    deadline = _Deadline(settings.timeout)
    try:
        ident = _parse_identifier(identifier_type, identifier_value)
        if challenge_type == HTTP01:
            _http01(ident, token, key_authorization, settings, address_allowed, deadline)
        elif challenge_type == DNS01:
            _dns01(ident, key_authorization, settings, deadline)
        elif challenge_type == TLSALPN01:
            _tlsalpn01(ident, key_authorization, settings, address_allowed, deadline)
        else:
            raise ValidationError("malformed", f"unknown challenge type {challenge_type!r}")
    except ValidationError as e:
        log.info("acme %s for %s:%s failed after %.0f ms: %s: %s", challenge_type, identifier_type,
                 identifier_value, (time.monotonic() - started) * 1000, e.problem, e.detail)
        raise
    log.info("acme %s for %s:%s valid in %.0f ms", challenge_type, identifier_type, identifier_value,
             (time.monotonic() - started) * 1000)


def _parse_identifier(identifier_type: str, value: str) -> _Identifier:
    if identifier_type == "dns":
        try:
            return _Identifier("dns", check_dns_name(value), None)
        except ValueError as e:
            raise ValidationError("rejectedIdentifier", str(e)) from None
    if identifier_type == "ip":
        try:
            ip = ipaddress.ip_address(value)
        except ValueError:
            raise ValidationError("rejectedIdentifier", f"{value!r} is not an IP address") from None
        return _Identifier("ip", str(ip), ip)
    raise ValidationError("unsupportedIdentifier", f"identifier type {identifier_type!r} is not supported")


def _resolver(settings: ValidationSettings, deadline: _Deadline) -> dns.resolver.Resolver:
    try:
        return make_resolver(settings.resolvers, deadline.left("before the DNS look-up"))
    except DNSProblem as e:
        raise ValidationError(e.problem, e.detail) from None


def _checked_addresses(host: str, ip: IPAddress | None, settings: ValidationSettings,
                       allowed: AddressPolicy, deadline: _Deadline) -> list[IPAddress]:
    """The addresses to contact for `host`, all of them allowed; none is contacted otherwise.

    A name with one forbidden address among allowed ones is refused outright: which address a
    client ends up on is not ours to predict, and a rebinding name would use exactly that mix.
    """
    if ip is not None:
        ip = _unmapped(ip)
        if not allowed(ip):
            raise ValidationError("rejectedIdentifier", f"{ip} is an address the policy forbids")
        return [ip]
    try:
        addresses = resolve_addresses(_resolver(settings, deadline), host, deadline.left(f"resolving {host}"))
    except DNSProblem as e:
        raise ValidationError(e.problem, e.detail) from None
    addresses = [_unmapped(a) for a in addresses]
    for address in addresses:
        if not allowed(address):
            raise ValidationError("rejectedIdentifier", f"{host} resolves to {address}, which the policy forbids")
    return addresses


def _unmapped(address: IPAddress) -> IPAddress:
    """::ffff:10.0.0.1 is 10.0.0.1 on a dual-stack host: the policy must judge the IPv4 address."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _connect(addresses: list[IPAddress], port: int, deadline: _Deadline, what: str) -> socket.socket:
    """A TCP connection to the first address that answers (IPv6 first), within the deadline."""
    last = ""
    for address in addresses:
        try:
            return socket.create_connection((str(address), port), timeout=deadline.left(f"connecting for {what}"))
        except TimeoutError:
            last = f"Timeout during connect to {_hostport(str(address), port)}"
        except OSError as e:
            last = f"{e.strerror or e} connecting to {_hostport(str(address), port)}"
    raise ValidationError("connection", f"{last} ({what})")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- http-01 (RFC 8555 §8.3, RFC 8738 §4) ---------------------------------------------------------


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) over a socket already connected to a policy-checked address.

    Why http.client and not requests: requests/urllib3 resolve the URL's host name themselves when
    they connect, which is a second look-up the policy check never saw. http.client sends over the
    socket we hand it (it connects only when `sock` is None), with the URL's host in `Host` and, for
    an https redirect, in SNI. Certificates are not verified: RFC 8555 §8.3 asks only for the body.
    """

    def __init__(self, sock: socket.socket, timeout: float):
        host, port = sock.getpeername()[:2]
        super().__init__(host, port, timeout=timeout)
        self.sock = sock

    def connect(self) -> None:  # never dial again: the socket is the checked one or nothing
        raise http.client.CannotSendRequest("connection already closed")


def _tls_client(alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if alpn:
        context.set_alpn_protocols(alpn)
    return context


def _http01(ident: _Identifier, token: str, key_authorization: str, settings: ValidationSettings,
            allowed: AddressPolicy, deadline: _Deadline) -> None:
    if ident.wildcard:
        raise ValidationError("rejectedIdentifier", f"http-01 cannot validate the wildcard {ident.value}; use dns-01")
    if not _TOKEN.match(token):
        raise ValidationError("malformed", "the challenge token is not base64url")
    host = f"[{ident.value}]" if ident.ip is not None and ident.ip.version == 6 else ident.value
    port = "" if settings.http01_port == 80 else f":{settings.http01_port}"
    url = first = f"http://{host}{port}/.well-known/acme-challenge/{token}"
    for hop in range(MAX_REDIRECTS + 1):
        status, location, body = _fetch(url, settings, allowed, deadline)
        if status in _REDIRECTS and location:
            if hop == MAX_REDIRECTS:
                raise ValidationError("connection", f"Too many redirects (more than {MAX_REDIRECTS}) fetching {first}")
            url = _redirect_target(url, location, settings)
            continue
        break
    if status != 200:
        raise ValidationError("unauthorized", f"Invalid response from {url}: HTTP {status}")
    if body.strip() != key_authorization.encode():
        raise ValidationError("incorrectResponse",
                              f"The key authorization file from {url} does not match: got {body[:64]!r}")


def _redirect_target(current: str, location: str, settings: ValidationSettings) -> str:
    """The absolute URL a redirect points to, if it keeps to http/https on the allowed ports."""
    target = urljoin(current, location.strip())
    parts = urlsplit(target)
    ports = {"http": {80, settings.http01_port}, "https": {443, settings.tlsalpn01_port}}
    if parts.scheme not in ports:
        raise ValidationError("connection", f"Redirect to {target!r}: only http and https are followed")
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError:
        raise ValidationError("connection", f"Redirect to {target!r}: bad port") from None
    if port not in ports[parts.scheme]:
        raise ValidationError("connection", f"Redirect to {target!r}: {parts.scheme} is followed only to ports "
                                            f"{', '.join(map(str, sorted(ports[parts.scheme])))}")
    if not parts.hostname:
        raise ValidationError("connection", f"Redirect to {target!r}: no host")
    return target


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _fetch(url: str, settings: ValidationSettings, allowed: AddressPolicy,
           deadline: _Deadline) -> tuple[int, str | None, bytes]:
    """GET `url` from a policy-checked address: (status, Location, at most MAX_BODY bytes of body)."""
    parts = urlsplit(url)
    https = parts.scheme == "https"
    hostname = parts.hostname or ""
    port = parts.port or (443 if https else 80)
    ip = _ip_literal(hostname)
    if ip is None:
        try:
            hostname = check_dns_name(hostname)
        except ValueError as e:
            raise ValidationError("connection", f"Cannot fetch {url}: {e}") from None
        if hostname.startswith("*."):
            raise ValidationError("connection", f"Cannot fetch {url}: a wildcard is not a host")
    addresses = _checked_addresses(hostname, ip, settings, allowed, deadline)
    sock = _connect(addresses, port, deadline, url)
    host_header = _hostport(hostname, port) if port != (443 if https else 80) else \
        (f"[{hostname}]" if ip is not None and ip.version == 6 else hostname)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        with _Watchdog(deadline, sock):
            if https:
                sock = _tls_client(["http/1.1"]).wrap_socket(sock, server_hostname=None if ip else hostname)
            conn = _PinnedConnection(sock, deadline.left(f"fetching {url}"))
            try:
                conn.request("GET", target, headers={"Host": host_header, "User-Agent": "hsmca-acme-va",
                                                     "Accept": "*/*", "Connection": "close"})
                response = conn.getresponse()
                if response.status in _REDIRECTS:
                    return response.status, response.getheader("Location"), b""
                body = response.read(MAX_BODY + 1)
            finally:
                conn.close()
            if deadline.expired:  # the watchdog cut the socket: what was read is not the whole answer
                raise TimeoutError
    except (OSError, http.client.HTTPException) as e:
        if deadline.expired or isinstance(e, TimeoutError):
            raise ValidationError("connection", f"Timeout after {settings.timeout:g} s fetching {url}") from None
        if isinstance(e, ssl.SSLError):
            raise ValidationError("tls", f"TLS error fetching {url}: {e.reason or e}") from None
        raise ValidationError("connection", f"Error fetching {url}: {e or type(e).__name__}") from None
    finally:
        sock.close()
    if len(body) > MAX_BODY:
        raise ValidationError("incorrectResponse", f"The response from {url} is larger than {MAX_BODY} bytes")
    return response.status, None, body


# --- dns-01 (RFC 8555 §8.4) ----------------------------------------------------------------------


def dns01_txt_value(key_authorization: str) -> str:
    """base64url(SHA-256(key authorization)) without padding: what the TXT record must hold."""
    digest = hashlib.sha256(key_authorization.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _dns01(ident: _Identifier, key_authorization: str, settings: ValidationSettings, deadline: _Deadline) -> None:
    if ident.ip is not None:
        raise ValidationError("rejectedIdentifier", "dns-01 cannot validate an IP address (RFC 8738 §7)")
    name = "_acme-challenge." + ident.value.removeprefix("*.")
    try:
        values = lookup_txt(_resolver(settings, deadline), name, deadline.left(f"looking up TXT for {name}"))
    except DNSProblem as e:
        raise ValidationError(e.problem, e.detail) from None
    if not values:
        raise ValidationError("unauthorized", f"No TXT record found at {name}")
    if dns01_txt_value(key_authorization) not in (v.strip() for v in values):
        found = ", ".join(repr(v[:64]) for v in values[:3])
        raise ValidationError("unauthorized", f"Incorrect TXT record {found} found at {name}")


# --- tls-alpn-01 (RFC 8737, RFC 8738 §6) ---------------------------------------------------------


def _tlsalpn01(ident: _Identifier, key_authorization: str, settings: ValidationSettings,
               allowed: AddressPolicy, deadline: _Deadline) -> None:
    if ident.wildcard:
        raise ValidationError("rejectedIdentifier",
                              f"tls-alpn-01 cannot validate the wildcard {ident.value}; use dns-01")
    addresses = _checked_addresses(ident.value, ident.ip, settings, allowed, deadline)
    sni = reverse_name(ident.ip) if ident.ip is not None else ident.value
    where = f"{ident.value} port {settings.tlsalpn01_port}"
    sock = _connect(addresses, settings.tlsalpn01_port, deadline, f"tls-alpn-01 on {where}")
    try:
        with _Watchdog(deadline, sock):
            with _tls_client([ACME_TLS_ALPN]).wrap_socket(sock, server_hostname=sni) as tls:
                alpn = tls.selected_alpn_protocol()
                der = tls.getpeercert(binary_form=True)
    except OSError as e:
        if deadline.expired or isinstance(e, TimeoutError):
            raise ValidationError("connection", f"Timeout after {settings.timeout:g} s during the TLS handshake "
                                                f"with {where}") from None
        if isinstance(e, ssl.SSLError):
            raise ValidationError("tls", f"TLS handshake with {where} failed: {e.reason or e}") from None
        raise ValidationError("connection", f"Error during the TLS handshake with {where}: {e}") from None
    finally:
        sock.close()
    if alpn != ACME_TLS_ALPN:
        raise ValidationError("tls", f"{where} did not negotiate the ALPN protocol {ACME_TLS_ALPN!r}")
    if not der:
        raise ValidationError("incorrectResponse", f"{where} sent no certificate")
    _check_acme_certificate(der, ident, key_authorization, where)


def _check_acme_certificate(der: bytes, ident: _Identifier, key_authorization: str, where: str) -> None:
    """RFC 8737 §3: one SAN, the identifier, and a critical acmeIdentifier of SHA-256(key authorization)."""
    def wrong(why: str) -> ValidationError:
        return ValidationError("incorrectResponse", f"Incorrect validation certificate from {where}: {why}")

    try:
        cert = x509.load_der_x509_certificate(der)
        san = read_extensions(cert).get_extension_for_class(x509.SubjectAlternativeName).value
        acme_id = read_extensions(cert).get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    except x509.ExtensionNotFound as e:
        raise wrong("no subjectAltName" if e.oid != ID_PE_ACME_IDENTIFIER else
                    "no acmeIdentifier extension (1.3.6.1.5.5.7.1.31)") from None
    except ValueError as e:
        raise wrong(f"cannot parse it: {e}") from None
    names = list(san)
    if ident.ip is not None:
        good = len(names) == 1 and isinstance(names[0], x509.IPAddress) and names[0].value == ident.ip
    else:
        good = len(names) == 1 and isinstance(names[0], x509.DNSName) and \
            names[0].value.lower().rstrip(".") == ident.value
    if not good:
        shown = ", ".join(str(n.value) for n in names[:5])
        raise wrong(f"its subjectAltName must be exactly {ident.value}, not [{shown}]")
    if not acme_id.critical:
        raise wrong("the acmeIdentifier extension is not critical")
    value = getattr(acme_id.value, "value", None)
    expected = b"\x04\x20" + hashlib.sha256(key_authorization.encode()).digest()  # DER OCTET STRING (32)
    if value != expected:
        raise wrong("the acmeIdentifier extension does not hold SHA-256 of the key authorization")
