"""Subject alternative names as step-ca reads them from tokens, and comparisons with CSRs."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from policy import normalize_dns_name

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^urn:", re.I)


def _ip(value: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(value.strip("[]"))
    except ValueError:
        return None


@dataclass(frozen=True)
class RequestedNames:
    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()
    emails: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()

    @classmethod
    def from_general_names(cls, san: x509.SubjectAlternativeName) -> RequestedNames:
        return cls(dns=tuple(san.get_values_for_type(x509.DNSName)),
                   ips=tuple(san.get_values_for_type(x509.IPAddress)),  # type: ignore[arg-type]
                   emails=tuple(san.get_values_for_type(x509.RFC822Name)),
                   uris=tuple(san.get_values_for_type(x509.UniformResourceIdentifier)))

    def mismatch(self, asked: RequestedNames) -> str:
        """Empty when every type the CSR names equals the token's set (step-ca's rule)."""
        problems = []
        for label, want, got in (("DNS names", {d.lower().rstrip(".") for d in self.dns},
                                  {d.lower().rstrip(".") for d in asked.dns}),
                                 ("IP addresses", set(self.ips), set(asked.ips)),
                                 ("email addresses", set(self.emails), set(asked.emails)),
                                 ("URIs", set(self.uris), set(asked.uris))):
            if got and got != want:
                problems.append(f"{label}: got {sorted(map(str, got))}, token allows {sorted(map(str, want))}")
        return "; ".join(problems)

    def with_common_name(self, cn: str) -> RequestedNames:
        """RFC 5280 / BR: the common name must also be one of the SANs."""
        extra = split_sans([cn])
        return RequestedNames(
            dns=_merge(self.dns, extra.dns, key=str.lower), ips=_merge(self.ips, extra.ips),
            emails=_merge(self.emails, extra.emails), uris=_merge(self.uris, extra.uris))

    def canonical(self) -> RequestedNames:
        """The spelling that goes into the certificate: A-labels, lower case, IPv4 unmapped.

        Only called once policy allowed the names, so every DNS name normalises."""
        dns = tuple(dict.fromkeys(normalize_dns_name(d) for d in self.dns))
        ips = tuple(dict.fromkeys(_unmapped(i) for i in self.ips))
        return RequestedNames(dns, ips, self.emails, self.uris)

    def canonical_common_name(self, cn: str) -> str:
        """BR 7.1.4.3: the CN is byte for byte one of the SAN values."""
        ip = _ip(cn)
        if ip is not None:
            return str(_unmapped(ip))
        if _URI.match(cn) or "@" in cn:
            return cn
        try:
            return normalize_dns_name(cn)
        except ValueError:
            return cn

    def as_strings(self) -> list[str]:
        return ([f"dns:{d}" for d in self.dns] + [f"ip:{i}" for i in self.ips]
                + [f"email:{e}" for e in self.emails] + [f"uri:{u}" for u in self.uris])


def _unmapped(ip: IPAddress) -> IPAddress:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _merge(first: tuple[Any, ...], more: tuple[Any, ...],
           key: Callable[[Any], Any] = lambda v: v) -> tuple[Any, ...]:
    seen = {key(v) for v in first}
    return first + tuple(v for v in more if key(v) not in seen)


def split_sans(values: list[str] | tuple[str, ...]) -> RequestedNames:
    """IP if it parses as one, URI if it has a scheme, email if it has an @, else DNS."""
    dns: list[str] = []
    ips: list[IPAddress] = []
    emails: list[str] = []
    uris: list[str] = []
    for v in values:
        ip = _ip(v)
        if ip is not None:
            ips.append(ip)
        elif _URI.match(v):
            uris.append(v)
        elif "@" in v:
            emails.append(v)
        else:
            dns.append(v)
    return RequestedNames(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips)),
                          tuple(dict.fromkeys(emails)), tuple(dict.fromkeys(uris)))
