"""The CA's own certificates (the HTTPS listener's, a delegated OCSP responder's, the audit key's) come from here.

No outside credential: the CA asks itself, so `authorize` only turns the values into a request. The
authority-wide name policy does not judge these names (a policy that does not list `localhost` must not
stop the CA from starting); key rules, validity, recording, signing and audit are the pipeline's as for
any certificate (`appliance/ra/authority.py` builds the policy that says so).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from appliance.names import RequestedNames
from appliance.provisioners.request import AuditNote, IssuanceRequest, Window
from policy import Claims, PolicyConfig

if TYPE_CHECKING:
    from appliance.provisioners.registry import Provisioners

TYPE = "internal"
SERVER = "hsmca:server"  # how the HTTPS listener's certificates are recorded and audited
OCSP_RESPONDER = "hsmca:ocsp-responder"
AUDIT_KEY = "hsmca:audit"  # the audit key's certificate (it signs audit checkpoints)


@dataclass(frozen=True)
class InternalCredential:
    """The CA asking for one of its own certificates."""

    purpose: str  # SERVER, OCSP_RESPONDER or AUDIT_KEY: the provisioner name the certificate is recorded under
    common_name: str
    public_key: CertificatePublicKeyTypes
    lifetime: timedelta
    names: RequestedNames = RequestedNames()
    ext_key_usage: tuple[x509.ObjectIdentifier, ...] = ()
    extensions: tuple[x509.Extension[x509.ExtensionType], ...] = ()
    issuer: str | None = None  # an intermediate id; None: the active one
    details: dict[str, Any] = field(default_factory=dict)

    def locate(self, provisioners: Provisioners) -> InternalProvisioner:
        return provisioners.internal


class InternalProvisioner:
    type = TYPE
    name = "hsmca"
    claims: Claims | None = None
    policy: PolicyConfig | None = None

    @property
    def key_id(self) -> str:
        return "hsmca:internal"  # never a token's kid

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        assert isinstance(credential, InternalCredential)
        return IssuanceRequest(
            provisioner=credential.purpose, common_name=credential.common_name, names=credential.names,
            public_key=credential.public_key, window=Window(lifetime=credential.lifetime),
            ext_key_usage=credential.ext_key_usage,
            extensions=credential.extensions, issuer=credential.issuer,
            audit=AuditNote(subject=credential.common_name, details=credential.details))

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        return {"type": self.type, "name": self.name}
