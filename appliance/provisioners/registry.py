"""The configured provisioners, found the way step-ca finds them: by token `iss` + header `kid`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from appliance.config import AnyProvisionerConfig
from appliance.errors import BadRequest, NotFound, Unauthorized
from appliance.provisioners import jose
from appliance.provisioners.acme import ACMEProvisioner
from appliance.provisioners.base import Provisioner
from appliance.provisioners.jwk import JWKProvisioner

MAX_PAGE = 100


def build(cfg: AnyProvisionerConfig) -> Provisioner:
    if cfg.type == "JWK":
        return JWKProvisioner(cfg.name, cfg.key, cfg.encryptedKey, cfg.claims, cfg.policy)
    if cfg.type == "ACME":
        return ACMEProvisioner(cfg)
    raise ValueError(f"unsupported provisioner type {cfg.type!r}")


class Provisioners:
    def __init__(self, provisioners: list[Provisioner]):
        self._list = list(provisioners)
        self._by_token_key = {(p.name, p.key_id): p for p in self._list}
        self._by_kid = {p.key_id: p for p in self._list}

    @classmethod
    def from_config(cls, configs: list[AnyProvisionerConfig]) -> Provisioners:
        return cls([build(c) for c in configs])

    def __iter__(self) -> Iterator[Provisioner]:
        return iter(self._list)

    def __len__(self) -> int:
        return len(self._list)

    def by_name(self, name: str) -> Provisioner | None:
        return next((p for p in self._list if p.name == name), None)

    def for_token(self, token: str) -> Provisioner:
        """The provisioner a token claims to come from (verification happens afterwards)."""
        try:
            header, claims = jose.peek(token)
        except jose.JOSEError as exc:
            raise Unauthorized(f"cannot parse token: {exc}") from None
        issuer, kid = claims.get("iss"), header.get("kid")
        if not isinstance(issuer, str) or not isinstance(kid, str):
            raise Unauthorized("token must name its provisioner (claim 'iss' and header 'kid')")
        found = self._by_token_key.get((issuer, kid))
        if found is None:
            raise Unauthorized(f"no provisioner named {issuer!r} with key id {kid!r}")
        return found

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
