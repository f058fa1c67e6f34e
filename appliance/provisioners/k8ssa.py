"""The K8sSA provisioner (step-ca's): a Kubernetes service-account token, signed by a key of the cluster.

The client sends the token its pod was given, as it is (`POST /sign` `ott`); there is at most one K8sSA
provisioner, since a service-account token names none. The token must be signed by one of the provisioner's
`publicKeys` (the cluster's `--service-account-key-file`), with an algorithm that key allows (RS256 for RSA,
ES256 for P-256, ...). Two kinds are accepted:

- legacy (secret-based) tokens, exactly as step-ca 0.19 checks them: `iss` is `kubernetes/serviceaccount`,
  `sub` not empty, `exp`/`nbf` checked with a minute of leeway where present (these tokens usually never
  expire), no audience; the service account is named by the claims
  `kubernetes.io/serviceaccount/namespace` and `kubernetes.io/serviceaccount/service-account.name`.
- bound (projected, TokenRequest) tokens, which step-ca refuses (their `iss` is the cluster's issuer URL):
  hsmca accepts them with rules of its own, since such a token is meant for one audience and expires: `exp`
  required, `nbf`/`iat` checked, `iss` one of the provisioner's `issuers` (any when that list is empty), `aud`
  naming this CA (its sign URL, its base URL `https://<dnsName>`, or one of the provisioner's `audiences`);
  the service account is the `kubernetes.io` claim's `namespace` and `serviceaccount.name`.

As in step-ca, such a token is not single use (the pod presents the same token until the kubelet rotates it),
and the certificate's names are the CSR's (step-ca's default template for K8sSA is the request): the
provisioner's policy, or a template deriving the names from `k8s.namespace` and `k8s.serviceAccount`, decides
which names a workload may have.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.config import K8sSAProvisionerConfig, k8s_public_keys
from appliance.errors import BadRequest, Forbidden, Unauthorized
from appliance.provisioners import jose
from appliance.provisioners.base import (
    TOKEN_LEEWAY,
    SSHSignCredential,
    TokenCredential,
    csr_names,
    numeric_date,
    strip_port,
    token_audiences,
    token_times,
)
from appliance.provisioners.request import AuditNote, CSRRule, IssuanceRequest, Window
from appliance.provisioners.ssh_request import ssh_request, ssh_window
from appliance.provisioners.validity import parse_time_or_duration
from policy import Claims, PolicyConfig

TYPE = "K8sSA"
LEGACY_ISSUER = "kubernetes/serviceaccount"
LEGACY_NAMESPACE = "kubernetes.io/serviceaccount/namespace"
LEGACY_NAME = "kubernetes.io/serviceaccount/service-account.name"
LEGACY_UID = "kubernetes.io/serviceaccount/service-account.uid"
BOUND = "kubernetes.io"


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "", "", ""))


def _legacy_times(claims: dict[str, Any], now: datetime) -> None:
    """A legacy token usually has no `exp` (it lives as long as its secret); step-ca checks what is there."""
    if claims.get("exp") is not None:
        token_times(claims, now)
        return
    not_before = numeric_date(claims, "nbf", required=False)
    if not_before is not None and now < not_before - TOKEN_LEEWAY:
        raise Unauthorized(f"token is not valid before {not_before.isoformat()}")


class K8sSAProvisioner:
    """Service-account tokens signed by one of the cluster's keys."""

    type = TYPE

    def __init__(self, name: str, public_keys: list[jose.PublicKey], *, issuers: list[str] | None = None,
                 audiences: list[str] | None = None, claims: Claims | None = None,
                 policy: PolicyConfig | None = None, pem: bytes = b"") -> None:
        if not public_keys:
            raise ValueError(f"K8sSA provisioner {name!r} has no public keys")
        self.name = name
        self.keys = list(public_keys)
        self.issuers = frozenset(issuers or ())
        self.extra_audiences = frozenset((audiences or ()))
        self.claims = claims
        self.policy = policy
        self._pem = pem

    @classmethod
    def from_config(cls, cfg: K8sSAProvisionerConfig) -> K8sSAProvisioner:
        keys = k8s_public_keys(cfg.publicKeys)
        pem = b"".join(k.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) for k in keys)
        return cls(cfg.name, [jose.import_public_key(k) for k in keys], issuers=cfg.issuers,
                   audiences=cfg.audiences, claims=cfg.claims, policy=cfg.policy, pem=pem)

    @property
    def key_id(self) -> str:
        return f"k8ssa/{self.name}"

    def claims_token(self, header: dict[str, Any], claims: dict[str, Any]) -> bool:
        """A service-account token: the legacy issuer, or the `kubernetes.io` claim of a bound token."""
        return claims.get("iss") == LEGACY_ISSUER or isinstance(claims.get(BOUND), dict)

    def verify(self, token: str, audiences: frozenset[str], now: datetime) -> tuple[dict[str, Any], dict[str, str]]:
        """The token's claims and the service account it names; Unauthorized saying why not."""
        claims: dict[str, Any] | None = None
        for key in self.keys:
            try:
                _, claims = jose.verify_token(token, key)
                break
            except jose.JOSEError:
                continue
        if claims is None:
            raise Unauthorized(f"the service-account token is not signed by any public key of provisioner "
                               f"{self.name!r}")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise Unauthorized("service-account token subject (sub) cannot be empty")
        issuer = claims.get("iss")
        if issuer == LEGACY_ISSUER:
            _legacy_times(claims, now)
            account = {"namespace": _text(claims.get(LEGACY_NAMESPACE)),
                       "serviceAccount": _text(claims.get(LEGACY_NAME)),
                       "serviceAccountUID": _text(claims.get(LEGACY_UID)), "pod": "", "issuer": LEGACY_ISSUER}
        else:
            bound = claims.get(BOUND)
            if not isinstance(bound, dict):
                raise Unauthorized(f"a service-account token's issuer (iss) must be {LEGACY_ISSUER!r}, or it must "
                                   f"be a bound token (with a {BOUND!r} claim)")
            if not isinstance(issuer, str) or not issuer:
                raise Unauthorized("bound service-account token has no issuer (iss)")
            if self.issuers and issuer not in self.issuers:
                raise Unauthorized(f"service-account token issuer {issuer!r} is not one of provisioner "
                                   f"{self.name!r}'s issuers {sorted(self.issuers)}")
            token_times(claims, now)
            accepted = self._accepted_audiences(audiences)
            got = token_audiences(claims) or []
            if not any(strip_port(a.rstrip("/")) in accepted or a in self.extra_audiences for a in got):
                raise Unauthorized(f"service-account token audience {got} does not name this CA "
                                   f"(expected one of {sorted(accepted | self.extra_audiences)})")
            sa = bound.get("serviceaccount")
            pod = bound.get("pod")
            account = {"namespace": _text(bound.get("namespace")),
                       "serviceAccount": _text(sa.get("name")) if isinstance(sa, dict) else "",
                       "serviceAccountUID": _text(sa.get("uid")) if isinstance(sa, dict) else "",
                       "pod": _text(pod.get("name")) if isinstance(pod, dict) else "", "issuer": issuer}
        if not account["namespace"] or not account["serviceAccount"]:
            raise Unauthorized("the service-account token does not name its namespace and service account")
        return claims, account

    @staticmethod
    def _accepted_audiences(audiences: frozenset[str]) -> frozenset[str]:
        """This CA's sign URLs, and its base URLs (`https://<dnsName>`), port stripped."""
        return audiences | {_base_url(a) for a in audiences}

    def authorize(self, credential: object, now: datetime) -> IssuanceRequest:
        """The CSR's names and key, for the service account the token names; or an SSH host certificate for the
        principals the request names (step-ca's K8sSA signs host certificates; policy judges the names)."""
        if isinstance(credential, SSHSignCredential):
            claims, account = self.verify(credential.token, credential.audiences, now)
            if credential.cert_type not in ("", "host"):
                raise Forbidden(f"provisioner {self.name!r} signs SSH host certificates only")
            if not credential.principals:
                raise BadRequest("an SSH host certificate request must name its principals (the host's names)")
            who = f"system:serviceaccount:{account['namespace']}:{account['serviceAccount']}"
            return ssh_request(self.name, credential, cert_type="host", key_id=credential.key_id or who,
                               principals=credential.principals, window=ssh_window(credential, now), token=None,
                               claims=claims, details={"serviceAccount": who, "issuer": account["issuer"]})
        if not isinstance(credential, TokenCredential):
            raise Unauthorized(f"provisioner {self.name!r} accepts Kubernetes service-account tokens only")
        claims, account = self.verify(credential.token, credential.audiences, now)
        csr = credential.csr
        common_name, names = csr_names(csr)
        window = Window(not_before=parse_time_or_duration(credential.not_before, now, "notBefore"),
                        not_after=parse_time_or_duration(credential.not_after, now, "notAfter"))
        who = f"system:serviceaccount:{account['namespace']}:{account['serviceAccount']}"
        return IssuanceRequest(
            provisioner=self.name, common_name=common_name, names=names, public_key=csr.public_key(),
            window=window, csr=csr, csr_rule=CSRRule.NONE,
            audit=AuditNote(subject=common_name or None,
                            details={"serviceAccount": who, "issuer": account["issuer"]}),
            template_data={"token": dict(claims), "k8s": account})

    def describe(self, *, with_encrypted_key: bool) -> dict[str, Any]:
        """As step-ca lists it: the keys as the base64 of their PEM."""
        out: dict[str, Any] = {"type": self.type, "name": self.name,
                               "publicKeys": base64.b64encode(self._pem).decode()}
        if self.claims is not None:
            out["claims"] = self.claims.model_dump(exclude_none=True)
        return out
