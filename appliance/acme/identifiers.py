"""Order identifiers: parsed, normalised, judged by the provisioner's policy, and given their challenge types.

An identifier is judged by the names part of the policy when the order is placed (the key is not known yet),
and again with the key at finalize, so an order the policy would refuse fails early with the reason, one
subproblem per identifier.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime

from appliance.acme.problems import Problem, Subproblem, from_subproblems
from policy import KeyInfo, Policy, Request, normalize_dns_name
from policy.engine import Level

MAX_IDENTIFIERS = 100
HTTP01, DNS01, TLSALPN01 = "http-01", "dns-01", "tls-alpn-01"
_FOR_DNS = (HTTP01, DNS01, TLSALPN01)
_FOR_IP = (HTTP01, TLSALPN01)  # RFC 8738: no dns-01 for an IP address
_ANY_KEY = KeyInfo("EC", 256, "P-256")  # judged by no one: the names-only policy has no key rules


@dataclass(frozen=True, order=True)
class Identifier:
    type: str  # "dns" | "ip"
    value: str  # as it will appear in the certificate; "*.example.com" for a wildcard

    @property
    def wildcard(self) -> bool:
        return self.type == "dns" and self.value.startswith("*.")

    @property
    def base(self) -> str:
        """What is validated: the name without "*.", or the address."""
        return self.value[2:] if self.wildcard else self.value

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}


def parse_identifiers(raw: object) -> list[Identifier]:
    """The `identifiers` of a newOrder payload, normalised and de-duplicated, in a stable order."""
    if not isinstance(raw, list) or not raw:
        raise Problem("malformed", "newOrder needs a non-empty list of identifiers")
    if len(raw) > MAX_IDENTIFIERS:
        raise Problem("rejectedIdentifier", f"an order may hold at most {MAX_IDENTIFIERS} identifiers")
    out: list[Identifier] = []
    bad: list[Subproblem] = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not isinstance(
                item.get("value"), str):
            raise Problem("malformed", "each identifier must be an object with string type and value")
        try:
            out.append(parse_identifier(item["type"], item["value"]))
        except Problem as exc:
            bad.append(Subproblem(exc.kind, exc.detail, {"type": item["type"], "value": item["value"][:255]}))
    if bad:
        raise from_subproblems(bad, "some identifiers cannot be ordered")
    return sorted(set(out))


def parse_identifier(kind: str, value: str) -> Identifier:
    if kind == "ip":
        try:
            address = ipaddress.ip_address(value)
        except ValueError:
            raise Problem("malformed", f"{value[:64]!r} is not an IP address") from None
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return Identifier("ip", str(address))
    if kind != "dns":
        raise Problem("unsupportedIdentifier", f"identifier type {kind[:32]!r} is not supported (dns or ip)")
    wildcard = value.startswith("*.")
    base = value[2:] if wildcard else value
    if "*" in base:
        raise Problem("rejectedIdentifier", "a wildcard may only be the whole leftmost label (*.example.com)")
    try:
        ipaddress.ip_address(base.strip("[]"))
    except ValueError:
        pass
    else:
        raise Problem("rejectedIdentifier", f"{value[:64]!r} is an IP address: order it as an ip identifier")
    try:
        normal = normalize_dns_name(base)
    except ValueError as exc:
        raise Problem("rejectedIdentifier", f"not a valid DNS name: {exc}") from None
    return Identifier("dns", f"*.{normal}" if wildcard else normal)


def challenge_types(ident: Identifier, offered: list[str], provisioner: str) -> list[str]:
    """The challenges that can prove `ident` here; rejectedIdentifier (saying why) when there are none."""
    if ident.wildcard:
        if DNS01 not in offered:
            raise Problem("rejectedIdentifier", f"wildcard names can only be validated with dns-01, and provisioner "
                          f"{provisioner!r} does not offer dns-01 (it offers {', '.join(offered) or 'nothing'})")
        return [DNS01]
    usable = [c for c in (_FOR_IP if ident.type == "ip" else _FOR_DNS) if c in offered]
    if not usable:
        raise Problem("rejectedIdentifier", f"no challenge type offered by provisioner {provisioner!r} "
                      f"({', '.join(offered) or 'none'}) can validate an {ident.type} identifier")
    return usable


def names_only(policy: Policy) -> Policy:
    """The policy without its key rules, to judge names before the key is known."""
    return Policy(tuple(Level(level.label, level.x509, None) for level in policy.levels), policy.limits)


def policy_subproblems(policy: Policy, idents: list[Identifier], now: datetime) -> list[Subproblem]:
    """One rejectedIdentifier per identifier the policy refuses, with the policy's reasons."""
    judge = names_only(policy)
    out = []
    for ident in idents:
        dns = (ident.value,) if ident.type == "dns" else ()
        ips = (ipaddress.ip_address(ident.value),) if ident.type == "ip" else ()
        decision = judge.evaluate(Request(dns_names=dns, ip_addresses=ips, key=_ANY_KEY, now=now))
        if not decision.allowed:
            out.append(Subproblem("rejectedIdentifier", "; ".join(decision.reasons), ident.as_dict()))
    return out


def check_order(policy: Policy, idents: list[Identifier], offered: list[str], provisioner: str,
                now: datetime) -> dict[Identifier, list[str]]:
    """Every identifier allowed and provable, else one problem listing each refusal."""
    bad: list[Subproblem] = policy_subproblems(policy, idents, now)
    refused = {(s.identifier["type"], s.identifier["value"]) for s in bad}
    out: dict[Identifier, list[str]] = {}
    for ident in idents:
        try:
            out[ident] = challenge_types(ident, offered, provisioner)
        except Problem as exc:
            if (ident.type, ident.value) not in refused:
                bad.append(Subproblem(exc.kind, exc.detail, ident.as_dict()))
    if bad:
        raise from_subproblems(bad, "the order cannot be accepted")
    return out
