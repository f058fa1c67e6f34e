"""`Policy.evaluate(Request) -> Decision`: the gate in front of every X.509 signature.

Pure and deterministic: no I/O, no clock (the caller passes `now`), reasons in a fixed order
(malformed names, then the authority level, then the provisioner level, then validity), each
reason once. Everything is evaluated, so a denial lists every rule that refused the request.

Two levels, both enforced: a request must satisfy the authority's `policy` and the provisioner's.
The authority level always applies, with the defaults where ca.json is silent (no name rules, no
wildcards, keys EC-P256/EC-P384/RSA 2048..8192/Ed25519); a provisioner's level restricts only what
its `policy` object says (an absent `x509` or `keys` adds no restriction). Claims are not
intersected but overridden field by field: built-in defaults < authority < provisioner.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal, TypeVar

from pydantic import BaseModel, ValidationError

from policy.config import Claims, KeyPolicy, PolicyConfig, SSHPolicy, X509Policy
from policy.keys import KeyInfo, key_reasons
from policy.name_checks import name_reasons
from policy.names import IPAddress
from policy.ssh_checks import classify, ssh_name_reasons
from policy.subjects import build_subjects, quote
from policy.validity import TlsLimits, decide_validity, merge_claims

__all__ = ["Decision", "Level", "Policy", "PolicyConfigError", "Request", "SSHRequest"]

_Model = TypeVar("_Model", bound=BaseModel)


class PolicyConfigError(ValueError):
    """ca.json's policy or claims are invalid; the message says where and what."""


@dataclass(frozen=True, kw_only=True)
class Request:
    """What a certificate would contain. Names include the CN; times are timezone-aware."""

    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()
    emails: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    key: KeyInfo
    not_before: datetime | None = None
    not_after: datetime | None = None
    now: datetime

    def __post_init__(self) -> None:
        # A programming error, not a policy decision: fail loudly rather than guess a time zone.
        for name in ("not_before", "not_after", "now"):
            moment = getattr(self, name)
            if moment is None:
                continue
            if not isinstance(moment, datetime) or moment.utcoffset() is None:
                raise ValueError(f"Request.{name} must be a timezone-aware datetime, not {moment!r}")
            object.__setattr__(self, name, moment.astimezone(UTC))
        for name in ("dns_names", "ip_addresses", "emails", "uris"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for address in self.ip_addresses:
            if not isinstance(address, IPAddress):
                raise TypeError(f"Request.ip_addresses must hold ipaddress objects, not {address!r}")


@dataclass(frozen=True)
class Decision:
    """`not_before`/`not_after` are the window the certificate must carry; set even on denial
    (so the audit record shows what was judged), but only meaningful when `allowed`."""

    allowed: bool
    reasons: tuple[str, ...]
    not_before: datetime
    not_after: datetime


@dataclass(frozen=True, kw_only=True)
class SSHRequest:
    """What an SSH certificate would contain; times are timezone-aware."""

    cert_type: Literal["user", "host"]
    principals: tuple[str, ...]
    key: KeyInfo
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    now: datetime


@dataclass(frozen=True)
class Level:
    """One level of rules; `None` parts restrict nothing."""

    label: str
    x509: X509Policy | None
    keys: KeyPolicy | None
    ssh: SSHPolicy | None = None


@dataclass(frozen=True)
class Policy:
    """Build with `from_config`; `Policy.from_config(None, None)` is the hardened default."""

    levels: tuple[Level, ...]
    limits: TlsLimits
    ssh_limits: Mapping[str, TlsLimits] = field(default_factory=dict)  # "user"/"host" → merged SSH claims

    @classmethod
    def from_config(
        cls,
        authority_policy: Mapping[str, object] | PolicyConfig | None,
        authority_claims: Mapping[str, object] | Claims | None,
        provisioner_name: str | None = None,
        provisioner_policy: Mapping[str, object] | PolicyConfig | None = None,
        provisioner_claims: Mapping[str, object] | Claims | None = None,
    ) -> Policy:
        """Build from ca.json objects (or models already validated from them).

        Raises PolicyConfigError naming the object and the field that is wrong.
        """
        provisioner = f"provisioner {quote(provisioner_name)}" if provisioner_name else "provisioner"
        authority_cfg = _load(PolicyConfig, authority_policy, "authority policy") or PolicyConfig()
        levels = [Level("authority policy", authority_cfg.x509 or X509Policy(), authority_cfg.keys or KeyPolicy(),
                        authority_cfg.ssh)]
        provisioner_cfg = _load(PolicyConfig, provisioner_policy, f"{provisioner} policy")
        if provisioner_cfg is not None:
            levels.append(Level(f"{provisioner} policy", provisioner_cfg.x509, provisioner_cfg.keys,
                                provisioner_cfg.ssh))
        claims = [
            ("authority", _load(Claims, authority_claims, "authority claims")),
            (provisioner, _load(Claims, provisioner_claims, f"{provisioner} claims")),
        ]
        try:
            limits = merge_claims(claims)
            ssh_limits = {"user": merge_claims(claims, "UserSSHCert"), "host": merge_claims(claims, "HostSSHCert")}
        except ValueError as exc:
            raise PolicyConfigError(str(exc)) from None
        return cls(tuple(levels), limits, ssh_limits)

    def evaluate(self, request: Request) -> Decision:
        """Judge `request` against every level and the claims; never raises for a bad name."""
        subjects, reasons = build_subjects(request.dns_names, request.ip_addresses, request.emails, request.uris)
        for level in self.levels:
            if level.x509 is not None:
                reasons += name_reasons(level.label, level.x509, subjects)
            if level.keys is not None:
                reasons += key_reasons(level.label, level.keys, request.key)
        not_before, not_after, window = decide_validity(self.limits, request.now, request.not_before, request.not_after)
        unique = tuple(dict.fromkeys(reasons + window))
        return Decision(allowed=not unique, reasons=unique, not_before=not_before, not_after=not_after)


    def evaluate_ssh(self, request: SSHRequest) -> Decision:
        """Judge an SSH certificate: its principals against every level's `ssh` rules, its key against `keys`,
        its validity against the SSH claims of its type (validAfter/validBefore as notBefore/notAfter)."""
        principals, reasons = classify(request.cert_type, request.principals)
        for level in self.levels:
            if level.ssh is not None:
                reasons += ssh_name_reasons(level.label, level.ssh, request.cert_type, principals)
            if level.keys is not None:
                reasons += key_reasons(level.label, level.keys, request.key)
        limits = self.ssh_limits.get(request.cert_type)
        if limits is None:
            limits = merge_claims([], "UserSSHCert" if request.cert_type == "user" else "HostSSHCert")
        after, before, window = decide_validity(limits, request.now, request.valid_after, request.valid_before)
        unique = tuple(dict.fromkeys(reasons + window))
        return Decision(allowed=not unique, reasons=unique, not_before=after, not_after=before)


def _load(model: type[_Model], data: Mapping[str, object] | _Model | None, where: str) -> _Model | None:
    if data is None or isinstance(data, model):
        return data
    if not isinstance(data, Mapping):
        raise PolicyConfigError(f"{where}: must be a JSON object, not {type(data).__name__}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(top level)'}: "
            + error["msg"].removeprefix("Value error, ")
            for error in exc.errors(include_url=False)
        )
        raise PolicyConfigError(f"{where}: {problems}") from exc
