"""The SSHPOP provisioner (step-ca's): a host proves possession of its SSH host certificate to renew, rekey or
revoke it.

The token is a JWT whose `sshpop` header is the base64 of the certificate and which is signed by the
certificate's key (ES256/ES384/RS256…/EdDSA, as that key allows). `iss` is the provisioner's name, `aud` this CA's
`/1.0/ssh/renew`, `/ssh/rekey` or `/ssh/revoke` (step's `#sshpop/<name>` fragment accepted), `sub` not empty, and
its `jti` is spent once. Where step-ca checks that one of the CA's keys signed the certificate, hsmca holds it to
its own record: this CA issued exactly this certificate (same bytes), has not revoked it, and it is valid now.

A renewal repeats the certificate (type, key id, principals, extensions, critical options, and its lifetime from
now); a rekey does so for the new key the request carries. Both are host certificates only, as in step-ca. A
revocation needs `sub` to be the certificate's serial.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_identity
from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate, SSHCertificateType

from appliance.ca.ssh import ssh_line
from appliance.config import SSHPOPProvisionerConfig
from appliance.errors import BadRequest, Forbidden, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners import jose
from appliance.provisioners.base import TOKEN_LEEWAY, TokenGrant, strip_port, token_audiences, token_times
from appliance.provisioners.request import AuditNote, IssuanceRequest, SSHOptions, Window
from appliance.store import OneTimeToken, Store
from policy import Claims, PolicyConfig

TYPE = "SSHPOP"
MAX_CERTIFICATE = 16 * 1024


@dataclass(frozen=True)
class SSHPOPCredential:
    """`POST /1.0/ssh/renew` or `/ssh/rekey`: the SSHPOP token, and for a rekey the new public key."""

    token: str
    audiences: frozenset[str]
    action: Literal["renew", "rekey"]
    public_key: Any = None

    def locate(self, provisioners: Any) -> Any:
        return provisioners.for_token(self.token)


def _certificate(header: dict[str, Any]) -> tuple[SSHCertificate, bytes]:
    encoded = header.get(jose.SSHPOP)
    if not isinstance(encoded, str) or not encoded or len(encoded) > MAX_CERTIFICATE:
        raise Unauthorized("the token has no sshpop header (the base64 of an SSH certificate)")
    try:
        blob = base64.b64decode(encoded, validate=True)
        cert = load_ssh_public_identity(ssh_line(encoded).encode())
    except ValueError as exc:
        raise Unauthorized(f"the sshpop header is not an SSH certificate: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise Unauthorized(f"the sshpop header is not an SSH certificate this CA reads: {exc}") from None
    if not isinstance(cert, SSHCertificate):
        raise Unauthorized("the sshpop header holds a public key, not an SSH certificate")
    return cert, blob


class SSHPOPProvisioner:
    type = TYPE

    def __init__(self, config: SSHPOPProvisionerConfig) -> None:
        self.name = config.name
        self.claims: Claims | None = config.claims
        self.policy: PolicyConfig | None = config.policy
        self._store: Store | None = None

    @classmethod
    def from_config(cls, config: SSHPOPProvisionerConfig) -> SSHPOPProvisioner:
        return cls(config)

    def bind_store(self, store: Store) -> None:
        """The record it holds certificates to (the authority binds it once built)."""
        self._store = store

    @property
    def key_id(self) -> str:
        return f"sshpop/{self.name}"

    def claims_token(self, header: dict[str, Any], claims: dict[str, Any]) -> bool:
        return jose.SSHPOP in header and claims.get("iss") == self.name

    def _verify(self, token: str, audiences: frozenset[str], now: datetime
                ) -> tuple[dict[str, Any], SSHCertificate, datetime]:
        try:
            header, _ = jose.peek(token)
        except jose.JOSEError as exc:
            raise Unauthorized(f"cannot parse the token: {exc}") from None
        cert, blob = _certificate(header)
        try:
            key = jose.import_public_key(cert.public_key())
            _, claims = jose.verify_token(token, key)
        except jose.JOSEError as exc:
            raise Unauthorized(f"the token is not signed by the key of its sshpop certificate: {exc}") from None
        if claims.get("iss") != self.name:
            raise Unauthorized(f"token issuer (iss) must be the provisioner name {self.name!r}")
        expires, _, _ = token_times(claims, now)
        fragment = f"#sshpop/{self.name}"
        got = token_audiences(claims) or []
        if not any(strip_port(a.removesuffix(fragment)) in audiences for a in got):
            raise Unauthorized(f"token audience {got} is not this CA's endpoint for this request "
                               f"(expected one of {sorted(audiences)})")
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise Unauthorized("token subject (sub) cannot be empty")
        self._issued(cert, blob, now)
        return claims, cert, expires

    def _issued(self, cert: SSHCertificate, blob: bytes, now: datetime) -> None:
        """This CA issued exactly this certificate, it is not revoked and is valid now."""
        if self._store is None:
            raise Unauthorized("SSHPOP is not available here")
        record = self._store.ssh.get(cert.serial) if 0 < cert.serial < 2**64 else None
        if record is None or record.certificate != blob or record.status != "issued":
            raise Unauthorized(f"SSH certificate {cert.serial} was not issued by this CA")
        if record.revoked_at is not None:
            raise Unauthorized(f"SSH certificate {cert.serial} was revoked at {record.revoked_at.isoformat()}; it "
                               "cannot renew, rekey or vouch for anything")
        stamp = now.timestamp()
        if stamp < cert.valid_after - TOKEN_LEEWAY.total_seconds():
            raise Unauthorized(f"SSH certificate {cert.serial} is not valid yet")
        if stamp > cert.valid_before:
            raise Unauthorized(f"SSH certificate {cert.serial} expired at "
                               f"{datetime.fromtimestamp(cert.valid_before, timezone.utc).isoformat()}")

    def verify_token(self, token: str, audiences: frozenset[str], now: datetime) -> TokenGrant:
        """For `/ssh/revoke`: the certificate may revoke itself, and only itself (`sub` is its serial)."""
        claims, cert, expires = self._verify(token, audiences, now)
        if claims["sub"] != str(cert.serial):
            raise Forbidden("an sshpop token's subject must be its certificate's serial to revoke it")
        return TokenGrant(provisioner=self.name, subject=claims["sub"], sans=(),
                          token=OneTimeToken(_jti(claims, token), self.name, expires + TOKEN_LEEWAY), claims=claims)

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """The same host certificate again (a renewal), or for a new key (a rekey)."""
        if not isinstance(credential, SSHPOPCredential):
            raise Unauthorized(f"provisioner {self.name!r} renews, rekeys and revokes SSH host certificates only "
                               "(POST /1.0/ssh/renew, /ssh/rekey, /ssh/revoke)")
        claims, cert, expires = self._verify(credential.token, credential.audiences, now)
        if cert.type != SSHCertificateType.HOST:
            raise BadRequest("an sshpop certificate must be a host certificate to renew or rekey")
        if credential.action == "rekey" and credential.public_key is None:
            raise BadRequest("a rekey needs the new publicKey")
        key = credential.public_key if credential.action == "rekey" else cert.public_key()
        lifetime = timedelta(seconds=cert.valid_before - cert.valid_after)
        principals = tuple(p.decode("utf-8", "replace") for p in cert.valid_principals)
        key_id = cert.key_id.decode("utf-8", "replace")
        return IssuanceRequest(
            provisioner=self.name, common_name=key_id, names=RequestedNames(), public_key=key,
            window=Window(not_after=now + lifetime), token=OneTimeToken(_jti(claims, credential.token), self.name,
                                                                        expires + TOKEN_LEEWAY),
            audit=AuditNote(subject=key_id, sans=tuple(f"principal:{p}" for p in principals),
                            details={"certType": "host", credential.action + "ed": str(cert.serial)}),
            template_data={"token": dict(claims)},
            ssh=SSHOptions(cert_type="host", key_id=key_id, principals=principals,
                           critical_options={k.decode(): v.decode("utf-8", "replace")
                                             for k, v in cert.critical_options.items()},
                           extensions={k.decode(): v.decode("utf-8", "replace") for k, v in cert.extensions.items()}))

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name}
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out


def _jti(claims: dict[str, Any], token: str) -> str:
    jti = claims.get("jti")
    if isinstance(jti, str) and 0 < len(jti) <= 200:
        return f"sshpop:{jti}"
    return "sshpop-sha256:" + hashlib.sha256(token.encode()).hexdigest()
