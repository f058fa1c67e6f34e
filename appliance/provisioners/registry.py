"""Provisioner types by name (as `kms/registry.py` finds backends by URI scheme), and the configured set.

A new type is one module with a class whose constructor takes its validated `ca.json` object, registered
here under its `type`. The set also holds the built-in provisioners that no `ca.json` lists: renewal (a
certificate vouches for its successor) and the CA's own certificates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

from appliance.config import AnyProvisionerConfig
from appliance.errors import BadRequest, NotFound, Unauthorized
from appliance.provisioners import jose
from appliance.provisioners.acme import ACMEProvisioner
from appliance.provisioners.base import Provisioner
from appliance.provisioners.internal import InternalProvisioner
from appliance.provisioners.jwk import JWKProvisioner
from appliance.provisioners.k8ssa import K8sSAProvisioner
from appliance.provisioners.oidc import OIDCProvisioner
from appliance.provisioners.sshpop import SSHPOPProvisioner
from appliance.provisioners.x5c import RenewalProvisioner
from appliance.provisioners.x5c_roots import X5CProvisioner

MAX_PAGE = 100

Factory = Callable[[Any], Provisioner]

_TYPES: dict[str, Factory] = {}


def register(type_name: str, factory: Factory) -> None:
    """Make `type_name` (ca.json's `type`) buildable; a second registration of a name is a programming error."""
    if type_name in _TYPES:
        raise ValueError(f"provisioner type {type_name!r} is already registered")
    _TYPES[type_name] = factory


def build(cfg: AnyProvisionerConfig) -> Provisioner:
    factory = _TYPES.get(cfg.type)
    if factory is None:
        raise ValueError(f"unsupported provisioner type {cfg.type!r}; known: {sorted(_TYPES)}")
    return factory(cfg)


register("JWK", lambda cfg: JWKProvisioner(cfg.name, cfg.key, cfg.encryptedKey, cfg.claims, cfg.policy))
register("ACME", ACMEProvisioner)
register("X5C", X5CProvisioner.from_config)
register("K8sSA", K8sSAProvisioner.from_config)
register("OIDC", OIDCProvisioner.from_config)
register("SSHPOP", SSHPOPProvisioner.from_config)


class Credential(Protocol):
    """Anything a provisioner accepts; it knows which provisioner judges it."""

    def locate(self, provisioners: Provisioners) -> Provisioner: ...


class Provisioners:
    def __init__(self, provisioners: list[Provisioner], *, renewal: RenewalProvisioner | None = None,
                 internal: InternalProvisioner | None = None):
        self._list = list(provisioners)
        self._by_token_key = {(p.name, p.key_id): p for p in self._list}
        self._by_kid = {p.key_id: p for p in self._list}
        self._renewal = renewal
        self.internal = internal or InternalProvisioner()

    @classmethod
    def from_config(cls, configs: list[AnyProvisionerConfig], *, renewal: RenewalProvisioner | None = None
                    ) -> Provisioners:
        return cls([build(c) for c in configs], renewal=renewal)

    @property
    def renewal(self) -> RenewalProvisioner:
        if self._renewal is None:
            raise Unauthorized("renewal is not available here")
        return self._renewal

    def __iter__(self) -> Iterator[Provisioner]:
        return iter(self._list)

    def __len__(self) -> int:
        return len(self._list)

    def find(self, credential: object) -> Provisioner:
        """The provisioner that judges `credential` (verification is that provisioner's)."""
        locate = getattr(credential, "locate", None)
        if locate is None:
            raise TypeError(f"{type(credential).__name__} is not a credential")
        found: Provisioner = locate(self)
        return found

    def by_name(self, name: str) -> Provisioner | None:
        return next((p for p in self._list if p.name == name), None)

    def for_token(self, token: str) -> Provisioner:
        """The provisioner a token claims to come from (verification happens afterwards).

        A JWK token names it by `iss` and `kid`; a provisioner whose tokens name it otherwise (X5C: `iss` and
        an `x5c` header; K8sSA: a service-account token; OIDC: `aud` or `azp` naming its client id) says so
        through `claims_token(header, claims)`.
        """
        try:
            header, claims = jose.peek(token)
        except jose.JOSEError as exc:
            raise Unauthorized(f"cannot parse token: {exc}") from None
        issuer, kid = claims.get("iss"), header.get("kid")
        if isinstance(issuer, str) and isinstance(kid, str):
            found = self._by_token_key.get((issuer, kid))
            if found is not None:
                return found
        for candidate in self._list:
            claims_token: Callable[[dict[str, Any], dict[str, Any]], bool] | None = \
                getattr(candidate, "claims_token", None)
            if claims_token is not None and claims_token(header, claims):
                return candidate
        if not isinstance(issuer, str) or not isinstance(kid, str):
            raise Unauthorized("token must name its provisioner (claim 'iss' and header 'kid', or an x5c header, "
                               "or be a Kubernetes service-account token, or an ID token for an OIDC client id)")
        clients = sorted(p.key_id for p in self._list if p.type == "OIDC")
        if clients:
            raise Unauthorized(f"no provisioner named {issuer!r} with key id {kid!r}, and the token's audience "
                               f"{claims.get('aud')!r} is none of the OIDC client ids {clients}")
        raise Unauthorized(f"no provisioner named {issuer!r} with key id {kid!r}")

    def encrypted_key(self, kid: str, *, published: bool) -> str:
        p = self._by_kid.get(kid)
        if p is None:
            raise NotFound(f"no provisioner with key id {kid!r}")
        key = getattr(p, "encrypted_key", None)
        if not published:
            raise NotFound("this CA does not publish encrypted provisioner keys; "
                           "use the provisioner key file (--provisioner-key)")
        if not key:
            raise NotFound(f"provisioner {p.name!r} has no encrypted key")
        return str(key)

    def page(self, cursor: str, limit: int, *, published: bool) -> tuple[list[dict[str, Any]], str]:
        """step-ca's pagination: `cursor` is where the page starts, `nextCursor` where the next does."""
        try:
            start = int(cursor) if cursor else 0
        except ValueError:
            raise BadRequest(f"invalid cursor {cursor!r}") from None
        if start < 0 or limit < 0:
            raise BadRequest("cursor and limit must not be negative")
        limit = min(limit or 20, MAX_PAGE)
        items = self._list[start:start + limit]
        nxt = start + len(items)
        return ([p.describe(with_encrypted_key=published) for p in items],
                str(nxt) if nxt < len(self._list) else "")
