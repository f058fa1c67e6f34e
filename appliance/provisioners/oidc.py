"""The OIDC provisioner (step-ca's): single sign-on, an ID token from an OpenID provider proves who asks.

The client runs the authorization-code flow with the provider (`hsmca certificate --provisioner NAME`) and sends
the ID token as the `ott` of `POST /1.0/sign`. The token names this provisioner by its audience (`aud`, or `azp`,
is the provisioner's `clientID`), as in step-ca. It must be signed by a key of the provider's published key set
(with that key's algorithm), come from the discovered issuer, be for `clientID` (and `azp`, when present, must be
`clientID` too; with several audiences it must be present), and be within its `exp`/`nbf`/`iat` (a minute of
leeway). It is spent once: its `nonce` (the client chose it) or, without one, its hash, as step-ca does.

Who may have what (step-ca's rules, stricter where step-ca trusts too much):
- `domains`: the e-mail must be in one of them (admins excepted); hsmca also refuses a token without an e-mail
  then, which step-ca lets through;
- `groups`: the `groups` claim must hold one of them;
- an e-mail the decision rests on must be `email_verified` (step-ca 0.19 does not check this);
- admins (`admins`, by e-mail) get the names their CSR asks for (step-ca's certificate-request template);
  others get the names step-ca derives: their e-mail, and the URI `<issuer>#<sub>`; the common name is the
  e-mail (step-ca puts `sub` there, which the lint refuses, as it is not one of the names).
Revocation with an ID token is not offered (step-ca lets admins revoke with one): use a JWK token or the
certificate itself.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from appliance.config import OIDCProvisionerConfig
from appliance.errors import Forbidden, Unauthorized
from appliance.names import RequestedNames, canonical_email
from appliance.provisioners import jose
from appliance.provisioners.base import (
    TOKEN_LEEWAY,
    SSHSignCredential,
    TokenCredential,
    csr_names,
    token_audiences,
    token_times,
)
from appliance.provisioners.oidc_keys import ProviderKeys
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest, Window
from appliance.provisioners.ssh_request import ssh_request, ssh_window
from appliance.provisioners.validity import parse_time_or_duration
from appliance.store import OneTimeToken
from policy import Claims, PolicyConfig

TYPE = "OIDC"
MAX_NONCE = 200  # the spent-token id holds it


def sanitize_email(email: str) -> str:
    """step-ca's comparison: the domain part is case-insensitive, the local part is not."""
    local, at, domain = email.rpartition("@")
    return f"{local}@{domain.lower()}" if at else email


def _issuer_uri(issuer: str, subject: str) -> str | None:
    """step-ca's `<issuer>#<sub>` URI name, when the issuer is a URL."""
    try:
        parts = urlsplit(issuer)
    except ValueError:
        return None
    if not parts.scheme or not parts.netloc:
        return None
    return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, subject))


class OIDCProvisioner:
    """ID tokens of one OpenID provider, issued to one client id."""

    type = TYPE

    def __init__(self, config: OIDCProvisionerConfig, keys: ProviderKeys | None = None) -> None:
        self.config = config
        self.name = config.name
        self.client_id = config.clientID
        self.claims: Claims | None = config.claims
        self.policy: PolicyConfig | None = config.policy
        self.admins = frozenset(sanitize_email(a) for a in config.admins)
        self.domains = tuple(d.lower() for d in config.domains)
        self.groups = frozenset(config.groups)
        self.provider = keys or ProviderKeys(config.configurationEndpoint, tenant_id=config.tenantID)

    @classmethod
    def from_config(cls, config: OIDCProvisionerConfig) -> OIDCProvisioner:
        return cls(config)

    @property
    def key_id(self) -> str:
        return self.client_id  # step-ca's id for an OIDC provisioner

    def claims_token(self, header: dict[str, Any], claims: dict[str, Any]) -> bool:
        """An ID token for this client: `azp` is the client id, or `aud` names it."""
        if claims.get("azp") is not None:
            return claims.get("azp") == self.client_id
        return self.client_id in (token_audiences(claims) or [])

    def is_admin(self, email: str) -> bool:
        return bool(email) and sanitize_email(email) in self.admins

    def verify(self, token: str, now: datetime) -> tuple[dict[str, Any], datetime]:
        """The ID token's claims and expiry once its signature, issuer, audience and times hold; Unauthorized
        saying why not."""
        try:
            header, _ = jose.peek(token)
        except jose.JOSEError as exc:
            raise Unauthorized(f"cannot parse the ID token: {exc}") from None
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise Unauthorized("the ID token's kid must be a string")
        claims: dict[str, Any] | None = None
        for candidate in self.provider.keys(kid):
            try:
                _, claims = jose.verify_token(token, candidate.key, list(candidate.algorithms))
                break
            except jose.JOSEError:
                continue
        if claims is None:
            raise Unauthorized(f"provisioner {self.name!r}: the ID token is not signed by a key the OpenID provider "
                               f"publishes (kid {kid!r}, alg {header.get('alg')!r})")
        issuer = self.provider.discovery().issuer
        if claims.get("iss") != issuer:
            raise Unauthorized(f"the ID token's issuer {claims.get('iss')!r} is not the provider's {issuer!r}")
        audiences = token_audiences(claims)
        if not audiences or self.client_id not in audiences:
            raise Unauthorized(f"the ID token is for {audiences}, not for client id {self.client_id!r}")
        azp = claims.get("azp")
        if azp is not None and azp != self.client_id:
            raise Unauthorized(f"the ID token's authorized party (azp) {azp!r} is not {self.client_id!r}")
        if azp is None and len(audiences) > 1:
            raise Unauthorized("an ID token with several audiences must name its authorized party (azp)")
        if claims.get("iat") is None:
            raise Unauthorized("the ID token has no 'iat' claim")
        expires, _, _ = token_times(claims, now)
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("the ID token's subject (sub) cannot be empty")
        return claims, expires

    def _email(self, claims: dict[str, Any]) -> str:
        """The verified e-mail, canonical; '' without one. Unauthorized for an e-mail the provider did not verify."""
        email = claims.get("email")
        if email is None or email == "":
            return ""
        if not isinstance(email, str) or email.count("@") != 1:
            raise Unauthorized("the ID token's email claim is not an e-mail address")
        if claims.get("email_verified") is not True:
            raise Unauthorized(f"the OpenID provider has not verified the e-mail address {email!r} "
                               "(email_verified is not true)")
        return sanitize_email(email)

    def _allowed(self, claims: dict[str, Any], email: str, admin: bool) -> None:
        if self.domains and not admin:
            if not email:
                raise Unauthorized(f"provisioner {self.name!r} allows e-mail domains {list(self.domains)}; the ID "
                                   "token has no e-mail")
            if not any(email.endswith("@" + d) for d in self.domains):
                raise Unauthorized(f"the e-mail {email!r} is not in the allowed domains {list(self.domains)}")
        if self.groups:
            groups = claims.get("groups")
            have = {g for g in groups if isinstance(g, str)} if isinstance(groups, list) else set()
            if not have & self.groups:
                raise Unauthorized(f"the ID token's groups {sorted(have)} hold none of the allowed groups "
                                   f"{sorted(self.groups)}")

    def _authorize_ssh(self, credential: SSHSignCredential, now: datetime) -> IssuanceRequest:
        """step-ca's: a user certificate for the e-mail's local part and the e-mail; admins may ask for any
        principals and for host certificates."""
        claims, expires = self.verify(credential.token, now)
        email = self._email(claims)
        admin = self.is_admin(email)
        self._allowed(claims, email, admin)
        if not email:
            raise Unauthorized("an SSH certificate from an ID token needs the token's e-mail")
        names = (ssh_username(email), email)
        cert_type = credential.cert_type or "user"
        if not admin:
            if cert_type != "user":
                raise Forbidden("only the provisioner's admins may ask for SSH host certificates")
            extra = [p for p in credential.principals if p not in names]
            if extra:
                raise Forbidden(f"principals {extra} are not among those this ID token grants {list(names)}")
        return ssh_request(self.name, credential, cert_type=cert_type, key_id=email,
                           principals=tuple(credential.principals) or names, window=ssh_window(credential, now),
                           token=OneTimeToken(_spent(claims, credential.token), self.name, expires + TOKEN_LEEWAY),
                           claims=claims, details={"oidcIssuer": claims["iss"], "admin": admin})

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """The names step-ca derives from the e-mail (an admin: the CSR's), for the token's user."""
        if isinstance(credential, SSHSignCredential):
            return self._authorize_ssh(credential, now)
        if not isinstance(credential, TokenCredential):
            raise Unauthorized(f"provisioner {self.name!r} accepts OpenID Connect ID tokens only")
        claims, expires = self.verify(credential.token, now)
        email = self._email(claims)
        admin = self.is_admin(email)
        self._allowed(claims, email, admin)
        spent = _spent(claims, credential.token)
        window = Window(not_before=parse_time_or_duration(credential.not_before, now, "notBefore"),
                        not_after=parse_time_or_duration(credential.not_after, now, "notAfter"))
        subject, issuer = str(claims["sub"]), str(claims["iss"])
        if admin:
            common_name, names = csr_names(credential.csr)
            rule = CSRRule.NONE
        else:
            uri = _issuer_uri(issuer, subject)
            names = RequestedNames(emails=(email,) if email else (), uris=(uri,) if uri else ())
            if not names.as_strings():
                raise Unauthorized("the ID token carries no e-mail and its issuer is not a URL: there is no name "
                                   "to certify")
            common_name, rule = canonical_email(email) if email else "", CSRRule.TOKEN
        return IssuanceRequest(
            provisioner=self.name, common_name=common_name, names=names, public_key=credential.csr.public_key(),
            window=window, csr=credential.csr, csr_rule=rule,
            token=OneTimeToken(spent, self.name, expires + TOKEN_LEEWAY),
            audit=AuditNote(subject=email or subject,
                            details={"oidcIssuer": issuer, "oidcSubject": subject, "admin": admin}),
            template_data={"token": dict(claims)})

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        """As step-ca lists it, client secret included: the step CLI needs it for the code exchange."""
        c = self.config
        out: dict[str, Any] = {"type": self.type, "name": self.name, "clientID": c.clientID,
                               "clientSecret": c.clientSecret, "configurationEndpoint": c.configurationEndpoint}
        for key, value in (("tenantID", c.tenantID), ("admins", c.admins), ("domains", c.domains),
                           ("groups", c.groups), ("listenAddress", c.listenAddress)):
            if value:
                out[key] = value
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out



def _spent(claims: dict[str, Any], token: str) -> str:
    """The id an ID token is spent by: its nonce (the client chose it), else its hash, as step-ca does."""
    nonce = claims.get("nonce")
    if isinstance(nonce, str) and 0 < len(nonce) <= MAX_NONCE:
        return f"oidc:{nonce}"
    return "oidc-sha256:" + hashlib.sha256(token.encode()).hexdigest()


def ssh_username(email: str) -> str:
    """step-ca's user principal from an e-mail: the local part, lower case, with anything but letters, digits, `_`,
    `-` and `.` replaced by `_` (a Unix user name)."""
    local = email.rpartition("@")[0].lower()
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-.") else "_" for c in local) or "_"
