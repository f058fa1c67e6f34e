"""The JWK provisioner's token checks, as step-ca makes them (no HSM needed)."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from appliance.errors import Unauthorized
from appliance.provisioners import Provisioners, jose
from appliance.provisioners.base import sign_audiences, strip_port
from appliance.provisioners.jwk import JWKProvisioner

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=timezone.utc)
AUD = sign_audiences(["ca.internal", "10.0.0.5"])
KEY = jose.generate_provisioner_key()
PROV = JWKProvisioner("admin", jose.public_jwk(KEY))


def tok(**over: Any) -> str:
    t = int(NOW.timestamp())
    claims = {"iss": "admin", "sub": "svc.internal", "aud": "https://ca.internal:9000/1.0/sign",
              "sans": ["svc.internal", "10.1.1.1"], "iat": t, "nbf": t, "exp": t + 300,
              "jti": secrets.token_hex(32)}
    claims.update(over)
    return jose.sign_token(KEY, {k: v for k, v in claims.items() if v is not None})


def test_valid_token_grants_its_sans():
    auth = PROV.verify_token(tok(), AUD, NOW)
    assert auth.subject == "svc.internal" and auth.sans == ("svc.internal", "10.1.1.1")
    assert auth.provisioner == "admin" and len(auth.token.jti) == 64
    # the id is kept a minute past expiry: the leeway must not reopen a replay window
    assert auth.token.expires_at == NOW + timedelta(seconds=300) + timedelta(minutes=1)


def test_sans_default_to_the_subject_and_audiences_ignore_the_port():
    auth = PROV.verify_token(tok(sans=None, aud=["https://ca.internal/sign"]), AUD, NOW)
    assert auth.sans == ("svc.internal",)
    PROV.verify_token(tok(aud="https://[10.0.0.5]:443/1.0/sign".replace("[10.0.0.5]", "10.0.0.5")), AUD, NOW)
    assert strip_port("https://ca.internal:9000/1.0/sign") == "https://ca.internal/1.0/sign"


@pytest.mark.parametrize("over, message", [
    ({"exp": int(NOW.timestamp()) - 61}, "expired"),
    ({"nbf": int(NOW.timestamp()) + 120}, "not valid before"),
    ({"iat": int(NOW.timestamp()) + 120}, "issued in the future"),
    ({"exp": None}, "no 'exp'"),
    ({"exp": "tomorrow"}, "NumericDate"),
    ({"iss": "someone-else"}, "issuer"),
    ({"aud": "https://evil.example/1.0/sign"}, "audience"),
    ({"aud": "https://ca.internal/1.0/revoke"}, "audience"),
    ({"aud": None}, "aud"),
    ({"sub": ""}, "subject"),
    ({"jti": None}, "one-time id"),
    ({"jti": "x" * 257}, "one-time id"),
    ({"sans": "svc.internal"}, "list of names"),
])
def test_bad_claims_are_refused_with_the_reason(over, message):
    with pytest.raises(Unauthorized, match=message):
        PROV.verify_token(tok(**over), AUD, NOW)


def test_leeway_is_one_minute():
    t = int(NOW.timestamp())
    PROV.verify_token(tok(exp=t - 59), AUD, NOW)
    PROV.verify_token(tok(nbf=t + 59), AUD, NOW)


def test_collection_finds_by_issuer_and_kid():
    provs = Provisioners([PROV])
    assert provs.for_token(tok()) is PROV
    other = jose.generate_provisioner_key()
    forged = jose.sign_token(other, {"iss": "admin", "sub": "x"})
    with pytest.raises(Unauthorized, match="key id"):
        provs.for_token(forged)
    with pytest.raises(Unauthorized, match="cannot parse"):
        provs.for_token("garbage")


def test_ca_json_must_hold_only_the_public_key():
    with pytest.raises(jose.JOSEError, match="public key only"):
        JWKProvisioner("admin", KEY.as_dict(private=True))


def test_pagination_like_step():
    provs = Provisioners([JWKProvisioner(f"p{i}", jose.public_jwk(jose.generate_provisioner_key())) for i in range(3)])
    page, nxt = provs.page("", 2, published=True)
    assert [p["name"] for p in page] == ["p0", "p1"] and nxt == "2"
    page, nxt = provs.page(nxt, 2, published=True)
    assert [p["name"] for p in page] == ["p2"] and nxt == ""
