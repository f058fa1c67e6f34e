"""Orders, authorizations and challenges (RFC 8555 §7.4, §7.5): placed, polled, and proved.

A challenge POST claims the challenge in the database (pending → processing) and queues its validation; the
answer goes back at once with status processing, and the client polls. Reading a challenge, an authorization
or an order also resumes validations whose worker died (see validator.py).
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Literal

from appliance.acme import jws
from appliance.acme.call import Answer, Call
from appliance.acme.identifiers import Identifier, check_order, parse_identifiers
from appliance.acme.objects import authz_json, challenge_json, order_json
from appliance.acme.problems import Problem
from appliance.acme.validator import (
    MAX_ATTEMPTS,
    STALE_AFTER,
    Job,
    Validator,
    address_policy,
    problem_document,
    settings_for,
)
from appliance.audit import AuditEvent
from appliance.config import ACMEProvisionerConfig
from appliance.errors import BadRequest
from appliance.provisioners.validity import parse_time_or_duration
from appliance.store.acme import (
    AccountRecord,
    ACMEStore,
    AuthorizationRecord,
    ChallengeRecord,
    OrderRecord,
    new_id,
)

ORDER_LIFETIME = timedelta(hours=24)
AUTHZ_LIFETIME = timedelta(hours=24)
RETRY_AFTER = 1  # seconds: when to poll a challenge or order still processing


def new_order(call: Call) -> Answer:
    acct, prov, now = call.acct, call.provisioner, call.now
    payload = call.jws.json()
    idents = parse_identifiers(payload.get("identifiers"))
    not_before = _time(payload.get("notBefore"), "notBefore", now)
    not_after = _time(payload.get("notAfter"), "notAfter", now)
    if "replaces" in payload and not isinstance(payload["replaces"], str):
        raise Problem("malformed", "replaces must be an ARI certificate identifier (a string)")
    policy = call.ra.policy_for(prov.name)
    if policy is None:
        raise Problem("serverInternal", f"provisioner {prov.name!r} has no policy", 500)
    try:
        challenges = check_order(policy, idents, list(prov.config.challenges), prov.name, now)
    except Problem as exc:
        _audit(call, "denied", idents, reasons=tuple(s.detail for s in exc.subproblems) or (exc.detail,),
               status=exc.status)
        raise
    order = OrderRecord(new_id(), acct.id, "pending", tuple(i.as_dict() for i in idents), not_before, not_after,
                        now + ORDER_LIFETIME, None, None, now)
    authzs = []
    for ident in idents:
        authz_id = new_id()
        chals = tuple(ChallengeRecord(new_id(), authz_id, t, jws.b64encode(secrets.token_bytes(32)), "pending")
                      for t in challenges[ident])
        authzs.append(AuthorizationRecord(authz_id, order.id, acct.id, ident.type, ident.base, ident.wildcard,
                                          "pending", now + AUTHZ_LIFETIME, chals))
    # Tokens: 256 random bits (RFC 8555 §8.1 asks for at least 128).
    call.store.create_order(order, authzs)
    created = call.store.order(order.id)
    assert created is not None
    _audit(call, "allowed", idents, status=201, order_id=order.id)
    return Answer(201, order_json(call.links, created), headers={"Location": call.links.order(order.id)})


def _audit(call: Call, decision: Literal["allowed", "denied"], idents: list[Identifier], *,
           reasons: tuple[str, ...] = (), status: int, order_id: str | None = None) -> None:
    """Orders are audited like sign requests: who asked for which names, and why a refusal."""
    call.ra.record(AuditEvent(
        action="acme.order.new", decision=decision, request_id=call.ctx.request_id, remote_addr=call.ctx.remote_addr,
        provisioner=call.provisioner.name, subject=call.links.account(call.acct.id),
        sans=tuple(f"{i.type}:{i.value}" for i in idents), reasons=reasons, status=status,
        details={"order": order_id} if order_id else {}))


def own_order(call: Call, order_id: str) -> OrderRecord:
    order = call.store.order(order_id)
    if order is None:
        raise Problem("malformed", f"no order {order_id[:64]}", 404)
    if order.account_id != call.acct.id:
        raise Problem("unauthorized", "the order belongs to another account")
    if order.status in ("pending", "ready") and order.expires_at < call.now:
        call.store.expire_order(order_id, call.now)
        order = call.store.order(order_id) or order
    return order


def get_order(call: Call, order_id: str, validator: Validator) -> Answer:
    order = own_order(call, order_id)
    if order.status == "pending":
        for authz_id in order.authorization_ids:
            authz = call.store.authorization(authz_id)
            if authz is not None:
                resume_stale(call, authz, validator)
        order = call.store.order(order_id) or order
    headers = {"Location": call.links.order(order_id)}
    if order.status == "processing":
        headers["Retry-After"] = str(RETRY_AFTER)
    return Answer(200, order_json(call.links, order), headers=headers)


def own_authz(call: Call, authz_id: str) -> AuthorizationRecord:
    authz = call.store.authorization(authz_id)
    if authz is None:
        raise Problem("malformed", f"no authorization {authz_id[:64]}", 404)
    if authz.account_id != call.acct.id:
        raise Problem("unauthorized", "the authorization belongs to another account")
    return authz


def get_authz(call: Call, authz_id: str, validator: Validator) -> Answer:
    authz = own_authz(call, authz_id)
    if not call.jws.post_as_get:
        status = call.jws.json().get("status")
        if status != "deactivated":
            raise Problem("malformed", "an authorization can only be updated to status deactivated")
        call.store.deactivate_authorization(authz_id)
    elif resume_stale(call, authz, validator):
        authz = own_authz(call, authz_id)
    authz = call.store.authorization(authz_id) or authz
    return Answer(200, authz_json(call.links, authz, call.now), headers={"Location": call.links.authz(authz_id)})


def post_challenge(call: Call, challenge_id: str, validator: Validator) -> Answer:
    chal = call.store.challenge(challenge_id)
    if chal is None:
        raise Problem("malformed", f"no challenge {challenge_id[:64]}", 404)
    authz = own_authz(call, chal.authz_id)
    if not call.jws.post_as_get:
        call.jws.json()  # {} (RFC 8555 §7.5.1); any other fields are ignored
        if authz.expires_at < call.now:
            raise Problem("malformed", "the authorization has expired; place a new order")
        if call.store.start_challenge(chal.id, call.now):
            claimed = call.store.challenge(chal.id)
            assert claimed is not None
            validator.submit(job_for(call.provisioner.config, call.acct, authz, claimed))
        elif chal.status == "pending":
            raise Problem("malformed", f"the authorization is {authz.status}; this challenge can no longer start")
    else:
        resume_stale(call, authz, validator)
    chal = call.store.challenge(challenge_id) or chal
    headers = {"Location": call.links.challenge(chal.id)}
    if chal.status == "processing":
        headers["Retry-After"] = str(RETRY_AFTER)
    return Answer(200, challenge_json(call.links, chal), links=[f'<{call.links.authz(authz.id)}>;rel="up"'],
                  headers=headers)


def job_for(cfg: ACMEProvisionerConfig, acct: AccountRecord, authz: AuthorizationRecord,
            chal: ChallengeRecord) -> Job:
    """What the validator needs: the key authorization is the token and the account key's thumbprint."""
    return Job(chal.id, chal.type, authz.identifier_type, authz.identifier_value, chal.token,
               f"{chal.token}.{acct.thumbprint}", settings_for(cfg), address_policy(cfg))


def resume_stale(call: Call, authz: AuthorizationRecord, validator: Validator) -> bool:
    """Re-queue (or, out of attempts, fail) this authorization's challenges stuck in processing."""
    return resume_stale_challenges(call.store, call.provisioner.config, call.acct, authz, validator, call.now)


def resume_stale_challenges(store: ACMEStore, cfg: ACMEProvisionerConfig, acct: AccountRecord,
                            authz: AuthorizationRecord, validator: Validator, now: datetime) -> bool:
    touched = False
    for chal in authz.challenges:
        if chal.status != "processing" or chal.claimed_at is None or chal.claimed_at > now - STALE_AFTER:
            continue
        touched = True
        if chal.attempts >= MAX_ATTEMPTS:
            store.complete_challenge(chal.id, problem_document(
                "serverInternal", f"validation did not finish after {chal.attempts} attempts"), now)
        elif store.claim_stale_challenge(chal.id, chal.claimed_at, now):
            validator.submit(job_for(cfg, acct, authz, chal))
    return touched


def _time(value: object, name: str, now: datetime) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise Problem("malformed", f"{name} must be an RFC 3339 date-time string")
    try:
        return parse_time_or_duration(value, now, name)
    except BadRequest as exc:
        raise Problem("malformed", exc.message) from None
