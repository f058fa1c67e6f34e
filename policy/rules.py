"""Name rules as written in ca.json, parsed once into matchers over normalised names.

DNS (and URI host) rules follow RFC 5280 name-constraint semantics: "host.corp" is that name only,
"*.corp" is every name strictly under "corp", at any depth. A wildcard *request* name "*.foo.corp"
stands for every "X.foo.corp" with X one label, which gives the two questions asked of a rule:
`covers` (allow: every name the request could stand for matches) and `touches` (deny: at least one
does). Each rule keeps its source text, so a reason quotes the rule as the operator wrote it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from policy.names import DnsName, IPAddress, Mailbox, canonical_ip, parse_host, parse_mailbox

# The parse_* functions raise ValueError even for a wrong type: pydantic reports only ValueError.
__all__ = ["DnsRule", "EmailRule", "IpRule", "parse_dns_rule", "parse_email_rule", "parse_ip_rule"]

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


@dataclass(frozen=True)
class DnsRule:
    """`base` in A-label form; `subtree` for "*.base" (names strictly under base)."""

    source: str
    base: str
    subtree: bool

    def _matches(self, host: str) -> bool:
        if self.subtree:
            return host.endswith("." + self.base)
        return host == self.base

    def covers(self, name: DnsName) -> bool:
        """Allow semantics: every name `name` could stand for matches this rule."""
        if not name.wildcard:
            return self._matches(name.host)
        return self.subtree and (name.host == self.base or name.host.endswith("." + self.base))

    def touches(self, name: DnsName) -> bool:
        """Deny semantics: at least one name `name` could stand for matches this rule."""
        if not name.wildcard:
            return self._matches(name.host)
        if self.subtree:
            return name.host == self.base or name.host.endswith("." + self.base)
        suffix = "." + name.host
        return self.base.endswith(suffix) and "." not in self.base[: -len(suffix)]


@dataclass(frozen=True)
class IpRule:
    """A network (a single address is a /32 or /128); IPv4-mapped IPv6 ranges are stored as IPv4."""

    source: str
    network: ipaddress.IPv4Network | ipaddress.IPv6Network

    def matches(self, address: IPAddress) -> bool:
        return address.version == self.network.version and address in self.network


@dataclass(frozen=True)
class EmailRule:
    """`local` None for "@domain" (any mailbox at exactly that domain)."""

    source: str
    local: str | None
    domain: str

    def matches(self, mailbox: Mailbox, *, fold_local_case: bool) -> bool:
        """Exact local parts compare case-sensitively (RFC 5321) unless `fold_local_case`.

        Deny rules fold case: mail systems almost all do, so "Alice@" must not slip past "alice@".
        """
        if mailbox.domain != self.domain:
            return False
        if self.local is None:
            return True
        if fold_local_case:
            return mailbox.local.lower() == self.local.lower()
        return mailbox.local == self.local


def parse_dns_rule(source: object) -> DnsRule:
    """Parse "host.corp" or "*.corp", normalised exactly as request names are."""
    if not isinstance(source, str):
        raise ValueError(f"a DNS rule must be a string, not {type(source).__name__}")  # noqa: TRY004
    if source.startswith("."):
        raise ValueError(f'DNS rule {source!r}: write "*{source}" for every name under {source[1:]!r}')
    parsed = parse_host(source)
    if parsed.ip is not None:
        raise ValueError(f'DNS rule {source!r} is an IP address: put it in "ips"')
    if parsed.error is not None or parsed.name is None:
        raise ValueError(f"DNS rule {source!r} is not a valid name: {parsed.error}")
    return DnsRule(source, parsed.name.host, parsed.name.wildcard)


def parse_ip_rule(source: object) -> IpRule:
    """Parse an address or CIDR range; host bits set in a range are an error, not truncated."""
    if not isinstance(source, str):
        raise ValueError(f"an IP rule must be a string, not {type(source).__name__}")  # noqa: TRY004
    if "%" in source:
        raise ValueError(f"IP rule {source!r}: scoped IPv6 addresses are not allowed")
    try:
        network = ipaddress.ip_network(source, strict=True)
    except ValueError as exc:
        raise ValueError(f"IP rule {source!r} is not an IP address or CIDR range: {exc}") from None
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_IPV4_MAPPED):
        mapped = canonical_ip(network.network_address)
        network = ipaddress.IPv4Network((int(mapped), network.prefixlen - 96))
    return IpRule(source, network)


def parse_email_rule(source: object) -> EmailRule:
    """Parse "@domain" or "local@domain"."""
    if not isinstance(source, str):
        raise ValueError(f"an email rule must be a string, not {type(source).__name__}")  # noqa: TRY004
    if source.startswith("@"):
        parsed = parse_mailbox("x" + source)
        if isinstance(parsed, str):
            raise ValueError(f"email rule {source!r} is not valid: {parsed}")
        return EmailRule(source, None, parsed.domain)
    if "@" not in source:
        raise ValueError(f'email rule {source!r}: write "@{source}" for every mailbox at that domain')
    parsed = parse_mailbox(source)
    if isinstance(parsed, str):
        raise ValueError(f"email rule {source!r} is not valid: {parsed}")  # noqa: TRY004
    return EmailRule(source, parsed.local, parsed.domain)
