"""ACME's JWS checks (RFC 8555 §6.2): each refusal has the RFC's problem type and says why."""

from __future__ import annotations

import base64
import json
import warnings
from typing import Any

import pytest
from joserfc import jws as rfc_jws
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.registry import HeaderParameter, is_str

from appliance.acme import jws
from appliance.acme.problems import Problem

URL = "https://ca.test/acme/acme/new-order"
KID = "https://ca.test/acme/acme/account/abc"
_REG = {"nonce": HeaderParameter("nonce", is_str), "url": HeaderParameter("url", is_str)}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(key: Any, alg: str, payload: bytes = b"{}", *, url: str = URL, nonce: str | None = "n1",
         kid: str | None = None, jwk: bool = True, extra: dict[str, Any] | None = None) -> bytes:
    header: dict[str, Any] = {"alg": alg, "url": url, **(extra or {})}
    if nonce is not None:
        header["nonce"] = nonce
    if kid is not None:
        header["kid"] = kid
    elif jwk:
        header["jwk"] = key.as_dict(private=False)
    registry = rfc_jws.JWSRegistry(header_registry=dict(_REG), algorithms=[alg], strict_check_header=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = rfc_jws.serialize_json({"protected": header}, payload, key, algorithms=[alg], registry=registry)
    return json.dumps(out).encode()


KEYS = [(ECKey.generate_key("P-256", private=True), "ES256"), (ECKey.generate_key("P-384", private=True), "ES384"),
        (RSAKey.generate_key(2048, private=True), "RS256"), (OKPKey.generate_key("Ed25519", private=True), "EdDSA")]


def verify(body: bytes, *, want: str = "jwk", url: str = URL, nonce_ok: bool = True,
           kid_key: Any = None) -> jws.VerifiedJWS:
    def key_for_kid(kid: str) -> Any:
        if kid_key is None:
            raise Problem("accountDoesNotExist", f"no account {kid}")
        return kid_key

    return jws.verify_request(body, url, want=want, key_for_kid=key_for_kid, consume_nonce=lambda n: nonce_ok)


def kind_of(body: bytes, **kw: Any) -> Problem:
    with pytest.raises(Problem) as caught:
        verify(body, **kw)
    return caught.value


@pytest.mark.parametrize(("key", "alg"), KEYS, ids=[a for _, a in KEYS])
def test_each_allowed_algorithm_verifies_with_its_key(key: Any, alg: str) -> None:
    got = verify(sign(key, alg, b'{"a": 1}'))
    assert got.json() == {"a": 1} and got.thumbprint == key.thumbprint() and "d" not in got.jwk
    assert verify(sign(key, alg, b"")).post_as_get


def test_kid_requests_use_the_accounts_key() -> None:
    key = ECKey.generate_key("P-256", private=True)
    got = verify(sign(key, "ES256", kid=KID), want="kid", kid_key=ECKey.import_key(key.as_dict(private=False)))
    assert got.kid == KID
    assert kind_of(sign(key, "ES256", kid=KID), want="kid").kind == "accountDoesNotExist"


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", "ES512", "PS256"])
def test_algorithms_outside_the_list_are_bad_signature_algorithm(alg: str) -> None:
    key = ECKey.generate_key("P-256", private=True)
    body = json.loads(sign(key, "ES256"))
    header = json.loads(base64.urlsafe_b64decode(body["protected"] + "=="))
    header["alg"] = alg
    body["protected"] = b64(json.dumps(header).encode())
    problem = kind_of(json.dumps(body).encode())
    assert problem.kind == "badSignatureAlgorithm" and problem.extra["algorithms"] == list(jws.ALGORITHMS)


def test_algorithm_must_fit_the_key_not_the_header() -> None:
    """An RSA key cannot be used with ES256, whatever the header claims (no algorithm confusion)."""
    rsa, ec = RSAKey.generate_key(2048, private=True), ECKey.generate_key("P-256", private=True)
    body = json.loads(sign(ec, "ES256"))
    header = json.loads(base64.urlsafe_b64decode(body["protected"] + "=="))
    header["jwk"] = rsa.as_dict(private=False)
    body["protected"] = b64(json.dumps(header).encode())
    problem = kind_of(json.dumps(body).encode())
    assert problem.kind == "badSignatureAlgorithm" and "RS256" in problem.detail


def test_url_must_be_the_request_url() -> None:
    key = ECKey.generate_key("P-256", private=True)
    problem = kind_of(sign(key, "ES256", url="https://ca.test/acme/acme/new-account"))
    assert problem.kind == "unauthorized" and URL in problem.detail and problem.status == 403


def test_nonce_missing_or_refused_is_bad_nonce() -> None:
    key = ECKey.generate_key("P-256", private=True)
    assert kind_of(sign(key, "ES256", nonce=None)).kind == "badNonce"
    assert kind_of(sign(key, "ES256"), nonce_ok=False).kind == "badNonce"


def test_nonce_is_not_consumed_for_a_bad_signature() -> None:
    key = ECKey.generate_key("P-256", private=True)
    body = json.loads(sign(key, "ES256"))
    body["payload"] = b64(b'{"evil": true}')
    consumed: list[str] = []

    def consume(nonce: str) -> bool:
        consumed.append(nonce)
        return True

    with pytest.raises(Problem) as caught:
        jws.verify_request(json.dumps(body).encode(), URL, want="jwk", key_for_kid=lambda k: key,
                           consume_nonce=consume)
    assert caught.value.kind == "malformed" and "signature" in caught.value.detail and consumed == []


def test_exactly_one_of_jwk_and_kid_and_the_one_the_route_wants() -> None:
    key = ECKey.generate_key("P-256", private=True)
    both = sign(key, "ES256", kid=KID, extra={"jwk": key.as_dict(private=False)})
    assert "exactly one" in kind_of(both).detail
    assert "exactly one" in kind_of(sign(key, "ES256", jwk=False)).detail
    assert "kid" in kind_of(sign(key, "ES256"), want="kid").detail
    assert "jwk" in kind_of(sign(key, "ES256", kid=KID), want="jwk", kid_key=key).detail


@pytest.mark.parametrize(("body", "words"), [
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (json.dumps({"signatures": [], "payload": ""}).encode(), "flattened"),
    (json.dumps({"protected": "e30", "payload": "", "signature": "", "header": {}}).encode(), "unprotected"),
    (json.dumps({"protected": "e30", "payload": ""}).encode(), "signature"),
    (json.dumps({"protected": "e30=", "payload": "", "signature": ""}).encode(), "base64url"),
    (json.dumps({"protected": b64(b"[1]"), "payload": "", "signature": ""}).encode(), "JSON object"),
])
def test_structure_errors_are_malformed(body: bytes, words: str) -> None:
    problem = kind_of(body)
    assert problem.kind == "malformed" and words in problem.detail


@pytest.mark.filterwarnings("ignore:Key size")
def test_account_keys_must_be_public_and_strong() -> None:
    with pytest.raises(Problem, match="private key"):
        jws.account_key(ECKey.generate_key("P-256", private=True).as_dict(private=True))
    with pytest.raises(Problem, match="P-256 or P-384"):
        jws.account_key(ECKey.generate_key("P-521", private=False).as_dict(private=False))
    weak = RSAKey.generate_key(1024, private=True, auto_kid=False).as_dict(private=False)
    with pytest.raises(Problem, match="2048"):
        jws.account_key(weak)
    with pytest.raises(Problem) as caught:
        jws.account_key({"kty": "oct", "k": "AAAA"})
    assert caught.value.kind == "badPublicKey"
