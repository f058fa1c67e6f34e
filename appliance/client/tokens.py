"""Minting step-style one-time tokens from the provisioner key."""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from appliance.client.http import CAClient, ClientError
from appliance.provisioners import jose

TOKEN_LIFETIME = 300  # seconds, as the step CLI


def find_provisioner(client: CAClient, name: str) -> dict[str, Any]:
    cursor = ""
    while True:
        page = client.get_json(f"/provisioners?limit=100&cursor={cursor}")
        for p in page.get("provisioners", []):
            if p.get("name") == name:
                return p
        cursor = page.get("nextCursor") or ""
        if not cursor:
            raise ClientError(f"the CA has no provisioner named {name!r}")


def provisioner_key(client: CAClient, name: str, password: bytes | None,
                    key_file: Path | None) -> tuple[str, jose.PublicKey]:
    """The provisioner's private JWK: from --provisioner-key, else the CA's encrypted copy."""
    prov = find_provisioner(client, name)
    if prov.get("type") != "JWK":
        raise ClientError(f"provisioner {name!r} is of type {prov.get('type')}, not JWK")
    kid = prov["key"]["kid"]
    if key_file is not None:
        text = key_file.read_text().strip()
        if text.startswith("{"):
            try:
                key = jose.import_jwk(json.loads(text))
            except ValueError as exc:
                raise ClientError(f"{key_file} is not a JSON Web Key: {exc}") from None
        else:
            key = jose.decrypt_jwk(text, _need(password))
    else:
        encrypted = prov.get("encryptedKey") or client.get_json(
            f"/provisioners/{kid}/encrypted-key")["key"]
        key = jose.decrypt_jwk(encrypted, _need(password))
    if not key.is_private:
        raise ClientError("the provisioner key file holds a public key only")
    if key.thumbprint() != kid and jose.public_jwk(key).get("kid") != kid:
        raise ClientError(f"the key does not belong to provisioner {name!r} (kid {kid})")
    return kid, key


def _need(password: bytes | None) -> bytes:
    if not password:
        raise ClientError("the provisioner key is encrypted: give --password-file")
    return password


def sign_token(key: jose.PublicKey, kid: str, provisioner: str, subject: str, sans: list[str],
               audience: str, root_fingerprint: str | None) -> str:
    now = int(time.time())
    claims = {"iss": provisioner, "sub": subject, "aud": audience, "sans": sans,
              "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME, "jti": secrets.token_hex(32)}
    if root_fingerprint:
        claims["sha"] = root_fingerprint
    return jose.sign_token(key, claims, kid=kid)
