"""Normalisation of DNS names, IP addresses, email addresses and URIs before any rule sees them.

Every name is reduced to one canonical spelling so that no other spelling slips past a deny rule:
UTS #46 mapping (case, full-width letters and dots, ignored code points), one trailing dot removed,
IDNA 2008 A-labels, LDH checked; an IPv4-mapped IPv6 address becomes its IPv4 address. A host
that is really an IP literal ("10.0.0.1", "[::1]", or a form that URL parsers and `inet_aton` read
as IPv4, like "0xa.0.0.1" or "167772161") is reported as that IP address so IP rules can judge it.
Anything that cannot be normalised carries an error and is denied by the engine.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna

__all__ = [
    "DnsName",
    "HostParse",
    "IPAddress",
    "Mailbox",
    "UriParse",
    "canonical_ip",
    "normalize_dns_name",
    "parse_host",
    "parse_mailbox",
    "parse_uri",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Bounds the work done on hostile input before IDNA; the encoded limit (253) is checked after.
_MAX_RAW_HOST = 1024
_LDH_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_PLAIN_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_PLAIN_HOST = re.compile(rf"(?:\*\.)?(?:{_PLAIN_LABEL}\.)*{_PLAIN_LABEL}\.?")
# WHATWG URL: a host whose last label is a number is parsed as IPv4, so it never names a DNS host.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_INET_ATON_CHARS = re.compile(r"[0-9a-fx.]+")
# RFC 5322 dot-atom (ASCII atext); quoted local parts and SMTPUTF8 mailboxes are not accepted.
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# RFC 3986 characters; anything else (spaces, backslashes, non-ASCII) parses differently in
# different URL parsers, which is exactly how a host slips past a rule.
_URI_CHARS = re.compile(r"(?:[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")


@dataclass(frozen=True)
class DnsName:
    """A normalised DNS name; `host` is the A-label form without the "*." of a wildcard."""

    host: str
    wildcard: bool = False

    def __str__(self) -> str:
        return f"*.{self.host}" if self.wildcard else self.host


@dataclass(frozen=True)
class HostParse:
    """What a host string turned out to be: a DNS name, an IP literal, or neither (`error`).

    `ip` is the address as written (see `canonical_ip`). It may be set together with `error` when
    the text is an IPv4 address in a spelling that is not an IP literal (such as "0xa.0.0.1"):
    malformed, but IP rules still get a say.
    """

    name: DnsName | None = None
    ip: IPAddress | None = None
    error: str | None = None


@dataclass(frozen=True)
class Mailbox:
    """A normalised email address: the local part as written, the domain in A-label form."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"


@dataclass(frozen=True)
class UriParse:
    """A URI's host: a DNS name, an IP address, or none; `error` when the URI is malformed."""

    name: DnsName | None = None
    ip: IPAddress | None = None
    error: str | None = None


def canonical_ip(address: IPAddress) -> IPAddress:
    """Map ::ffff:a.b.c.d to a.b.c.d and drop an IPv6 scope, so one address has one spelling."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.scope_id is not None:
            return ipaddress.IPv6Address(int(address))
    return address


def _ip_literal(text: str) -> IPAddress | None:
    """The address as written (not canonicalised: deny rules judge every spelling)."""
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(inner)
    except ValueError:
        return None


def parse_host(raw: str) -> HostParse:
    """Normalise a DNS name (optionally a "*." wildcard) or recognise it as an IP literal."""
    plain = _plain_host(raw) if isinstance(raw, str) else None
    return plain if plain is not None else _parse_host_idna(raw)


def _plain_host(raw: str) -> HostParse | None:
    """The parse of a lower-case letters-digits-hyphens name, None for anything else.

    Nearly every name a CA sees is one, and such a name is its own A-label: UTS 46 maps ASCII only by
    lower-casing and IDNA 2008 leaves these labels as they are, so they skip the idna package (about
    100 µs a name, several names a certificate). Labels with "--" in 3rd-4th place ("xn--"), numeric
    last labels and over-long names are left to the full path, which explains what is wrong with them.
    """
    if len(raw) > 254 or not _PLAIN_HOST.fullmatch(raw):
        return None
    base = raw.removesuffix(".")
    wildcard = base.startswith("*.")
    if wildcard:
        base = base[2:]
    labels = base.split(".")
    if len(base) > 253 or _NUMERIC_LABEL.fullmatch(labels[-1]) or any(label[2:4] == "--" for label in labels):
        return None
    return HostParse(name=DnsName(base, wildcard))


def _parse_host_idna(raw: str) -> HostParse:
    if not isinstance(raw, str) or not raw:
        return HostParse(error="empty name")
    if len(raw) > _MAX_RAW_HOST:
        return HostParse(error=f"name is too long ({len(raw)} characters)")
    try:
        mapped = idna.uts46_remap(raw, std3_rules=False, transitional=False)
    except (idna.IDNAError, UnicodeError) as exc:
        return HostParse(error=f"not a valid internationalised name ({exc})")
    mapped = mapped.removesuffix(".")
    ip = _ip_literal(mapped)
    if ip is not None:
        return HostParse(ip=ip)
    wildcard = mapped.startswith("*.")
    base = mapped[2:] if wildcard else mapped
    if "*" in base:
        return HostParse(error='"*" is only allowed as the whole leftmost label ("*.example.com")')
    labels = base.split(".")
    if any(not label for label in labels):
        return HostParse(error="empty label")
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        return HostParse(ip=_inet_aton(base), error="last label is numeric, so clients read it as an IPv4 address")
    try:
        encoded = idna.encode(base, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        return HostParse(error=f"not a valid IDNA 2008 name ({exc})")
    if len(encoded) > 253:
        return HostParse(error=f"name is longer than 253 characters ({len(encoded)})")
    for label in encoded.split("."):
        if len(label) > 63:
            return HostParse(error=f"label longer than 63 characters ({len(label)})")
        if not _LDH_LABEL.fullmatch(label):
            return HostParse(error=f"label {label!r} is not letters, digits and hyphens")
    return HostParse(name=DnsName(encoded, wildcard))


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address `inet_aton` (and so curl, ping, getaddrinfo) would read from `text`."""
    if not _INET_ATON_CHARS.fullmatch(text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def normalize_dns_name(name: str) -> str:
    """The canonical A-label spelling of a DNS name, raising ValueError when it is not one.

    For callers that write names into certificates: a dNSName must carry this form.
    """
    parsed = parse_host(name)
    if parsed.error is not None:
        raise ValueError(f"invalid DNS name {name!r}: {parsed.error}")
    if parsed.name is None:
        raise ValueError(f"invalid DNS name {name!r}: it is an IP address")
    return str(parsed.name)


def parse_mailbox(raw: str) -> Mailbox | str:
    """Normalise `local@domain`, or return why it is not an acceptable email address."""
    if not isinstance(raw, str) or raw.count("@") != 1:
        return "not of the form local@domain"
    local, domain = raw.split("@")
    if not local or len(local) > 64 or not _DOT_ATOM.fullmatch(local):
        return "local part is not an unquoted ASCII dot-atom of at most 64 characters"
    host = parse_host(domain)
    if host.error is not None or host.name is None:
        return f"domain is not a DNS name ({host.error or 'it is an IP address'})"
    if host.name.wildcard:
        return "domain must not be a wildcard"
    if len(local) + 1 + len(host.name.host) > 254:
        return "address is longer than 254 characters"
    return Mailbox(local, host.name.host)


def parse_uri(raw: str) -> UriParse:
    """Find and normalise the host of an absolute URI; `error` when the URI is malformed."""
    if not isinstance(raw, str) or not _URI_CHARS.fullmatch(raw):
        return UriParse(error="not an ASCII URI (RFC 3986 characters only)")
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as exc:
        return UriParse(error=f"malformed URI ({exc})")
    if not parts.scheme:
        return UriParse(error="not an absolute URI (no scheme)")
    hostname = parts.hostname
    if not hostname:
        return UriParse()
    if "%" in hostname:
        return UriParse(error="percent-encoded or zone-scoped host")
    if "[" in parts.netloc:
        # urlsplit removed the brackets; only an IPv6 literal may be written inside them.
        ip = _ip_literal(hostname) if ":" in hostname else None
        return UriParse(ip=ip) if ip is not None else UriParse(error="bracketed host is not an IPv6 address")
    host = parse_host(hostname)
    if host.error is not None:
        return UriParse(error=f"host is not valid: {host.error}")
    if host.ip is not None:
        return UriParse(ip=host.ip)
    if host.name is not None and host.name.wildcard:
        return UriParse(error="wildcards are only meaningful in DNS names, not URI hosts")
    return UriParse(name=host.name)
