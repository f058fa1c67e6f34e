"""The ACME provisioner: named, policy-bearing, and authorized by a finalized order, never by a token.

Its clients authenticate with ACME account keys (appliance/acme/jws.py) and prove control of their names
with challenges; once an order is ready, the protocol layer hands its finalize request over as an
`OrderCredential`, which this provisioner turns into an issuance request like any other. The settings the
protocol needs stay on the validated config.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from cryptography import x509

from appliance.config import ACMEProvisionerConfig
from appliance.errors import Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners.request import AuditNote, IssuanceRequest, Window
from policy import Claims, PolicyConfig

if TYPE_CHECKING:
    from appliance.provisioners.base import Provisioner
    from appliance.provisioners.registry import Provisioners

TYPE = "ACME"


@dataclass(frozen=True)
class OrderCredential:
    """A ready order being finalized: the protocol checked the account, the challenges and that the CSR names
    exactly the order's identifiers."""

    provisioner: str
    order_id: str
    account_id: str
    names: RequestedNames  # the order's identifiers
    common_name: str
    csr: x509.CertificateSigningRequest
    not_before: datetime | None = None
    not_after: datetime | None = None

    def locate(self, provisioners: Provisioners) -> Provisioner:
        found = provisioners.by_name(self.provisioner)
        if not isinstance(found, ACMEProvisioner):
            raise Unauthorized(f"no ACME provisioner named {self.provisioner!r}")
        return found


class ACMEProvisioner:
    type = TYPE

    def __init__(self, config: ACMEProvisionerConfig) -> None:
        self.config = config
        self.name = config.name
        self.claims: Claims | None = config.claims
        self.policy: PolicyConfig | None = config.policy

    @property
    def key_id(self) -> str:
        return f"acme:{self.name}"  # never a token's kid: no JWK token can select this provisioner

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """serverAuth and clientAuth, as step-ca's ACME issues; the window the order asked for."""
        if not isinstance(credential, OrderCredential):
            raise Unauthorized(f"provisioner {self.name!r} is an ACME provisioner: use the ACME protocol at "
                               f"/acme/{self.name}/directory")
        return IssuanceRequest(
            provisioner=self.name, common_name=credential.common_name, names=credential.names,
            public_key=credential.csr.public_key(), csr=credential.csr,
            window=Window(not_before=credential.not_before, not_after=credential.not_after),
            audit=AuditNote(details={"order": credential.order_id, "account": credential.account_id}))

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name, "challenges": list(self.config.challenges)}
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out
