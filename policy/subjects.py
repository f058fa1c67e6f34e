"""The names of a request, normalised once, as the subjects that each policy level then judges.

A name that cannot be normalised is denied here, whatever the levels say. A DNS name that is an IP
literal is denied as a DNS name and also becomes an IP subject, so IP rules judge it too; a URI
whose host is an IP address is judged by the IP deny rules (its host can never match a URI rule).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from policy.names import DnsName, IPAddress, Mailbox, canonical_ip, parse_host, parse_mailbox, parse_uri

__all__ = ["Subject", "build_subjects", "quote"]

Kind = Literal["dns", "ips", "emails", "uris"]


def quote(text: str) -> str:
    """Quote for a reason; escapes control, bidi and other non-ASCII characters so that a
    hostile name cannot forge or hide text in logs and the audit trail."""
    return json.dumps(text)


@dataclass(frozen=True)
class Subject:
    """One name to judge. `kind` is the ca.json rule list that governs it; `shown` names it.

    `ip` is canonical (IPv4-mapped IPv6 as IPv4) and is what allow rules see; `ip_spellings` adds
    the address as written, so that a deny rule written for either spelling still denies.
    """

    kind: Kind
    shown: str
    dns: DnsName | None = None
    ip: IPAddress | None = None
    ip_spellings: tuple[IPAddress, ...] = ()
    mailbox: Mailbox | None = None


def _shown(what: str, raw: str, normal: str) -> str:
    return f"{what} {quote(raw)}" if raw == normal else f"{what} {quote(raw)} (as {quote(normal)})"


def _spellings(address: IPAddress) -> tuple[IPAddress, IPAddress | None]:
    normal = canonical_ip(address)
    return normal, (address if address != normal else None)


def _ip_subject(kind: Kind, shown: str, address: IPAddress) -> Subject:
    normal, written = _spellings(address)
    spellings = (normal,) if written is None else (normal, written)
    return Subject(kind, shown, ip=normal, ip_spellings=spellings)


def build_subjects(
    dns_names: tuple[str, ...],
    ip_addresses: tuple[IPAddress, ...],
    emails: tuple[str, ...],
    uris: tuple[str, ...],
) -> tuple[list[Subject], list[str]]:
    """Return the subjects to judge and the reasons for names that are malformed."""
    subjects: list[Subject] = []
    errors: list[str] = []
    for raw in dns_names:
        host = parse_host(raw)
        if host.ip is not None:
            detail = f" ({host.error})" if host.error else ""
            errors.append(
                f"DNS name {quote(raw)} is invalid: it is an IP address{detail}, which belongs in the IP names"
            )
            normal = str(canonical_ip(host.ip))
            subjects.append(_ip_subject("ips", f"IP address {quote(normal)} written as DNS name {quote(raw)}", host.ip))
        elif host.error is not None or host.name is None:
            errors.append(f"DNS name {quote(raw)} is invalid: {host.error}")
        else:
            subjects.append(Subject("dns", _shown("DNS name", raw, str(host.name)), dns=host.name))
    for address in ip_addresses:
        subjects.append(_ip_subject("ips", _shown("IP address", str(address), str(canonical_ip(address))), address))
    for raw in emails:
        mailbox = parse_mailbox(raw)
        if isinstance(mailbox, str):
            errors.append(f"email address {quote(raw)} is invalid: {mailbox}")
        else:
            subjects.append(Subject("emails", _shown("email address", raw, str(mailbox)), mailbox=mailbox))
    for raw in uris:
        uri = parse_uri(raw)
        if uri.error is not None:
            errors.append(f"URI {quote(raw)} is invalid: {uri.error}")
        elif uri.name is not None:
            subjects.append(Subject("uris", f"URI {quote(raw)} (host {quote(str(uri.name))})", dns=uri.name))
        elif uri.ip is not None:
            shown = f"URI {quote(raw)} (host {quote(str(canonical_ip(uri.ip)))})"
            subjects.append(_ip_subject("uris", shown, uri.ip))
        else:
            subjects.append(Subject("uris", f"URI {quote(raw)} (no host)"))
    return subjects, errors
