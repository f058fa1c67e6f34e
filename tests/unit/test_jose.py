"""The provisioner key and token layer: step-compatible JWE, and an algorithm allow-list."""

import base64
import json

import pytest
from joserfc import jws
from joserfc.jwk import ECKey, OctKey, RSAKey

from appliance.provisioners import jose


def _b64(obj: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def test_encrypted_key_round_trip_has_step_headers():
    key = jose.generate_provisioner_key()
    token = jose.encrypt_jwk(key, b"correct horse")
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "PBES2-HS256+A128KW"
    assert header["enc"] == "A256GCM"
    assert header["cty"] == "jwk+json"
    assert header["p2c"] == 100_000
    back = jose.decrypt_jwk(token, b"correct horse")
    assert back.is_private and back.thumbprint() == key.thumbprint()


def test_wrong_password_is_a_clear_error():
    token = jose.encrypt_jwk(jose.generate_provisioner_key(), b"one")
    with pytest.raises(jose.JOSEError, match="wrong password"):
        jose.decrypt_jwk(token, b"two")


def test_public_jwk_looks_like_step():
    key = jose.generate_provisioner_key()
    pub = jose.public_jwk(key)
    assert pub["use"] == "sig" and pub["alg"] == "ES256" and pub["crv"] == "P-256"
    assert pub["kid"] == key.thumbprint()
    assert "d" not in pub


def test_verify_accepts_own_algorithm_only():
    key = jose.generate_provisioner_key()
    tok = jose.sign_token(key, {"sub": "x"})
    pub = jose.import_jwk(jose.public_jwk(key))
    assert jose.verify_token(tok, pub)[1]["sub"] == "x"


def test_alg_none_is_refused():
    key = jose.import_jwk(jose.public_jwk(jose.generate_provisioner_key()))
    forged = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64({'sub': 'x'})}."
    with pytest.raises(jose.JOSEError, match="not allowed"):
        jose.verify_token(forged, key)


def test_hs256_with_the_public_key_is_refused():
    priv = jose.generate_provisioner_key()
    pub_dict = jose.public_jwk(priv)
    secret = OctKey.import_key(json.dumps(pub_dict).encode())
    forged = jws.serialize_compact({"alg": "HS256"}, json.dumps({"sub": "x"}), secret, algorithms=["HS256"])
    with pytest.raises(jose.JOSEError, match="not allowed"):
        jose.verify_token(forged, jose.import_jwk(pub_dict))


def test_signature_by_another_key_is_refused():
    tok = jose.sign_token(jose.generate_provisioner_key(), {"sub": "x"})
    other = jose.import_jwk(jose.public_jwk(jose.generate_provisioner_key()))
    with pytest.raises(jose.JOSEError, match="signature"):
        jose.verify_token(tok, other)


def test_rsa_and_ed25519_keys_have_their_own_algorithms():
    assert jose.allowed_algorithms(RSAKey.generate_key(2048, private=True))[0] == "RS256"
    assert jose.allowed_algorithms(ECKey.generate_key("P-384", private=True)) == ["ES384"]


@pytest.mark.parametrize("token", ["", "a.b", "not.base64!.x", f"{_b64({'alg': 'ES256'})}.@@@.x"])
def test_peek_rejects_garbage(token):
    with pytest.raises(jose.JOSEError):
        jose.peek(token)


@pytest.mark.parametrize("header", [{"crit": None}, {"crit": 5}, {"crit": [None]}, {"x5cInsecure": None}])
def test_a_header_joserfc_chokes_on_is_a_malformed_token(header):
    """Found by fuzzing: joserfc raised TypeError on `"crit": null`, which reached the client as a 500."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = RSAKey.generate_key(2048, private=True)
    signing_input = f"{_b64({'alg': 'RS256', **header})}.{_b64({'sub': 'x'})}"
    signature = key.private_key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    token = f"{signing_input}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"
    with pytest.raises(jose.JOSEError):
        jose.verify_token(token, RSAKey.import_key(key.as_dict(private=False)))
