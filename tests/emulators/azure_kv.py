"""A small emulator of Azure Key Vault's keys REST API, for tests only: it is NOT Microsoft's service.

Azure Key Vault has no server that installs here, so hsmca's tests drive the real `azure-keyvault-keys`
client over HTTPS against this stand-in for the documented API (learn.microsoft.com/rest/api/keyvault/keys):
the 401 bearer challenge (`resource="https://vault.azure.net"`, as the service sends), then create, get, update
(enable/disable) and sign a digest. Keys are software keys in memory. A disabled key refuses to sign with 403
`Forbidden`/`KeyDisabled`, as the service documents. The `--denied-token` is answered with 403, as a caller
without permission is.

Which bearer tokens it takes depends on how it runs:
- with `--identity-port N --identity-header SECRET` it also serves, over plain HTTP on 127.0.0.1:N, App Service's
  documented managed-identity token endpoint (learn.microsoft.com/azure/app-service/overview-managed-identity,
  "REST endpoint reference"): `GET http://127.0.0.1:N/msi/token?api-version=2019-08-01&resource=R` with the
  header `X-IDENTITY-HEADER: SECRET` answers `{access_token, expires_on, resource, token_type, client_id}`.
  A process given `IDENTITY_ENDPOINT=http://127.0.0.1:N/msi/token` and `IDENTITY_HEADER=SECRET` finds it through
  azure-identity's DefaultAzureCredential as it would on App Service. The vault then accepts only unexpired tokens
  that endpoint issued for https://vault.azure.net; any other token is answered 401 with the challenge, as
  Key Vault answers a token it cannot validate.
- without, it accepts any bearer token but the denied one (for in-process tests with a static credential).

Test hooks, unauthenticated, on the vault's port: `POST /_emulator/throttle {"count": N}` makes the next N
authorised requests answer 429; `GET /_emulator/stats` counts the vault's requests by operation, how they were
authenticated and status (e.g. `"sign managed-identity 200"`), and the token endpoint's answers.

Run it in its own process so that a test can SIGSTOP it:
`python -m tests.emulators.azure_kv --port N --cert-out PATH [--identity-port M --identity-header SECRET]`. It
listens on 127.0.0.1 with a self-signed certificate for localhost and 127.0.0.1, whose PEM it writes to PATH once
it is ready to serve (the token endpoint listens by then too).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import ipaddress
import json
import os
import re
import secrets
import ssl
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TENANT = "72f988bf-0000-4000-8000-00000000e001"  # any GUID: managed identity and the test credential ignore it
VAULT_RESOURCE = "https://vault.azure.net"  # the audience of Key Vault tokens, in every public-cloud challenge
CHALLENGE = f'Bearer authorization="https://login.microsoftonline.com/{TENANT}", resource="{VAULT_RESOURCE}"'
IDENTITY_PATH = "/msi/token"
IDENTITY_API_VERSION = "2019-08-01"  # the App Service version that takes X-IDENTITY-HEADER
IDENTITY_CLIENT_ID = "5e29463d-71da-4fe0-8e69-000000000001"  # the emulated system-assigned identity
TOKEN_LIFETIME = 24 * 3600  # seconds, as App Service's tokens
_NAME = re.compile(r"[0-9A-Za-z-]{1,127}")
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
_HASHES = {"256": hashes.SHA256(), "384": hashes.SHA384(), "512": hashes.SHA512()}
_ES_CURVES = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}


class ApiError(Exception):
    """An error answer in Key Vault's shape: {"error": {"code", "message", "innererror"?}}."""

    def __init__(self, status: int, code: str, message: str, inner: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.inner = status, code, message, inner

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner:
            error["innererror"] = {"code": self.inner}
        return {"error": error}


@dataclass
class KeyVersion:
    name: str
    version: str
    kty: str
    private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    ops: list[str]
    enabled: bool
    created: int

    def bundle(self, base: str) -> dict[str, Any]:
        jwk: dict[str, Any] = {"kid": f"{base}/keys/{self.name}/{self.version}", "kty": self.kty, "key_ops": self.ops}
        public = self.private.public_key()
        if isinstance(public, ec.EllipticCurvePublicKey):
            size = (public.curve.key_size + 7) // 8
            numbers = public.public_numbers()
            jwk.update(crv=_crv(public.curve), x=_b64(numbers.x.to_bytes(size, "big")),
                       y=_b64(numbers.y.to_bytes(size, "big")))
        else:
            rsa_numbers = public.public_numbers()
            jwk.update(n=_b64(rsa_numbers.n.to_bytes((rsa_numbers.n.bit_length() + 7) // 8, "big")),
                       e=_b64(rsa_numbers.e.to_bytes((rsa_numbers.e.bit_length() + 7) // 8, "big")))
        attributes = {"enabled": self.enabled, "created": self.created, "updated": self.created,
                      "recoveryLevel": "Recoverable+Purgeable", "recoverableDays": 90, "exportable": False}
        return {"key": jwk, "attributes": attributes, "tags": {}}


class Identity:
    """App Service's managed-identity token endpoint: opaque tokens, each bound to the resource it was asked for."""

    def __init__(self, header: str) -> None:
        self.header = header
        self.tokens: dict[str, tuple[str, int]] = {}  # token → (resource, expires_on)
        self.answers: Counter[str] = Counter()
        self.lock = threading.Lock()

    def answer(self, path: str, query: str, header: str | None) -> tuple[int, dict[str, Any]]:
        """(status, JSON body) for one GET; errors in App Service's shape, {statusCode, message}."""
        params = {k: v[-1] for k, v in parse_qs(query).items()}
        if path.rstrip("/") != IDENTITY_PATH:
            status, message = 404, f"{path} is not the token endpoint ({IDENTITY_PATH})"
        elif header is None or not secrets.compare_digest(header, self.header):
            status, message = 401, "X-IDENTITY-HEADER is missing or wrong"
        elif params.get("api-version") != IDENTITY_API_VERSION:
            status, message = 400, f"api-version must be {IDENTITY_API_VERSION}"
        elif not params.get("resource"):
            status, message = 400, "resource is required"
        elif {"client_id", "mi_res_id", "object_id", "principal_id"} & set(params):
            status, message = 400, "only the system-assigned identity is emulated"
        else:
            resource, expires_on = params["resource"], int(time.time()) + TOKEN_LIFETIME
            token = "mi-" + secrets.token_urlsafe(32)
            with self.lock:
                self.tokens[token] = (resource, expires_on)
                self.answers["issued"] += 1
            return 200, {"access_token": token, "expires_on": str(expires_on), "resource": resource,
                         "token_type": "Bearer", "client_id": IDENTITY_CLIENT_ID}
        with self.lock:
            self.answers[f"refused {status}"] += 1
        return status, {"statusCode": status, "message": message}

    def audience(self, token: str) -> str | None:
        """The resource an unexpired token was issued for, or None if this endpoint did not issue it."""
        with self.lock:
            found = self.tokens.get(token)
        return found[0] if found is not None and found[1] > time.time() else None


class Vault:
    """The emulator's state: key name → versions, oldest first."""

    def __init__(self, denied_token: str, identity: Identity | None = None) -> None:
        self.denied_token = denied_token
        self.identity = identity
        self.keys: dict[str, list[KeyVersion]] = {}
        self.throttle = 0
        self.seen: Counter[str] = Counter()  # "OPERATION AUTHENTICATION STATUS" → requests
        self.lock = threading.Lock()

    def stats(self) -> dict[str, Any]:
        with self.lock:
            requests = dict(self.seen)
        identity = None
        if self.identity is not None:
            with self.identity.lock:
                identity = dict(self.identity.answers)
        return {"requests": requests, "identity": identity}

    def route(self, method: str, path: str, body: dict[str, Any], base: str) -> dict[str, Any]:
        parts = [p for p in path.split("/") if p]
        if len(parts) >= 2 and parts[0] == "keys" and _NAME.fullmatch(parts[1]):
            name, rest = parts[1], parts[2:]
            if method == "POST" and rest == ["create"]:
                return self.create(name, body).bundle(base)
            if method == "GET" and len(rest) <= 1:
                return self.find(name, rest[0] if rest else None).bundle(base)
            if method == "PATCH" and len(rest) <= 1:
                found = self.find(name, rest[0] if rest else None)
                if "enabled" in body.get("attributes", {}):
                    found.enabled = bool(body["attributes"]["enabled"])
                return found.bundle(base)
            if method == "POST" and len(rest) == 2 and rest[1] == "sign":
                found = self.find(name, rest[0])
                return {"kid": f"{base}/keys/{name}/{found.version}", "value": _b64(sign(found, body))}
        raise ApiError(404, "NotFound", f"{method} {path} is not part of this emulator")

    def create(self, name: str, body: dict[str, Any]) -> KeyVersion:
        kty = str(body.get("kty", ""))
        if body.get("attributes", {}).get("exportable"):
            raise ApiError(400, "BadParameter", "AKV.SKR.1004: Exportable keys must have release policy.")
        private: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
        if kty in ("EC", "EC-HSM"):
            curve = _CURVES.get(str(body.get("crv", "P-256")))
            if curve is None:
                raise ApiError(400, "BadParameter", f"Unsupported curve {body.get('crv')!r}")
            private, ops = ec.generate_private_key(curve), ["sign", "verify"]
        elif kty in ("RSA", "RSA-HSM"):
            size = int(body.get("key_size") or 2048)
            if size not in (2048, 3072, 4096):
                raise ApiError(400, "BadParameter", f"Unsupported key size {size}")
            private = rsa.generate_private_key(65537, size)
            ops = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
        else:
            raise ApiError(400, "BadParameter", f"Unsupported key type {kty!r}")
        version = KeyVersion(name, uuid.uuid4().hex, kty, private, list(body.get("key_ops") or ops),
                             bool(body.get("attributes", {}).get("enabled", True)), int(time.time()))
        with self.lock:
            self.keys.setdefault(name, []).append(version)
        return version

    def find(self, name: str, version: str | None) -> KeyVersion:
        with self.lock:
            versions = list(self.keys.get(name, []))
        for v in reversed(versions):
            if version is None or v.version == version:
                return v
        shown = f"{name}/{version}" if version else name
        raise ApiError(404, "KeyNotFound", f"A key with (name/id) {shown} was not found in this key vault.")


def sign(key: KeyVersion, body: dict[str, Any]) -> bytes:
    """Sign a digest as Key Vault does: ECDSA as raw r||s, PSS with salt = digest length."""
    if not key.enabled:
        raise ApiError(403, "Forbidden", "Operation sign is not allowed on a disabled key.", "KeyDisabled")
    if "sign" not in key.ops:
        raise ApiError(403, "Forbidden", "Operation sign is not permitted on this key.", "KeyOperationForbidden")
    alg, value = str(body.get("alg", "")), _unb64(str(body.get("value", "")))
    h = _HASHES.get(alg[2:]) if alg[:2] in ("ES", "RS", "PS") else None
    if h is None:
        raise ApiError(400, "BadParameter", f"Invalid algorithm {alg!r}")
    if len(value) != h.digest_size:
        raise ApiError(400, "BadParameter", f"Invalid digest length {len(value)} for {alg}")
    private = key.private
    if alg.startswith("ES"):
        if not isinstance(private, ec.EllipticCurvePrivateKey) or _crv(private.curve) != _ES_CURVES.get(alg):
            raise ApiError(400, "BadParameter", f"Algorithm {alg} does not match key type {key.kty}")
        r, s = utils.decode_dss_signature(private.sign(value, ec.ECDSA(utils.Prehashed(h))))
        size = (private.curve.key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ApiError(400, "BadParameter", f"Algorithm {alg} does not match key type {key.kty}")
    pad = padding.PKCS1v15() if alg.startswith("RS") else padding.PSS(padding.MGF1(h), h.digest_size)
    return private.sign(value, pad, utils.Prehashed(h))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDK's connection pool expects
    timeout = 60
    server: Server
    auth = "none"  # how the current request was authenticated, for the stats

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url, vault, headers = urlsplit(self.path), self.server.vault, dict[str, str]()
        operation: str | None = _operation(method, url.path)
        self.auth = "none"
        try:
            body = json.loads(raw) if raw else {}
            if url.path == "/_emulator/throttle" and method == "POST":
                vault.throttle = int(body.get("count", 1))
                status, payload = 200, {"throttle": vault.throttle}
                operation = None
            elif url.path == "/_emulator/stats" and method == "GET":
                status, payload = 200, vault.stats()
                operation = None
            else:
                self._authorize(headers)
                with vault.lock:
                    throttled, vault.throttle = vault.throttle > 0, max(vault.throttle - 1, 0)
                if throttled:
                    headers["Retry-After"] = "0"
                    raise ApiError(429, "Throttled", "Request was not processed because too many requests were "
                                                     "received.")
                if not parse_qs(url.query).get("api-version"):
                    raise ApiError(400, "BadParameter", "The request URI must contain an api-version.")
                status, payload = 200, vault.route(method, url.path, body, f"https://{self.headers['Host']}")
        except ApiError as exc:
            status, payload = exc.status, exc.body()
        except (ValueError, TypeError, AttributeError) as exc:
            status, payload = 400, ApiError(400, "BadParameter", f"Malformed request: {exc}").body()
        if operation is not None:
            with vault.lock:
                vault.seen[f"{operation} {self.auth} {status}"] += 1
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in {**headers, "Content-Type": "application/json; charset=utf-8",
                            "Content-Length": str(len(data)), "x-ms-request-id": str(uuid.uuid4())}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _authorize(self, headers: dict[str, str]) -> None:
        """Sets self.auth to how the request is authenticated ("managed-identity", or "bearer" without a token
        endpoint); raises ApiError 401 with the challenge (no token: auth "none"; a token the endpoint did not issue
        for the vault: "rejected") or 403 (the denied token: "denied")."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        vault = self.server.vault
        if scheme.lower() != "bearer" or not token:
            headers["WWW-Authenticate"] = CHALLENGE
            raise ApiError(401, "Unauthorized", "AKV10000: Request is missing a Bearer or PoP token.")
        if token == vault.denied_token:
            self.auth = "denied"
            raise ApiError(403, "Forbidden", "Caller is not authorized to perform action on resource.",
                           "ForbiddenByRbac")
        if vault.identity is None:
            self.auth = "bearer"
            return
        audience = vault.identity.audience(token)
        if audience is None or audience.rstrip("/") != VAULT_RESOURCE:
            self.auth = "rejected"
            headers["WWW-Authenticate"] = CHALLENGE
            raise ApiError(401, "Unauthorized", "AKV10032: Invalid issuer: the token was not issued by the managed-"
                           "identity endpoint, or has expired." if audience is None else
                           f"AKV10022: Invalid audience {audience!r}; expected {VAULT_RESOURCE!r}.")
        self.auth = "managed-identity"

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"azure_kv {self.address_string()} {format % args}\n")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], vault: Vault) -> None:
        super().__init__(address, Handler)
        self.vault = vault

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            return  # a client that gave up (timeouts, the SIGSTOP tests): not the emulator's fault
        super().handle_error(request, client_address)


class IdentityHandler(BaseHTTPRequestHandler):
    """The token endpoint, plain HTTP on loopback, as App Service serves it inside the sandbox."""

    protocol_version = "HTTP/1.1"
    timeout = 60
    server: IdentityServer

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        status, payload = self.server.identity.answer(url.path, url.query, self.headers.get("X-IDENTITY-HEADER"))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"azure_kv identity {self.address_string()} {format % args}\n")


class IdentityServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], identity: Identity) -> None:
        super().__init__(address, IdentityHandler)
        self.identity = identity


def _operation(method: str, path: str) -> str:
    """The Key Vault operation a request asks for, as the stats name it."""
    parts = [p for p in path.split("/") if p]
    if method == "POST" and parts[-1:] == ["create"]:
        return "create"
    if method == "POST" and parts[-1:] == ["sign"]:
        return "sign"
    return {"GET": "get", "PATCH": "update"}.get(method, method.lower())


def _b64(data: bytes) -> str:
    """base64url without padding, as JSON Web Keys and Key Vault's `value` fields are written."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _crv(curve: ec.EllipticCurve) -> str:
    return {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}[curve.name]


def tls_context(cert_out: Path) -> tuple[ssl.SSLContext, Path]:
    """A fresh self-signed certificate for localhost and 127.0.0.1, and its PEM (the clients' CA file) written
    beside `cert_out`, to be renamed into place once the server listens."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "azure key vault emulator (tests)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory() as tmp:
        key_path = Path(tmp) / "key.pem"
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        (Path(tmp) / "cert.pem").write_bytes(pem)
        ctx.load_cert_chain(Path(tmp) / "cert.pem", key_path)
    partial = cert_out.with_name(cert_out.name + ".partial")
    partial.write_bytes(pem)
    return ctx, partial


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert-out", type=Path, required=True, help="where to write the server certificate (PEM)")
    parser.add_argument("--denied-token", default="denied-token", help="a bearer token answered with 403")
    parser.add_argument("--identity-port", type=int, help="also serve App Service's managed-identity token "
                        "endpoint on http://127.0.0.1:PORT/msi/token; the vault then takes only its tokens")
    parser.add_argument("--identity-header", help="the secret the token endpoint requires as X-IDENTITY-HEADER "
                        "(the clients' IDENTITY_HEADER)")
    args = parser.parse_args(argv)
    if (args.identity_port is None) != (args.identity_header is None):
        parser.error("--identity-port and --identity-header go together")
    identity = Identity(args.identity_header) if args.identity_header is not None else None
    if identity is not None:
        token_server = IdentityServer(("127.0.0.1", args.identity_port), identity)
        threading.Thread(target=token_server.serve_forever, name="identity", daemon=True).start()
    ctx, partial = tls_context(args.cert_out)
    server = Server(("127.0.0.1", args.port), Vault(args.denied_token, identity))
    # The handshake happens in each connection's thread, so a stalled client never blocks accept().
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    os.replace(partial, args.cert_out)  # the certificate appears once the port listens
    server.serve_forever()


if __name__ == "__main__":
    main()
