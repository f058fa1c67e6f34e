"""The one names value of a request: what a token or CSR asks for, what policy judges, what the issuer
writes into the certificate and what the audit record lists (`RequestedNames`)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509

from appliance.errors import BadRequest
from policy import KeyInfo, normalize_dns_name
from policy import Request as PolicyRequest
from policy.names import parse_mailbox, parse_uri

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
        """The spelling that goes into the certificate, which is the spelling policy judged.

        Spellings that name the same thing by the rules of DNS are written canonically: ASCII case and one
        trailing dot (RFC 4343), an IPv4-mapped IPv6 address. Any other difference between what was asked
        and its canonical form (full-width letters, U-labels, ignored code points) is refused with a 400
        naming the canonical spelling: the client must ask for what it will get.
        """
        dns = tuple(dict.fromkeys(canonical_dns(d) for d in self.dns))
        ips = tuple(dict.fromkeys(_unmapped(i) for i in self.ips))
        emails = tuple(dict.fromkeys(canonical_email(e) for e in self.emails))
        uris = tuple(dict.fromkeys(canonical_uri(u) for u in self.uris))
        return RequestedNames(dns, ips, emails, uris)

    def canonical_common_name(self, cn: str) -> str:
        """BR 7.1.4.3: the CN is byte for byte one of the SAN values (text that names nothing stays as is)."""
        ip = _ip(cn)
        if ip is not None:
            return str(_unmapped(ip))
        if _URI.match(cn):
            return canonical_uri(cn)
        if "@" in cn:
            return canonical_email(cn)
        try:
            normalize_dns_name(cn)
        except ValueError:
            return cn
        return canonical_dns(cn)

    def policy_request(self, key: KeyInfo, *, not_before: datetime | None, not_after: datetime | None,
                       now: datetime) -> PolicyRequest:
        """What policy judges: these names, the key and the window."""
        return PolicyRequest(dns_names=self.dns, ip_addresses=self.ips, emails=self.emails, uris=self.uris, key=key,
                             not_before=not_before, not_after=not_after, now=now)

    def comparable(self) -> set[str]:
        """The names as a set in which spellings of one DNS name compare equal (case)."""
        return {s.lower() if s.startswith("dns:") else s for s in self.as_strings()}

    def general_names(self) -> list[x509.GeneralName]:
        """The SubjectAlternativeName entries, in the order DNS, IP, email, URI."""
        names: list[x509.GeneralName] = [x509.DNSName(n) for n in self.dns]
        names += [x509.IPAddress(i) for i in self.ips]
        names += [x509.RFC822Name(e) for e in self.emails]
        names += [x509.UniformResourceIdentifier(u) for u in self.uris]
        return names

    def as_strings(self) -> list[str]:
        return ([f"dns:{d}" for d in self.dns] + [f"ip:{i}" for i in self.ips]
                + [f"email:{e}" for e in self.emails] + [f"uri:{u}" for u in self.uris])


def canonical_dns(name: str) -> str:
    """The A-label, lower-case, dot-less form of a DNS name that policy allowed (see `canonical`)."""
    try:
        canon = normalize_dns_name(name)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if canon != name.lower().removesuffix("."):
        raise BadRequest(f"DNS name {name!r} is not in canonical form; ask for {canon!r}")
    return canon


def canonical_email(address: str) -> str:
    """`local@domain` with the domain in canonical DNS form; the local part is written as asked."""
    parsed = parse_mailbox(address)
    if isinstance(parsed, str):
        raise BadRequest(f"email address {address!r}: {parsed}")
    canon = f"{parsed.local}@{parsed.domain}"
    if address.rpartition("@")[2].lower().removesuffix(".") != parsed.domain:
        raise BadRequest(f"email address {address!r} is not in canonical form; ask for {canon!r}")
    return canon


def canonical_uri(uri: str) -> str:
    """The URI as asked, but its host in canonical form (URIs are ASCII: only case and a trailing dot differ)."""
    parsed = parse_uri(uri)
    if parsed.error is not None:
        raise BadRequest(f"URI {uri!r}: {parsed.error}")
    parts = urlsplit(uri)
    if parsed.name is None or parts.hostname is None:
        return uri
    userinfo, at, hostport = parts.netloc.rpartition("@")
    host, colon, port = hostport.rpartition(":") if ":" in hostport else (hostport, "", "")
    netloc = f"{userinfo}{at}{parsed.name.host}{colon}{port}"
    return uri.replace(f"//{parts.netloc}", f"//{netloc}", 1)


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
