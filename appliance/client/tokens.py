"""Minting step-style one-time tokens from the provisioner key."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from joserfc.jwk import ECKey, OKPKey, RSAKey

from appliance.client.http import CAClient, ClientError
from appliance.provisioners import jose

TOKEN_LIFETIME = 300  # seconds, as the step CLI
K8S_TOKEN_PATH = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")  # where a pod finds its token


def find_provisioner(client: CAClient, name: str, *, kind: str | None = None) -> dict[str, Any]:
    """The CA's provisioner named `name` (or, with `kind`, its first one of that type), from `/provisioners`."""
    cursor = ""
    while True:
        page = client.get_json(f"/provisioners?limit=100&cursor={cursor}")
        for p in page.get("provisioners", []):
            if (p.get("type") == kind) if kind is not None else (p.get("name") == name):
                return p
        cursor = page.get("nextCursor") or ""
        if not cursor:
            raise ClientError(f"the CA has no {kind} provisioner" if kind else
                              f"the CA has no provisioner named {name!r}")


class WrongProvisionerType(ClientError):
    """The provisioner named is not of the type the token needs (`kind` says which it is)."""

    def __init__(self, name: str, kind: object, wanted: str) -> None:
        super().__init__(f"provisioner {name!r} is of type {kind}, not {wanted}")
        self.kind = kind


def provisioner_key(client: CAClient, name: str, password: bytes | None,
                    key_file: Path | None, found: dict[str, Any] | None = None) -> tuple[str, jose.PublicKey]:
    """The provisioner's private JWK: from --provisioner-key, else the CA's encrypted copy."""
    prov = found or find_provisioner(client, name)
    if prov.get("type") != "JWK":
        raise WrongProvisionerType(name, prov.get("type"), "JWK")
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
               audience: str, root_fingerprint: str | None, extra: dict[str, Any] | None = None) -> str:
    """A JWK provisioner's one-time token (`extra`: more claims, such as step's `step.ssh`)."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": provisioner, "sub": subject, "aud": audience, "sans": sans,
                              "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME, "jti": secrets.token_hex(32),
                              **(extra or {})}
    if root_fingerprint:
        claims["sha"] = root_fingerprint
    return jose.sign_token(key, claims, kid=kid)


def x5c_token(cert_file: Path, key_file: Path, password: bytes | None, provisioner: str, subject: str,
              sans: list[str], audience: str, root_fingerprint: str | None) -> str:
    """An X5C provisioner token as the step CLI makes it: signed by the key of `cert_file`'s leaf, the chain in
    the `x5c` header, `aud` the sign URL with `#x5c/<provisioner>`."""
    try:
        chain = x509.load_pem_x509_certificates(cert_file.read_bytes())
    except (OSError, ValueError) as exc:
        raise ClientError(f"--x5c-cert {cert_file}: not a PEM certificate chain: {exc}") from None
    try:
        private = serialization.load_pem_private_key(key_file.read_bytes(), password)
    except TypeError:
        raise ClientError(f"--x5c-key {key_file} is encrypted: give its password with --password-file") from None
    except (OSError, ValueError, UnsupportedAlgorithm) as exc:
        raise ClientError(f"--x5c-key {key_file}: cannot read the private key: {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ClientError(f"--x5c-key {key_file}: a {type(private).__name__} cannot sign tokens")
    if private.public_key() != chain[0].public_key():
        raise ClientError(f"--x5c-key {key_file} is not the key of the first certificate in {cert_file}")
    key = _jwk_of(private)
    now = int(time.time())
    claims = {"iss": provisioner, "sub": subject, "aud": f"{audience}#x5c/{provisioner}", "sans": sans,
              "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME, "jti": secrets.token_hex(32)}
    if root_fingerprint:
        claims["sha"] = root_fingerprint
    x5c = [base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode() for c in chain]
    return jose.sign_token(key, claims, header={"x5c": x5c})


def _jwk_of(private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> jose.PublicKey:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(private)
    if isinstance(private, rsa.RSAPrivateKey):
        return RSAKey.import_key(private)
    return OKPKey.import_key(private)


def k8s_token(path: Path) -> str:
    """The pod's service-account token, as it is (`--k8ssa-token-path`, step's default path otherwise)."""
    try:
        value = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read the service-account token {path}: {exc}") from None
    if value.count(".") != 2:
        raise ClientError(f"{path} does not hold a service-account token (a JWT)")
    return value


def sshpop_token(cert_file: Path, key_file: Path, provisioner: str, subject: str, audience: str) -> str:
    """An SSHPOP token as the step CLI makes it: the SSH certificate (base64 of its blob) in the `sshpop` header,
    signed by its private key (OpenSSH or PEM format, unencrypted: a host key), `aud` with `#sshpop/<name>`."""
    try:
        kind, blob = cert_file.read_text().split()[:2]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ClientError(f"{cert_file}: not an SSH certificate file: {exc}") from None
    if not kind.endswith("-cert-v01@openssh.com"):
        raise ClientError(f"{cert_file} holds a {kind} key, not an SSH certificate")
    try:
        data = key_file.read_bytes()
        private: Any = serialization.load_ssh_private_key(data, None) if b"OPENSSH PRIVATE KEY" in data else \
            serialization.load_pem_private_key(data, None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ClientError(f"{key_file}: cannot read the private key (unencrypted OpenSSH or PEM): {exc}") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
        raise ClientError(f"{key_file}: a {type(private).__name__} cannot sign tokens")
    now = int(time.time())
    claims = {"iss": provisioner, "sub": subject, "aud": f"{audience}#sshpop/{provisioner}",
              "iat": now, "nbf": now, "exp": now + TOKEN_LIFETIME, "jti": secrets.token_hex(32)}
    return jose.sign_token(_jwk_of(private), claims, header={jose.SSHPOP: blob})
