"""The issuance policy engine: pure functions, no I/O, nothing imported from `appliance/`.

`Policy.from_config(...)` builds the rules from ca.json's `policy` and `claims` objects (authority
and provisioner); `Policy.evaluate(Request) -> Decision` judges one X.509 sign request.

Name semantics, at each level (authority, provisioner; a request must pass both):
- deny always wins; a deny rule denies a wildcard request if it could match any name it covers;
- if the level has any allow rule (of any type), every name must match an allow rule of its own
  type, so a type without allow rules is denied; without allow rules, all undenied names pass;
- DNS and URI-host rules: "host.corp" exactly, "*.corp" anything strictly under corp, any depth;
  an allow rule must cover every name a wildcard request could be; a wildcard request needs
  `allowWildcardNames` at that level;
- IPs: addresses or CIDR ranges; IPv4-mapped IPv6 is its IPv4 address (deny rules also see the
  IPv6 spelling); emails: "@domain" or exact "local@domain" (local part case-sensitive for allow,
  case-folded for deny);
- every name is normalised first (UTS #46, one trailing dot, IDNA 2008 A-labels, LDH), and one that
  cannot be, or a DNS name that is an IP literal, is denied (the IP is still judged by IP rules).
Details: `policy.names` (normalisation), `policy.rules` (matching), `policy.name_checks` (levels),
`policy.engine` (levels, claims), `policy.validity` (validity window).
"""

from policy.config import Claims, KeyPolicy, NameRules, PolicyConfig, X509Policy
from policy.duration import format_duration, parse_duration
from policy.engine import Decision, Policy, PolicyConfigError, Request, SSHRequest
from policy.keys import KeyInfo, key_info
from policy.names import normalize_dns_name

__all__ = [
    "Claims",
    "Decision",
    "KeyInfo",
    "KeyPolicy",
    "NameRules",
    "Policy",
    "PolicyConfig",
    "PolicyConfigError",
    "Request",
    "SSHRequest",
    "X509Policy",
    "format_duration",
    "key_info",
    "normalize_dns_name",
    "parse_duration",
]
