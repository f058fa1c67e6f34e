"""Accounts (RFC 8555 §7.3): create or find by key, update contact, deactivate, and roll the key over."""

from __future__ import annotations

from typing import Any

from appliance.acme import jws
from appliance.acme.call import Answer, Call
from appliance.acme.eab import check_binding
from appliance.acme.objects import account_json
from appliance.acme.problems import Problem
from appliance.audit import AuditEvent
from appliance.store.acme import AccountKeyInUse, EABKeyUsed

MAX_CONTACTS = 10
MAX_CONTACT_LENGTH = 255


def contacts(raw: object) -> list[str]:
    """mailto: URLs only (what an internal CA can use), each a single address."""
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise Problem("malformed", "contact must be a list of mailto: URLs")
    if len(raw) > MAX_CONTACTS:
        raise Problem("malformed", f"at most {MAX_CONTACTS} contacts")
    for c in raw:
        if not c.startswith("mailto:"):
            raise Problem("unsupportedContact", f"contact {c[:64]!r} is not a mailto: URL")
        addr = c[len("mailto:"):]
        if len(c) > MAX_CONTACT_LENGTH or "@" not in addr or "," in addr or "?" in addr or not addr.strip():
            raise Problem("invalidContact", f"contact {c[:64]!r} is not a single email address")
    return list(dict.fromkeys(raw))


def new_account(call: Call) -> Answer:
    payload = call.jws.json()
    store, links, prov = call.store, call.links, call.provisioner
    if payload.get("onlyReturnExisting") is True:
        found = store.account_by_thumbprint(prov.name, call.jws.thumbprint)
        if found is None:
            raise Problem("accountDoesNotExist", "no account exists with this key (onlyReturnExisting)")
        return Answer(200, account_json(links, found), headers={"Location": links.account(found.id)})
    tos = prov.config.termsOfService
    if tos and payload.get("termsOfServiceAgreed") is not True:
        raise Problem("userActionRequired", f"agree to the terms of service at {tos} (termsOfServiceAgreed)",
                      extra={"instance": tos})
    existing = store.account_by_thumbprint(prov.name, call.jws.thumbprint)
    if existing is not None:  # §7.3.1: the account this key already has, whatever else was sent
        return Answer(200, account_json(links, existing), headers={"Location": links.account(existing.id)})
    binding = payload.get("externalAccountBinding")
    eab_key_id = None
    if binding is not None:
        eab_key_id = check_binding(store, prov.name, binding, call.jws.header["url"], call.jws.thumbprint)
    elif prov.config.requireEAB:
        raise Problem("externalAccountRequired", f"provisioner {prov.name!r} requires an external account "
                      "binding: ask the CA's operator for a key (hsmca acme eab add)")
    try:
        acct, created = store.create_account(prov.name, call.jws.thumbprint, call.jws.jwk,
                                             contacts(payload.get("contact")), call.now, eab_key_id=eab_key_id)
    except EABKeyUsed as exc:
        raise Problem("unauthorized", str(exc)) from None
    if created:
        _audit(call, "acme.account.new", acct.id, details={"eabKeyId": eab_key_id} if eab_key_id else None)
    return Answer(201 if created else 200, account_json(links, acct), headers={"Location": links.account(acct.id)})


def update_account(call: Call, account_id: str) -> Answer:
    acct = call.acct
    if acct.id != account_id:
        raise Problem("unauthorized", "the account URL is not the account that signed the request (kid)")
    if call.jws.post_as_get:
        return Answer(200, account_json(call.links, acct), headers={"Location": call.links.account(acct.id)})
    payload = call.jws.json()
    status = payload.get("status")
    if status is not None and status != "deactivated":
        raise Problem("malformed", f"an account's status can only be changed to deactivated, not {status!r}")
    new_contact = contacts(payload["contact"]) if "contact" in payload else None
    updated = call.store.update_account(acct.id, contact=new_contact, status=status)
    if updated is None:
        raise Problem("unauthorized", "the account is not valid any more")
    if status == "deactivated":
        _audit(call, "acme.account.deactivate", acct.id)
    return Answer(200, account_json(call.links, updated), headers={"Location": call.links.account(acct.id)})


def list_orders(call: Call, account_id: str) -> Answer:
    if call.acct.id != account_id:
        raise Problem("unauthorized", "an account may only list its own orders")
    ids = call.store.order_ids(account_id)
    return Answer(200, {"orders": [call.links.order(i) for i in ids]})


def key_change(call: Call) -> Answer:
    """RFC 8555 §7.3.5: the payload is a JWS by the new key over {account, oldKey}."""
    acct = call.acct
    inner = jws.parse(call.jws.payload)
    header = inner.header
    if "jwk" not in header or "kid" in header:
        raise Problem("malformed", "the inner JWS of a key change must carry the new key as jwk (and no kid)")
    if "nonce" in header:
        raise Problem("malformed", "the inner JWS of a key change must not have a nonce")
    if inner.url != call.jws.header.get("url"):
        raise Problem("malformed", "the inner JWS url must equal the outer JWS url")
    new_key = jws.account_key(header["jwk"])
    verified = jws.verify(inner, new_key)
    body: dict[str, Any] = verified.json()
    if body.get("account") != call.jws.kid:
        raise Problem("malformed", "the key change names another account than the one that signed it")
    try:
        old = jws.account_key(body.get("oldKey"))
    except Problem:
        raise Problem("malformed", "the key change's oldKey is not a usable JWK") from None
    if old.thumbprint() != acct.thumbprint:
        raise Problem("malformed", "oldKey is not the account's current key")
    if verified.thumbprint == acct.thumbprint:
        raise Problem("malformed", "the new key is the account's current key")
    try:
        done = call.store.change_key(acct.id, acct.thumbprint, verified.thumbprint, verified.jwk)
    except AccountKeyInUse as exc:
        raise Problem("malformed", "the new key is already bound to another account", 409,
                      headers={"Location": call.links.account(exc.account_id)}) from None
    if not done:
        raise Problem("unauthorized", "the account key changed meanwhile, or the account is not valid")
    _audit(call, "acme.account.key-change", acct.id, details={"thumbprint": verified.thumbprint})
    fresh = call.store.account(acct.id)
    assert fresh is not None
    return Answer(200, account_json(call.links, fresh), headers={"Location": call.links.account(acct.id)})


def _audit(call: Call, action: str, account_id: str, details: dict[str, Any] | None = None) -> None:
    call.ra.record(AuditEvent(
        action=action, decision="allowed", request_id=call.ctx.request_id, remote_addr=call.ctx.remote_addr,
        provisioner=call.provisioner.name, subject=call.links.account(account_id),
        details={"thumbprint": call.jws.thumbprint, **(details or {})}))
