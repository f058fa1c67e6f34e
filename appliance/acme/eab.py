"""External account binding (RFC 8555 §7.3.4): a new account proves it holds a key the operator handed out.

The binding is a JWS inside the newAccount payload: MAC'd (HS256/384/512) with the operator's key, its `kid`
the key's id, its `url` the newAccount URL, no nonce, and its payload the account's own public key. The key
is bound to the account in the transaction that creates it, so one key makes one account.
"""

from __future__ import annotations

import json
import warnings
from typing import Any

from joserfc import jws as rfc_jws
from joserfc.errors import JoseError
from joserfc.jwk import OctKey
from joserfc.registry import HeaderParameter, is_str

from appliance.acme import jws
from appliance.acme.problems import Problem
from appliance.store.acme import ACMEStore

MAC_ALGORITHMS = ("HS256", "HS384", "HS512")


def check_binding(store: ACMEStore, provisioner: str, binding: object, request_url: str,
                  account_thumbprint: str) -> str:
    """The id of the EAB key that vouches for this account key; unauthorized or malformed otherwise."""
    if not isinstance(binding, dict):
        raise Problem("malformed", "externalAccountBinding must be a flattened JWS object")
    parsed = jws.parse(json.dumps(binding).encode())
    header = parsed.header
    alg, kid = header.get("alg"), header.get("kid")
    if alg not in MAC_ALGORITHMS:
        raise Problem("badSignatureAlgorithm", f"the external account binding must be MAC'd with one of "
                      f"{', '.join(MAC_ALGORITHMS)}, not {alg!r}", extra={"algorithms": list(MAC_ALGORITHMS)})
    if "nonce" in header:
        raise Problem("malformed", "the external account binding must not have a nonce")
    if parsed.url != request_url:
        raise Problem("unauthorized", "the external account binding's url must be the newAccount URL")
    if not isinstance(kid, str) or not kid:
        raise Problem("malformed", "the external account binding must name its key (kid)")
    key = store.eab_key(kid)
    if key is None or key.provisioner != provisioner:
        raise Problem("unauthorized", f"external account key {kid[:64]!r} is not known to provisioner "
                      f"{provisioner!r}")
    if key.account_id is not None:
        raise Problem("unauthorized", f"external account key {kid[:64]!r} is already bound to an account")
    mac_key = _oct_key(jws.b64decode(key.hmac_key, "the stored HMAC key"))
    value: rfc_jws.FlattenedJSONSerialization = {
        "protected": parsed.protected_b64, "payload": parsed.payload_b64, "signature": parsed.signature_b64}
    try:
        registry = rfc_jws.JWSRegistry(header_registry={"url": HeaderParameter("ACME URL", is_str)}, algorithms=[alg])
        result = rfc_jws.deserialize_json(value, mac_key, algorithms=[alg], registry=registry)
    except (JoseError, ValueError) as exc:
        raise Problem("unauthorized", f"the external account binding's MAC does not verify: {exc}") from None
    try:
        bound: Any = json.loads(result.payload)
        bound_thumbprint = jws.account_key(bound).thumbprint()
    except (ValueError, TypeError, RecursionError, Problem):
        raise Problem("malformed", "the external account binding's payload must be the account's JWK") from None
    if bound_thumbprint != account_thumbprint:
        raise Problem("unauthorized", "the external account binding vouches for another key than the account's")
    return key.key_id


def _oct_key(raw: bytes) -> OctKey:
    with warnings.catch_warnings():  # joserfc warns about short keys; ours are 256 random bits
        warnings.simplefilter("ignore")
        return OctKey.import_key(raw)
