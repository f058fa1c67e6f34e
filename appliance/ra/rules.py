"""The rules each provisioner's requests are held to: its policy (on top of the authority's) and its template.

Built once from `ca.json`, so that a broken policy or template stops `hsmca serve` (or a reload) with a message
that names the field, and the pipeline only looks them up. The CA's own certificates have a policy of their
own: no name rules (the CA must start whatever names its policy lists), any lifetime the operator configured,
the authority's key rules.
"""

from __future__ import annotations

from typing import Any

from appliance.config import CAConfig
from appliance.provisioners import IssuanceRequest, Provisioner
from appliance.ra.templates import Template, load_templates
from policy import Policy

INTERNAL_CLAIMS = {"minTLSCertDuration": "1s", "defaultTLSCertDuration": "720h", "maxTLSCertDuration": "87600h"}


class Rules:
    def __init__(self, config: CAConfig, internal: Provisioner) -> None:
        auth = config.authority
        self._authority = (_dump(auth.policy), _dump(auth.claims))
        self._authority_claims = auth.claims
        self._policies = {p.name: self._policy(p.name, p.policy, p.claims) for p in auth.provisioners}
        self._authority_only = self._policy(None, None, None)
        self._internal_provisioner = internal
        self._internal = Policy.from_config(
            authority_policy={"keys": _dump(auth.policy.keys)} if auth.policy and auth.policy.keys else None,
            authority_claims=INTERNAL_CLAIMS)
        self._templates = load_templates(config)
        self._ssh_templates = load_templates(config, "ssh")

    def _policy(self, name: str | None, policy: Any, claims: Any) -> Policy:
        authority_policy, authority_claims = self._authority
        return Policy.from_config(authority_policy=authority_policy, authority_claims=authority_claims,
                                  provisioner_name=name, provisioner_policy=_dump(policy),
                                  provisioner_claims=_dump(claims))

    def for_request(self, provisioner: Provisioner, request: IssuanceRequest) -> Policy:
        """The provisioner's policy; for a renewal, the original provisioner's (or the authority's alone)."""
        if provisioner is self._internal_provisioner:
            return self._internal
        return self._policies.get(request.provisioner, self._authority_only)

    def template_for(self, provisioner: Provisioner, request: IssuanceRequest) -> Template | None:
        """The provisioner's certificate template; renewals repeat the certificate they replace, untemplated."""
        return self._templates.get(provisioner.name)

    def ssh_template_for(self, provisioner: Provisioner, request: IssuanceRequest) -> Template | None:
        """The provisioner's SSH template (`options.ssh`); SSHPOP renewals repeat the certificate, untemplated."""
        if provisioner.type == "SSHPOP":
            return None
        return self._ssh_templates.get(provisioner.name)

    def ssh_enabled(self, provisioner: Provisioner, request: IssuanceRequest) -> bool:
        """step-ca's `enableSSHCA` claim: the provisioner's where it sets one, else the authority's; off by default."""
        own = getattr(provisioner, "claims", None)
        if own is not None and own.enableSSHCA is not None:
            return bool(own.enableSSHCA)
        return bool(self._authority_claims is not None and self._authority_claims.enableSSHCA)

    def policy_for(self, provisioner: str) -> Policy | None:
        """The policy a provisioner's certificates are judged by (None for an unknown name)."""
        return self._policies.get(provisioner)


def _dump(model: Any) -> dict[str, Any] | None:
    return None if model is None else model.model_dump(exclude_none=True)
