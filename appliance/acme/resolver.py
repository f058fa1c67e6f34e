"""DNS look-ups for the ACME validation authority, through dnspython.

Kept apart from validation.py because every challenge needs it (addresses for http-01 and
tls-alpn-01, TXT for dns-01) and because it is where the operator's resolvers (`--resolver
HOST:PORT`) take effect. It raises `DNSProblem`; validation.py turns that into the ACME problem.
"""

from __future__ import annotations

import ipaddress

import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.reversename

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class DNSProblem(Exception):
    """A look-up that failed, with the ACME problem type it maps to ("dns" or "unauthorized")."""

    def __init__(self, problem: str, detail: str):
        super().__init__(detail)
        self.problem = problem
        self.detail = detail


def parse_resolver(text: str) -> tuple[str, int]:
    """Split `HOST:PORT` (`[v6]:PORT`, or a bare address for port 53); HOST must be an IP address.

    dnspython talks to name servers by address only, and a resolver found by name would need a
    resolver of its own, so a name is refused here rather than looked up.
    """
    host, port = text.strip(), "53"
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"resolver {text!r}: unclosed '['")
        host, rest = host[1:end], host[end + 1:]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"resolver {text!r} is not HOST:PORT")
            port = rest[1:]
    elif host.count(":") == 1:
        host, port = host.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"resolver {text!r}: {host!r} is not an IP address") from None
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"resolver {text!r}: bad port {port!r}")
    return str(address), int(port)


def make_resolver(resolvers: tuple[str, ...], timeout: float) -> dns.resolver.Resolver:
    """A resolver on the configured servers (or /etc/resolv.conf), bounded by `timeout` in total."""
    try:
        if resolvers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_resolver(r)) for r in resolvers]
        else:
            resolver = dns.resolver.Resolver()
    except ValueError as e:
        raise DNSProblem("dns", f"bad resolver setting: {e}") from None
    except dns.resolver.NoResolverConfiguration:
        raise DNSProblem("dns", "no DNS resolver is configured on this machine") from None
    resolver.timeout = timeout
    resolver.lifetime = timeout
    resolver.cache = None  # a validation must see the record as it is now, not as it was
    return resolver


def _query(resolver: dns.resolver.Resolver, name: str, rdtype: dns.rdatatype.RdataType,
           timeout: float) -> dns.resolver.Answer | None:
    """One query; None for "the name exists but has no such record"; DNSProblem for the rest."""
    try:
        return resolver.resolve(name, rdtype, lifetime=timeout, search=False)
    except dns.resolver.NXDOMAIN:
        raise DNSProblem("dns", f"DNS problem: NXDOMAIN looking up {rdtype.name} for {name}") from None
    except dns.resolver.NoAnswer:
        return None
    except dns.resolver.NoNameservers:
        raise DNSProblem("dns", f"DNS problem: SERVFAIL looking up {rdtype.name} for {name}") from None
    except dns.exception.Timeout:
        raise DNSProblem("dns", f"DNS problem: query timed out looking up {rdtype.name} for {name}") from None
    except dns.exception.DNSException as e:
        raise DNSProblem("dns", f"DNS problem looking up {rdtype.name} for {name}: {e}") from None


def resolve_addresses(resolver: dns.resolver.Resolver, name: str, timeout: float) -> list[IPAddress]:
    """Every AAAA then A address of `name` (IPv6 first, as Boulder tries them); never empty."""
    found: list[IPAddress] = []
    for rdtype in (dns.rdatatype.AAAA, dns.rdatatype.A):
        answer = _query(resolver, name, rdtype, timeout)
        if answer is not None:
            found.extend(ipaddress.ip_address(rr.address) for rr in answer)
    if not found:
        raise DNSProblem("dns", f"DNS problem: no valid A or AAAA records for {name}")
    return found


def lookup_txt(resolver: dns.resolver.Resolver, name: str, timeout: float) -> list[str]:
    """The TXT values at `name`, each record's character-strings joined (RFC 8555 §8.4)."""
    answer = _query(resolver, name, dns.rdatatype.TXT, timeout)
    if answer is None:
        return []
    return [b"".join(rr.strings).decode("utf-8", "replace") for rr in answer]


def reverse_name(address: IPAddress) -> str:
    """The ARPA reverse-mapping name without the trailing dot: tls-alpn-01's SNI for IPs (RFC 8738 §6)."""
    return str(dns.reversename.from_address(str(address)).to_text(omit_final_dot=True))


def check_dns_name(value: str) -> str:
    """The identifier as a lower-case name without trailing dot; ValueError when it is not one."""
    name = value.strip().rstrip(".").lower()
    if not name or len(name) > 253:
        raise ValueError(f"{value!r} is not a DNS name")
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        pass
    else:
        raise ValueError(f"{value!r} is an IP address, not a DNS name")
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException as e:
        raise ValueError(f"{value!r} is not a DNS name: {e}") from None
    labels = name.split(".")
    if labels[0] == "*":
        labels = labels[1:]
    for label in labels:
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-") or \
                not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            raise ValueError(f"{value!r} is not a DNS name (label {label!r})")
    return name
