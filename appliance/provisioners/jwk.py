"""The JWK provisioner: a one-time JWT signed by the provisioner's key, checked as step-ca does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from appliance.errors import BadRequest, Forbidden, Unauthorized
from appliance.names import RequestedNames, split_sans
from appliance.provisioners import jose
from appliance.provisioners.base import (
    TOKEN_LEEWAY,
    SSHSignCredential,
    TokenCredential,
    TokenGrant,
    strip_port,
    token_audiences,
    token_times,
)
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest, SSHOptions, Window
from appliance.provisioners.validity import parse_time_or_duration
from appliance.store import OneTimeToken
from policy import Claims, PolicyConfig

TYPE = "JWK"
LEEWAY = TOKEN_LEEWAY
MAX_JTI_LENGTH = 256


def _audiences(claims: dict[str, Any]) -> list[str]:
    aud = token_audiences(claims)
    if aud is None:
        raise Unauthorized("token has no valid 'aud' claim")
    return aud


class JWKProvisioner:
    """A provisioner that holds a public JWK; the private half is the client's (or encrypted)."""

    type = TYPE

    def __init__(self, name: str, key: dict[str, Any], encrypted_key: str | None = None,
                 claims: Claims | None = None, policy: PolicyConfig | None = None):
        self.name = name
        self.key_dict = key
        self.key = jose.import_jwk(key)
        if self.key.is_private:
            raise jose.JOSEError(f"provisioner {name!r}: ca.json must hold the public key only")
        self._kid = str(key.get("kid") or self.key.thumbprint())
        self.encrypted_key = encrypted_key
        self.claims = claims
        self.policy = policy

    @property
    def key_id(self) -> str:
        return self._kid

    def verify_token(self, token: str, audiences: frozenset[str], now: datetime) -> TokenGrant:
        try:
            _, claims = jose.verify_token(token, self.key)
        except jose.JOSEError as exc:
            raise Unauthorized(f"provisioner {self.name!r}: {exc}") from None

        if claims.get("iss") != self.name:
            raise Unauthorized(f"token issuer (iss) must be the provisioner name {self.name!r}")
        expires, _, _ = token_times(claims, now)

        got = _audiences(claims)
        if not any(strip_port(a) in audiences for a in got):
            raise Unauthorized(f"token audience {got} is not this CA's endpoint for this request "
                               f"(expected one of {sorted(audiences)})")

        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("token subject (sub) cannot be empty")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > MAX_JTI_LENGTH:
            raise Unauthorized(f"token must carry a one-time id (jti) of 1 to {MAX_JTI_LENGTH} characters")
        sans = claims.get("sans") or [subject]
        if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans):
            raise Unauthorized("token claim 'sans' must be a list of names")
        return TokenGrant(provisioner=self.name, subject=subject, sans=tuple(sans),
                          token=OneTimeToken(jti, self.name, expires + LEEWAY), claims=claims)

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """The token's subject and SANs, the CSR's key, the window the client asked for."""
        if isinstance(credential, SSHSignCredential):
            return self._authorize_ssh(credential, now)
        if not isinstance(credential, TokenCredential):
            raise Unauthorized(f"provisioner {self.name!r} accepts one-time tokens only")
        grant = self.verify_token(credential.token, credential.audiences, now)
        names = split_sans(grant.sans)
        window = Window(not_before=parse_time_or_duration(credential.not_before, now, "notBefore"),
                        not_after=parse_time_or_duration(credential.not_after, now, "notAfter"))
        return IssuanceRequest(
            provisioner=self.name, common_name=grant.subject, names=names.with_common_name(grant.subject),
            public_key=credential.csr.public_key(), window=window, csr=credential.csr, csr_rule=CSRRule.TOKEN,
            csr_names=names, token=grant.token, audit=AuditNote(subject=grant.subject),
            template_data={"token": dict(grant.claims)})

    def _authorize_ssh(self, credential: SSHSignCredential, now: datetime) -> IssuanceRequest:
        """step-ca's JWK rules for SSH: the token's `step.ssh` decides the type, key id and principals (default: a
        user certificate for the subject); what the request body says must agree with it (its principals a subset
        of the token's), and its validity, if the token names one, must be the token's."""
        grant = self.verify_token(credential.token, credential.audiences, now)
        step = grant.claims.get("step")
        opts = step.get("ssh") if isinstance(step, dict) else None
        if not isinstance(opts, dict):
            raise Unauthorized("the token is not an SSH token: it has no step.ssh claim (mint it for /1.0/ssh/sign)")
        cert_type = _text_claim(opts, "certType") or "user"
        if cert_type not in ("user", "host"):
            raise BadRequest(f"step.ssh.certType must be 'user' or 'host', not {cert_type!r}")
        key_id = _text_claim(opts, "keyID") or grant.subject
        principals = _list_claim(opts, "principals") or (grant.subject,)
        if credential.cert_type and credential.cert_type != cert_type:
            raise Forbidden(f"certType {credential.cert_type!r} differs from the token's {cert_type!r}")
        if credential.key_id and credential.key_id not in (key_id, grant.subject):
            raise Forbidden(f"keyID {credential.key_id!r} differs from the token's {key_id!r}")
        extra = [p for p in credential.principals if p not in principals]
        if extra:
            raise Forbidden(f"principals {extra} are not among the token's {list(principals)}")
        window = Window(
            not_before=parse_time_or_duration(credential.valid_after or _text_claim(opts, "validAfter") or None,
                                              now, "validAfter"),
            not_after=parse_time_or_duration(credential.valid_before or _text_claim(opts, "validBefore") or None,
                                             now, "validBefore"))
        granted = tuple(credential.principals) or principals
        return IssuanceRequest(
            provisioner=self.name, common_name=key_id, names=RequestedNames(), public_key=credential.public_key,
            window=window, token=grant.token,
            audit=AuditNote(subject=key_id, sans=tuple(f"principal:{p}" for p in granted),
                            details={"certType": cert_type}),
            template_data={"token": dict(grant.claims)},
            ssh=SSHOptions(cert_type=cert_type, key_id=key_id, principals=granted))  # type: ignore[arg-type]

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name, "key": self.key_dict}
        if with_encrypted_key and self.encrypted_key:
            out["encryptedKey"] = self.encrypted_key
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out


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
