"""The ACME provisioner as the provisioner collection sees it: named, policy-bearing, issuing no tokens.

Its clients authenticate with ACME account keys (appliance/acme/jws.py), never with one-time tokens, so
`authorize_sign` always refuses; the settings the protocol needs stay on the validated config.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from appliance.config import ACMEProvisionerConfig
from appliance.errors import Unauthorized
from policy import Claims, PolicyConfig


class ACMEProvisioner:
    type = "ACME"

    def __init__(self, config: ACMEProvisionerConfig) -> None:
        self.config = config
        self.name = config.name
        self.claims: Claims | None = config.claims
        self.policy: PolicyConfig | None = config.policy

    @property
    def key_id(self) -> str:
        return f"acme:{self.name}"  # never a token's kid: no JWK token can select this provisioner

    def authorize_sign(self, token: str, audiences: frozenset[str], now: datetime) -> Any:
        raise Unauthorized(f"provisioner {self.name!r} is an ACME provisioner: use the ACME protocol at "
                           f"/acme/{self.name}/directory")

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "name": self.name, "challenges": list(self.config.challenges)}
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out
