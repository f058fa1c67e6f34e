"""The JWK provisioner: a one-time JWT signed by the provisioner's key, checked as step-ca does."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from appliance.errors import Unauthorized
from appliance.names import split_sans
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
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest, Window
from appliance.provisioners.ssh_request import from_step_claim
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
        """step-ca's JWK rules for SSH (appliance/provisioners/ssh_request.py)."""
        grant = self.verify_token(credential.token, credential.audiences, now)
        return from_step_claim(self.name, credential, dict(grant.claims), grant.subject, grant.token, now)

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name, "key": self.key_dict}
        if with_encrypted_key and self.encrypted_key:
            out["encryptedKey"] = self.encrypted_key
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out

