"""The certificate's validity window: decided from the request and the claims, then checked.

step-ca's rules: an unrequested notBefore is `now` backdated one minute (clock skew on relying
parties), an unrequested notAfter is the default duration after the requested notBefore (or after
`now`), and the duration checked against the claims ignores the backdate. Times are truncated to
whole seconds first, because X.509 cannot carry fractions (RFC 5280 4.1.2.5) and the checks must
judge exactly what the certificate will say.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from policy.config import Claims, check_durations
from policy.duration import format_duration

__all__ = ["BACKDATE", "DEFAULT_CLAIMS", "DEFAULT_SSH_CLAIMS", "CertKind", "Limit", "TlsLimits", "decide_validity",
           "merge_claims"]

BACKDATE = timedelta(minutes=1)
# step-ca's GlobalProvisionerClaims for TLS certificates.
DEFAULT_CLAIMS = {
    "minTLSCertDuration": timedelta(minutes=5),
    "maxTLSCertDuration": timedelta(hours=24),
    "defaultTLSCertDuration": timedelta(hours=24),
}


@dataclass(frozen=True)
class Limit:
    """A duration and where it came from, e.g. `authority claims.maxTLSCertDuration`."""

    value: timedelta
    origin: str


@dataclass(frozen=True)
class TlsLimits:
    minimum: Limit
    maximum: Limit
    default: Limit


# step-ca's defaults for SSH certificates (its GlobalProvisionerClaims).
DEFAULT_SSH_CLAIMS = {
    "minUserSSHCertDuration": timedelta(minutes=5),
    "maxUserSSHCertDuration": timedelta(hours=24),
    "defaultUserSSHCertDuration": timedelta(hours=16),
    "minHostSSHCertDuration": timedelta(minutes=5),
    "maxHostSSHCertDuration": timedelta(hours=1680),
    "defaultHostSSHCertDuration": timedelta(hours=720),
}
CertKind = Literal["TLSCert", "UserSSHCert", "HostSSHCert"]


def merge_claims(layers: list[tuple[str, Claims | None]], kind: CertKind = "TLSCert") -> TlsLimits:
    """Merge field by field, later layers winning; `layers` is [(label, claims)], outermost first. `kind` says
    which durations: TLS certificates' (the default) or SSH user or host certificates'.

    Raises ValueError naming the fields when the merged limits contradict each other.
    """
    names = (f"min{kind}Duration", f"max{kind}Duration", f"default{kind}Duration")
    defaults = {**DEFAULT_CLAIMS, **DEFAULT_SSH_CLAIMS}
    merged = {name: Limit(defaults[name], f"built-in default {name}") for name in names}
    for label, claims in layers:
        if claims is None:
            continue
        for name in names:
            value = getattr(claims, name)
            if value is not None:
                merged[name] = Limit(value, f"{label} claims.{name}")
    limits = TlsLimits(merged[names[0]], merged[names[1]], merged[names[2]])
    try:
        check_durations(
            {
                limits.minimum.origin: limits.minimum.value,
                limits.default.origin: limits.default.value,
                limits.maximum.origin: limits.maximum.value,
            }
        )
    except ValueError as exc:
        raise ValueError(f"merged claims are contradictory: {exc}") from None
    return limits


def _whole_seconds(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def decide_validity(
    limits: TlsLimits, now: datetime, not_before: datetime | None, not_after: datetime | None
) -> tuple[datetime, datetime, list[str]]:
    """Return (not_before, not_after, reasons); reasons is empty when the window is acceptable."""
    now = _whole_seconds(now)
    start = _whole_seconds(not_before) if not_before is not None else now
    decided_before = start if not_before is not None else start - BACKDATE
    decided_after = _whole_seconds(not_after) if not_after is not None else start + limits.default.value
    reasons: list[str] = []
    if decided_after <= decided_before:
        reasons.append(
            f"requested notAfter {decided_after.isoformat()} is not after notBefore {decided_before.isoformat()}"
        )
    else:
        duration = decided_after - start
        if duration < limits.minimum.value:
            reasons.append(
                f"requested validity {format_duration(duration)} is below the minimum "
                f"{format_duration(limits.minimum.value)} ({limits.minimum.origin})"
            )
        if duration > limits.maximum.value:
            reasons.append(
                f"requested validity {format_duration(duration)} exceeds the maximum "
                f"{format_duration(limits.maximum.value)} ({limits.maximum.origin})"
            )
    if decided_after <= now:
        reasons.append(f"requested notAfter {decided_after.isoformat()} is in the past (now is {now.isoformat()})")
    return decided_before, decided_after, reasons
