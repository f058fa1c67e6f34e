"""The `policy` and `claims` objects of ca.json (step-ca's shape and camelCase names), validated.

Validation is strict so that a typo never silently weakens the policy: unknown fields, wrong JSON
types ("true" for true), malformed rules, bad durations and contradictory limits are all errors
whose location (e.g. `x509.allow.ips.0`) points at the offending value. Rules are parsed into
matchers here, once, with the same normalisation the engine applies to requested names.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, StrictBool, StrictInt, model_validator

from policy.duration import format_duration, parse_duration
from policy.rules import DnsRule, EmailRule, IpRule, parse_dns_rule, parse_email_rule, parse_ip_rule

__all__ = [
    "DEFAULT_KEY_TYPES",
    "DEFAULT_MAX_RSA_SIZE",
    "DEFAULT_MIN_RSA_SIZE",
    "Claims",
    "KeyPolicy",
    "KeyType",
    "NameRules",
    "PolicyConfig",
    "SSHHostNames",
    "SSHHostPolicy",
    "SSHPolicy",
    "SSHUserNames",
    "SSHUserPolicy",
    "X509Policy",
    "check_durations",
]

KeyType = Literal["EC-P256", "EC-P384", "EC-P521", "RSA", "RSA-2048", "RSA-3072", "RSA-4096", "Ed25519"]
DEFAULT_KEY_TYPES: tuple[KeyType, ...] = ("EC-P256", "EC-P384", "RSA", "Ed25519")
DEFAULT_MIN_RSA_SIZE = 2048
DEFAULT_MAX_RSA_SIZE = 8192
# NIST SP 800-131A: RSA below 2048 bits is disallowed for signatures; a hardened CA never allows it.
_RSA_FLOOR = 2048


def _source(rule: DnsRule | IpRule | EmailRule) -> str:
    return rule.source


def _duration(value: object) -> timedelta:
    """Only strings, as in ca.json; ValueError even for a wrong type, as pydantic reports no other."""
    if not isinstance(value, str):
        raise ValueError(f'must be a duration string like "24h", not {type(value).__name__}')  # noqa: TRY004
    return parse_duration(value)


DnsRuleField = Annotated[DnsRule, PlainValidator(parse_dns_rule), PlainSerializer(_source)]
IpRuleField = Annotated[IpRule, PlainValidator(parse_ip_rule), PlainSerializer(_source)]
EmailRuleField = Annotated[EmailRule, PlainValidator(parse_email_rule), PlainSerializer(_source)]
Duration = Annotated[timedelta, PlainValidator(_duration), PlainSerializer(format_duration)]

# Field names are ca.json's camelCase names, so a dump (by alias or not) writes step-ca's shape.
_STRICT = ConfigDict(extra="forbid", frozen=True)


class NameRules(BaseModel):
    """One `allow` or `deny` block. SSH principals and common names are not supported yet."""

    model_config = _STRICT

    dns: tuple[DnsRuleField, ...] = ()
    ips: tuple[IpRuleField, ...] = ()
    emails: tuple[EmailRuleField, ...] = ()
    uris: tuple[DnsRuleField, ...] = ()

    def is_empty(self) -> bool:
        return not (self.dns or self.ips or self.emails or self.uris)


class X509Policy(BaseModel):
    model_config = _STRICT

    allow: NameRules = NameRules()
    deny: NameRules = NameRules()
    allowWildcardNames: StrictBool = False


class KeyPolicy(BaseModel):
    """Subject key types; RSA sizes are bounded by min/max whichever RSA entry allowed the key."""

    model_config = _STRICT

    allow: tuple[KeyType, ...] = DEFAULT_KEY_TYPES
    minRSASize: StrictInt = DEFAULT_MIN_RSA_SIZE
    maxRSASize: StrictInt = DEFAULT_MAX_RSA_SIZE

    @model_validator(mode="after")
    def _consistent(self) -> KeyPolicy:
        if not self.allow:
            raise ValueError("keys.allow is empty, so no key could ever be accepted")
        if self.minRSASize < _RSA_FLOOR:
            raise ValueError(f"minRSASize {self.minRSASize} is below {_RSA_FLOOR}, which is not safe")
        if self.minRSASize > self.maxRSASize:
            raise ValueError(f"minRSASize {self.minRSASize} is greater than maxRSASize {self.maxRSASize}")
        for entry in self.allow:
            if entry.startswith("RSA-"):
                size = int(entry[4:])
                if not self.minRSASize <= size <= self.maxRSASize:
                    raise ValueError(
                        f"keys.allow has {entry}, outside minRSASize {self.minRSASize}..maxRSASize {self.maxRSASize}"
                    )
        return self


def _principal(value: object) -> str:
    """A principal rule: a name as written (exact match), or "*" for any."""
    if not isinstance(value, str) or not value or value != value.strip() or any(ord(c) < 33 for c in value):
        raise ValueError(f"a principal rule must be a non-empty name without spaces or control characters, "
                         f"not {value!r}")
    return value


PrincipalRule = Annotated[str, PlainValidator(_principal)]


class SSHUserNames(BaseModel):
    """step-ca's `policy.ssh.user.allow|deny`: e-mail principals (rules as x509's) and plain principals."""

    model_config = _STRICT

    email: tuple[EmailRuleField, ...] = ()
    principal: tuple[PrincipalRule, ...] = ()

    def is_empty(self) -> bool:
        return not (self.email or self.principal)


class SSHHostNames(BaseModel):
    """step-ca's `policy.ssh.host.allow|deny`: DNS and IP principals (rules as x509's) and plain principals."""

    model_config = _STRICT

    dns: tuple[DnsRuleField, ...] = ()
    ip: tuple[IpRuleField, ...] = ()
    principal: tuple[PrincipalRule, ...] = ()

    def is_empty(self) -> bool:
        return not (self.dns or self.ip or self.principal)


class SSHUserPolicy(BaseModel):
    model_config = _STRICT

    allow: SSHUserNames = SSHUserNames()
    deny: SSHUserNames = SSHUserNames()


class SSHHostPolicy(BaseModel):
    model_config = _STRICT

    allow: SSHHostNames = SSHHostNames()
    deny: SSHHostNames = SSHHostNames()


class SSHPolicy(BaseModel):
    """step-ca's `policy.ssh`: rules for the principals of user and of host certificates."""

    model_config = _STRICT

    user: SSHUserPolicy | None = None
    host: SSHHostPolicy | None = None


class PolicyConfig(BaseModel):
    """The `policy` object of the authority or of a provisioner. A missing part restricts nothing
    at a provisioner; at the authority the engine substitutes the defaults (see `policy.engine`)."""

    model_config = _STRICT

    x509: X509Policy | None = None
    ssh: SSHPolicy | None = None
    keys: KeyPolicy | None = None


class Claims(BaseModel):
    """The `claims` object (step-ca 0.19's fields). Only the TLS durations are enforced here; the
    others are validated so a step-ca ca.json loads, and are for the authority to act on."""

    model_config = _STRICT

    minTLSCertDuration: Duration | None = None
    maxTLSCertDuration: Duration | None = None
    defaultTLSCertDuration: Duration | None = None
    minUserSSHCertDuration: Duration | None = None
    maxUserSSHCertDuration: Duration | None = None
    defaultUserSSHCertDuration: Duration | None = None
    minHostSSHCertDuration: Duration | None = None
    maxHostSSHCertDuration: Duration | None = None
    defaultHostSSHCertDuration: Duration | None = None
    enableSSHCA: StrictBool | None = None
    disableRenewal: StrictBool | None = None
    allowRenewalAfterExpiry: StrictBool | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Claims:
        for kind in ("TLSCert", "UserSSHCert", "HostSSHCert"):
            names = (f"min{kind}Duration", f"default{kind}Duration", f"max{kind}Duration")
            check_durations({name: getattr(self, name) for name in names})
        return self


def check_durations(ordered: dict[str, timedelta | None]) -> None:
    """Each given duration is positive and they are in order (min <= default <= max).

    `ordered` maps names to values, smallest first. Called per claims object (on the values it
    sets) and again on the merged claims, since a provisioner's max may fall under the
    authority's min. All problems are reported in one ValueError.
    """
    present = [(name, value) for name, value in ordered.items() if value is not None]
    problems = [
        f"{name} must be greater than 0, not {format_duration(value)}"
        for name, value in present
        if value <= timedelta(0)
    ]
    for index, (low_name, low) in enumerate(present):
        for high_name, high in present[index + 1 :]:
            if low > high:
                problems.append(
                    f"{low_name} {format_duration(low)} is greater than {high_name} {format_duration(high)}"
                )
    if problems:
        raise ValueError("; ".join(problems))
