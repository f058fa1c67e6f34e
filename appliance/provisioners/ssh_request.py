"""The SSH certificate a provisioner grants, from step's `step.ssh` token claim and what `POST /1.0/ssh/sign` asked.

step-ca's rules (JWK, X5C): the token's `step.ssh` decides the type, key id and principals (default: a user
certificate for the token's subject); the request body must agree (its principals a subset of the token's, its
type and key id the same), and the validity is the body's or else the token's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from appliance.errors import BadRequest, Forbidden, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners.base import SSHSignCredential
from appliance.provisioners.request import AuditNote, IssuanceRequest, SSHOptions, Window
from appliance.provisioners.validity import parse_time_or_duration
from appliance.store import OneTimeToken


def _text_claim(opts: dict[str, Any], name: str) -> str:
    value = opts.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise Unauthorized(f"token claim step.ssh.{name} must be a string")
    return value


def _list_claim(opts: dict[str, Any], name: str) -> tuple[str, ...]:
    value = opts.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise Unauthorized(f"token claim step.ssh.{name} must be a list of names")
    return tuple(value)


def ssh_window(credential: SSHSignCredential, now: datetime, after: str = "", before: str = "") -> Window:
    return Window(not_before=parse_time_or_duration(credential.valid_after or after or None, now, "validAfter"),
                  not_after=parse_time_or_duration(credential.valid_before or before or None, now, "validBefore"))


def ssh_request(provisioner: str, credential: SSHSignCredential, *, cert_type: str, key_id: str,
                principals: tuple[str, ...], window: Window, token: OneTimeToken | None,
                claims: dict[str, Any], details: dict[str, Any] | None = None) -> IssuanceRequest:
    """One SSH issuance request (the pipeline's policy, lint and record decide the rest)."""
    kind: Literal["user", "host"] = "host" if cert_type == "host" else "user"
    return IssuanceRequest(
        provisioner=provisioner, common_name=key_id, names=RequestedNames(), public_key=credential.public_key,
        window=window, token=token,
        audit=AuditNote(subject=key_id, sans=tuple(f"principal:{p}" for p in principals),
                        details={"certType": kind, **(details or {})}),
        template_data={"token": dict(claims)},
        ssh=SSHOptions(cert_type=kind, key_id=key_id, principals=principals))


def from_step_claim(provisioner: str, credential: SSHSignCredential, claims: dict[str, Any], subject: str,
                    token: OneTimeToken, now: datetime, *, host_only: bool = False,
                    details: dict[str, Any] | None = None) -> IssuanceRequest:
    """The request a token with `step.ssh` grants (JWK, X5C); `host_only` for provisioners that vouch for hosts."""
    step = claims.get("step")
    opts = step.get("ssh") if isinstance(step, dict) else None
    if not isinstance(opts, dict):
        raise Unauthorized("the token is not an SSH token: it has no step.ssh claim (mint it for /1.0/ssh/sign)")
    cert_type = _text_claim(opts, "certType") or ("host" if host_only else "user")
    if cert_type not in ("user", "host"):
        raise BadRequest(f"step.ssh.certType must be 'user' or 'host', not {cert_type!r}")
    if host_only and cert_type != "host":
        raise Forbidden(f"provisioner {provisioner!r} signs SSH host certificates only")
    key_id = _text_claim(opts, "keyID") or subject
    principals = _list_claim(opts, "principals") or (subject,)
    if credential.cert_type and credential.cert_type != cert_type:
        raise Forbidden(f"certType {credential.cert_type!r} differs from the token's {cert_type!r}")
    if credential.key_id and credential.key_id not in (key_id, subject):
        raise Forbidden(f"keyID {credential.key_id!r} differs from the token's {key_id!r}")
    extra = [p for p in credential.principals if p not in principals]
    if extra:
        raise Forbidden(f"principals {extra} are not among the token's {list(principals)}")
    window = ssh_window(credential, now, _text_claim(opts, "validAfter"), _text_claim(opts, "validBefore"))
    return ssh_request(provisioner, credential, cert_type=cert_type, key_id=key_id,
                       principals=tuple(credential.principals) or principals, window=window, token=token,
                       claims=claims, details=details)
