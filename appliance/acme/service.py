"""The ACME server's front door below the web layer: find the provisioner, authenticate the JWS, dispatch.

The web layer (appliance/api/acme.py) hands over the request URL, the raw body and the route; everything
the RFC decides (which key signs what, nonce, account status, the state machine) happens from here down.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from appliance.acme import accounts, ari, certificates, jws, orders
from appliance.acme.call import Answer, Call, Registration
from appliance.acme.objects import Links
from appliance.acme.problems import Problem
from appliance.acme.validator import STALE_AFTER, Sweeper, Validator
from appliance.provisioners import jose
from appliance.provisioners.acme import ACMEProvisioner
from appliance.ra.pipeline import RequestContext
from appliance.store import Store
from appliance.store.acme import AccountRecord

NONCE_LIFETIME = timedelta(hours=1)

Handler = Callable[..., Answer]


class ACMEService:
    def __init__(self, ra: Registration, sa: Store, *, validator: Validator | None = None,
                 sweep_interval: float = 60.0) -> None:
        self.ra, self.sa = ra, sa
        self.store = sa.acme
        self.validator = validator or Validator(self.store)
        self._sweeper = Sweeper(self._sweep_quietly, sweep_interval)
        # route → (which key must sign: "jwk", "kid" or "either", handler)
        self._routes: dict[str, tuple[str, Handler]] = {
            "new-account": ("jwk", accounts.new_account),
            "account": ("kid", accounts.update_account),
            "orders": ("kid", accounts.list_orders),
            "key-change": ("kid", accounts.key_change),
            "new-order": ("kid", orders.new_order),
            "order": ("kid", lambda c, order_id: orders.get_order(c, order_id, self.validator)),
            "authz": ("kid", lambda c, authz_id: orders.get_authz(c, authz_id, self.validator)),
            "chall": ("kid", lambda c, chall_id: orders.post_challenge(c, chall_id, self.validator)),
            "finalize": ("kid", certificates.finalize),
            "certificate": ("kid", certificates.download),
            "certificate-alternate": ("kid", certificates.download_alternate),
            "revoke-cert": ("either", certificates.revoke_cert),
        }

    def provisioner(self, name: str) -> ACMEProvisioner:
        prov = self.ra.provisioners.by_name(name)
        if not isinstance(prov, ACMEProvisioner):
            raise Problem("malformed", f"no ACME provisioner named {name[:64]!r} on this CA", 404)
        return prov

    def new_nonce(self) -> str:
        return self.store.new_nonce(datetime.now(UTC), NONCE_LIFETIME)

    def directory(self, prov: ACMEProvisioner, links: Links) -> dict[str, Any]:
        meta: dict[str, Any] = {"externalAccountRequired": prov.config.requireEAB}
        if prov.config.termsOfService:
            meta["termsOfService"] = prov.config.termsOfService
        body: dict[str, Any] = {
            "newNonce": links.endpoint("new-nonce"), "newAccount": links.endpoint("new-account"),
            "newOrder": links.endpoint("new-order"), "revokeCert": links.endpoint("revoke-cert"),
            "keyChange": links.endpoint("key-change"), "renewalInfo": links.endpoint("renewal-info"),
            "meta": meta}
        return body

    def handle(self, route: str, prov: ACMEProvisioner, links: Links, url: str, body: bytes, ctx: RequestContext,
               **params: str) -> Answer:
        """Authenticate a POST to `route` and run it; Problem (or CAError) when refused."""
        self._sweeper.ensure_running()
        want, handler = self._routes[route]
        call, nonce = self._authenticate(prov, links, url, body, ctx, want)
        answer = handler(call, **params)
        answer.headers.setdefault("Replay-Nonce", nonce)
        return answer

    def renewal_info(self, cert_id: str) -> Answer:
        cid = ari.parse_cert_id(cert_id)
        now = datetime.now(UTC)
        rec = ari.check(self.sa.certificates.get(cid.serial), cid)
        revocation = self.sa.revocations.get(rec.serial)
        return Answer(200, ari.window(rec, revocation, now), headers={"Retry-After": str(ari.RETRY_AFTER)})

    def _authenticate(self, prov: ACMEProvisioner, links: Links, url: str, body: bytes, ctx: RequestContext,
                      want: str) -> tuple[Call, str]:
        """The verified call, and the nonce for its response (issued as the request's nonce is consumed)."""
        found: list[AccountRecord] = []
        fresh: list[str] = []

        def consume(nonce: str) -> bool:
            new = self.store.swap_nonce(nonce, datetime.now(UTC), NONCE_LIFETIME)
            fresh.extend([new] if new else [])
            return new is not None

        def key_for_kid(kid: str) -> jose.PublicKey:
            account_id = links.account_id(kid)
            acct = self.store.account(account_id) if account_id else None
            if acct is None or acct.provisioner != prov.name:
                raise Problem("accountDoesNotExist", f"no account {kid[:200]!r} on provisioner {prov.name!r}; "
                              "kid must be the account URL that newAccount returned")
            if acct.status != "valid":
                raise Problem("unauthorized", f"the account is {acct.status}")
            found.append(acct)
            return jws.account_key(acct.jwk)

        verified = jws.verify_request(body, url, want=want, key_for_kid=key_for_kid, consume_nonce=consume)
        return Call(self.ra, self.sa, prov, links, ctx, verified, found[0] if found else None), fresh[0]

    def _sweep_quietly(self) -> None:
        self.sweep()

    def sweep(self, now: datetime | None = None) -> int:
        """Resume (or fail) challenges left in processing by a dead validator; returns how many were touched."""
        now = now or datetime.now(UTC)
        touched = 0
        for chal in self.store.stale_challenges(now - STALE_AFTER):
            authz = self.store.authorization(chal.authz_id)
            acct = self.store.account(authz.account_id) if authz else None
            prov = self.ra.provisioners.by_name(acct.provisioner) if acct else None
            if authz is None or acct is None or not isinstance(prov, ACMEProvisioner):
                continue
            if orders.resume_stale_challenges(self.store, prov.config, acct, authz, self.validator, now):
                touched += 1
        return touched
