"""The OpenID provider harness itself (oidc_idp.py): discovery, the code flow, ID tokens, key rotation, counters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet

from tests.integration.oidc_idp import (
    IdP,
    LoginError,
    available,
    browser_login,
    code_flow_id_token,
    make_signing_key,
    native_client,
    start_idp,
)

pytestmark = pytest.mark.skipif(available() is not None, reason=available() or "")

CLIENTS = [native_client("hsmca-cli", "s3cret/+&"), native_client("public-cli")]
USERS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "groups": ["ops", "pki-admins"]},
    "bob": {"email": "bob@example.com", "email_verified": False, "groups": []},
}


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdP]:
    with start_idp(tmp_path_factory.mktemp("idp"), clients=CLIENTS, users=USERS) as running:
        yield running


def verify(idp: IdP, id_token: str) -> jwt.Token:
    keys = KeySet.import_key_set(requests.get(idp.jwks_uri, timeout=10).json())
    token = jwt.decode(id_token, keys, algorithms=["RS256"])
    jwt.JWTClaimsRegistry(iss={"essential": True, "value": idp.issuer}).validate(token.claims)
    return token


def test_discovery(idp: IdP) -> None:
    doc = requests.get(idp.configuration_endpoint, timeout=10).json()
    assert doc["issuer"] == idp.issuer
    assert doc["authorization_endpoint"] == idp.authorization_endpoint
    assert doc["token_endpoint"] == idp.token_endpoint
    assert doc["jwks_uri"] == idp.jwks_uri
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert "code" in doc["response_types_supported"]
    assert "RS256" in doc["id_token_signing_alg_values_supported"]
    assert {"openid", "email", "groups"} <= set(doc["scopes_supported"])
    assert {"email", "email_verified", "groups"} <= set(doc["claims_supported"])


@pytest.mark.parametrize(("client_id", "secret"), [("hsmca-cli", "s3cret/+&"), ("public-cli", None)])
def test_id_token(idp: IdP, client_id: str, secret: str | None) -> None:
    token = verify(idp, code_flow_id_token(idp, client_id, secret, "alice", nonce="nonce-123"))
    assert token.header["alg"] == "RS256" and token.header["kid"] == "key-1"
    claims: dict[str, Any] = token.claims
    assert claims["iss"] == idp.issuer and claims["aud"] == client_id and claims["sub"] == "alice"
    assert claims["nonce"] == "nonce-123"
    assert claims["email"] == "alice@example.com" and claims["email_verified"] is True
    assert claims["groups"] == ["ops", "pki-admins"]


def test_unknown_login_refused(idp: IdP) -> None:
    with pytest.raises(LoginError, match='unknown user "mallory"'):
        code_flow_id_token(idp, "hsmca-cli", "s3cret/+&", "mallory")


def auth_url(idp: IdP, **params: str) -> str:
    base = {"response_type": "code", "scope": "openid", "code_challenge": "A" * 43, "code_challenge_method": "S256"}
    return f"{idp.authorization_endpoint}?{urlencode({**base, **params})}"


def test_error_pages(idp: IdP) -> None:
    with pytest.raises(LoginError, match="invalid_client"):
        browser_login(auth_url(idp, client_id="nobody", redirect_uri="http://127.0.0.1:9"), "alice")
    with pytest.raises(LoginError, match="redirect_uri"):  # any loopback port, but no path
        browser_login(auth_url(idp, client_id="hsmca-cli", redirect_uri="http://127.0.0.1:9/callback"), "alice")


def test_stats_count_jwks_and_discovery(idp: IdP) -> None:
    before = idp.stats()
    requests.get(idp.jwks_uri, timeout=10).raise_for_status()
    requests.get(idp.jwks_uri, timeout=10).raise_for_status()
    requests.get(idp.configuration_endpoint, timeout=10).raise_for_status()
    code_flow_id_token(idp, "public-cli", None, "bob")  # goes to the endpoints directly: counts nothing
    assert idp.stats() == {"jwks": before["jwks"] + 2, "discovery": before["discovery"] + 1}


def test_restart_with_rotated_keys(tmp_path: Path) -> None:
    with start_idp(tmp_path, clients=CLIENTS, users=USERS) as idp:
        issuer, old = idp.issuer, idp.keys[0]
        assert verify(idp, code_flow_id_token(idp, "hsmca-cli", "s3cret/+&", "bob")).header["kid"] == "key-1"
        idp.restart([make_signing_key("key-2"), old])
        assert idp.issuer == issuer and requests.get(idp.configuration_endpoint, timeout=10).json()["issuer"] == issuer
        token = verify(idp, code_flow_id_token(idp, "hsmca-cli", "s3cret/+&", "bob"))
        assert token.header["kid"] == "key-2"
        assert [k["kid"] for k in requests.get(idp.jwks_uri, timeout=10).json()["keys"]] == ["key-2", "key-1"]
        assert idp.stats() == {"jwks": 2, "discovery": 1}  # counted since the restart
