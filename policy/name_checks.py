"""One level's `x509` rules applied to the request's subjects.

Deny always wins, and every matching deny rule is reported. If the level has any allow rule, of
any name type, every subject must match an allow rule of its own type: a type without allow rules
is then denied outright (the safe default, as step-ca does). A level without allow rules allows
every name its deny rules do not deny.
"""

from __future__ import annotations

from policy.config import NameRules, X509Policy
from policy.subjects import Subject, quote

__all__ = ["name_reasons"]


def _denials(level: str, deny: NameRules, subject: Subject) -> list[str]:
    hits: list[str] = []
    if subject.dns is not None:
        rules = deny.dns if subject.kind == "dns" else deny.uris
        hits += [f"x509.deny.{subject.kind} {quote(r.source)}" for r in rules if r.touches(subject.dns)]
    if subject.ip_spellings:
        hits += [
            f"x509.deny.ips {quote(r.source)}"
            for r in deny.ips
            if any(r.matches(address) for address in subject.ip_spellings)
        ]
    if subject.mailbox is not None:
        hits += [
            f"x509.deny.emails {quote(r.source)}"
            for r in deny.emails
            if r.matches(subject.mailbox, fold_local_case=True)
        ]
    return [f"{level} {hit} denies {subject.shown}" for hit in hits]


def _allowed(allow: NameRules, subject: Subject) -> bool:
    if subject.kind == "dns":
        return subject.dns is not None and any(r.covers(subject.dns) for r in allow.dns)
    if subject.kind == "uris":
        return subject.dns is not None and any(r.covers(subject.dns) for r in allow.uris)
    if subject.kind == "ips":
        return subject.ip is not None and any(r.matches(subject.ip) for r in allow.ips)
    return subject.mailbox is not None and any(r.matches(subject.mailbox, fold_local_case=False) for r in allow.emails)


def name_reasons(level: str, policy: X509Policy, subjects: list[Subject]) -> list[str]:
    """Why `policy` (the `x509` object of the level called `level`) refuses the subjects."""
    reasons: list[str] = []
    restricted = not policy.allow.is_empty()
    for subject in subjects:
        reasons += _denials(level, policy.deny, subject)
        if subject.dns is not None and subject.dns.wildcard and not policy.allowWildcardNames:
            reasons.append(f"{level}: wildcard {subject.shown} is not allowed (x509.allowWildcardNames is false)")
        if restricted and not _allowed(policy.allow, subject):
            if getattr(policy.allow, subject.kind):
                reasons.append(f"{level}: {subject.shown} matches no x509.allow.{subject.kind} rule")
            else:
                reasons.append(
                    f"{level}: {subject.shown} is not allowed: x509.allow has rules, "
                    f"none of them in x509.allow.{subject.kind}"
                )
    return reasons
