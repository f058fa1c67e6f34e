"""One level's `ssh` rules applied to an SSH certificate's principals (step-ca's `policy.ssh.user|host`).

The same semantics as x509's: deny always wins, and if the level's block for this certificate type has any
allow rule, every principal must match an allow rule of its own kind. A user principal with an "@" is an
e-mail (judged by `email` rules), any other a plain principal; a host principal that is an IP address is judged
by `ip` rules, a valid DNS name by `dns` rules, anything else by `principal` rules. A plain principal rule is
the name exactly, or "*" for any. A principal that cannot be read as its kind (a malformed e-mail) is denied.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal

from policy.config import SSHHostNames, SSHHostPolicy, SSHPolicy, SSHUserNames, SSHUserPolicy
from policy.names import DnsName, IPAddress, Mailbox, canonical_ip, parse_host, parse_mailbox
from policy.subjects import quote

__all__ = ["SSHPrincipal", "classify", "ssh_name_reasons"]

Kind = Literal["email", "dns", "ip", "principal"]


@dataclass(frozen=True)
class SSHPrincipal:
    kind: Kind
    raw: str
    mailbox: Mailbox | None = None
    dns: DnsName | None = None
    ip: IPAddress | None = None


def classify(cert_type: Literal["user", "host"], principals: tuple[str, ...]) -> tuple[list[SSHPrincipal], list[str]]:
    """The principals as the rules see them, and the reasons for those that are malformed."""
    out: list[SSHPrincipal] = []
    errors: list[str] = []
    for raw in principals:
        if cert_type == "user":
            if "@" in raw:
                mailbox = parse_mailbox(raw)
                if isinstance(mailbox, str):
                    errors.append(f"SSH principal {quote(raw)} is not a valid e-mail address: {mailbox}")
                else:
                    out.append(SSHPrincipal("email", raw, mailbox=mailbox))
            else:
                out.append(SSHPrincipal("principal", raw))
            continue
        try:
            out.append(SSHPrincipal("ip", raw, ip=canonical_ip(ipaddress.ip_address(raw))))
            continue
        except ValueError:
            pass
        host = parse_host(raw)
        if host.name is not None and host.error is None and host.ip is None and not host.name.wildcard:
            out.append(SSHPrincipal("dns", raw, dns=host.name))
        else:
            out.append(SSHPrincipal("principal", raw))
    return out, errors


def _matches(names: SSHUserNames | SSHHostNames, p: SSHPrincipal, *, deny: bool) -> list[str]:
    """The rules of `names` that `p` matches (their sources). A `principal` rule names any principal as written
    (so `web01` can be listed there although it is also a DNS name)."""
    hits = [f"principal {r}" for r in names.principal if r in ("*", p.raw)]
    if p.kind == "email" and isinstance(names, SSHUserNames) and p.mailbox is not None:
        hits += [f"email {r.source}" for r in names.email if r.matches(p.mailbox, fold_local_case=deny)]
    if p.kind == "dns" and isinstance(names, SSHHostNames) and p.dns is not None:
        hits += [f"dns {r.source}" for r in names.dns if (r.touches(p.dns) if deny else r.covers(p.dns))]
    if p.kind == "ip" and isinstance(names, SSHHostNames) and p.ip is not None:
        hits += [f"ip {r.source}" for r in names.ip if r.matches(p.ip)]
    return hits


def ssh_name_reasons(level: str, policy: SSHPolicy, cert_type: Literal["user", "host"],
                     principals: list[SSHPrincipal]) -> list[str]:
    """Why `policy` (the `ssh` object of the level called `level`) refuses these principals."""
    block: SSHUserPolicy | SSHHostPolicy | None = policy.user if cert_type == "user" else policy.host
    if block is None:
        return []
    reasons: list[str] = []
    restricted = not block.allow.is_empty()
    for p in principals:
        shown = f"{cert_type} principal {quote(p.raw)}"
        for hit in _matches(block.deny, p, deny=True):
            kind, _, rule = hit.partition(" ")
            reasons.append(f"{level} ssh.{cert_type}.deny.{kind} {quote(rule)} denies {shown}")
        if restricted and not _matches(block.allow, p, deny=False):
            reasons.append(f"{level}: {shown} matches no ssh.{cert_type}.allow.{p.kind} rule")
    return reasons
