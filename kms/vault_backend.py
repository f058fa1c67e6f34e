"""HashiCorp Vault (and OpenBao) transit: `vault:transit/keys/NAME[?addr=…&version=N&…]`.

Keys are created non-exportable (`exportable=false`, no plaintext backup). Digests are signed with
`prehashed=true` and an explicit hash, PKCS#1 v1.5 or PSS with `salt_length=hash`; Ed25519 keys
sign the whole message. The key version used is fixed when the key is opened (the URI's
`version`, else the latest then), so a rotation inside Vault never changes the key under a
certificate that is already out.

Credentials never come from `ca.json` in clear: the token is read from `$VAULT_TOKEN`, else the
file named by the URI's `token-file` (or `$VAULT_TOKEN_FILE`), else `~/.vault-token`. The address
is the URI's `addr`, else `$VAULT_ADDR`.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, TypeVar

import hvac
import requests
import requests.adapters
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from hvac import exceptions as hv

from kms.errors import (
    BackendUnavailable,
    InvalidKeyURI,
    KeyExists,
    KeyNotFound,
    KMSError,
    PermissionDenied,
    SigningFailed,
    UnsupportedAlgorithm,
)
from kms.keyspec import KeySpec
from kms.remote_keys import REMOTE_ADAPTERS, Scheme
from kms.resilience import RemoteCalls
from kms.signer import CAKey, spec_of_public
from kms.uri import KeyURI, require_key

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds per HTTP call; a signature takes milliseconds
DEFAULT_COOLDOWN = 5.0  # seconds a failing server is left alone before one trial call
POOL_SIZE = 64  # kept connections per backend: above the request threads of one worker

_KEY_TYPES: dict[KeySpec, str] = {
    KeySpec.EC_P256: "ecdsa-p256", KeySpec.EC_P384: "ecdsa-p384", KeySpec.RSA_2048: "rsa-2048",
    KeySpec.RSA_3072: "rsa-3072", KeySpec.RSA_4096: "rsa-4096", KeySpec.ED25519: "ed25519",
}
_HASHES = {"sha224": "sha2-224", "sha256": "sha2-256", "sha384": "sha2-384", "sha512": "sha2-512"}
_TRANSIENT: tuple[type[BaseException], ...] = (
    hv.RateLimitExceeded, hv.InternalServerError, hv.BadGateway, hv.VaultDown,
    requests.exceptions.ConnectionError, requests.exceptions.Timeout,
)


def split_path(uri: KeyURI) -> tuple[str, str]:
    """(mount, key name) from `MOUNT/keys/NAME`."""
    mount, sep, name = uri.path.get("", "").rpartition("/keys/")
    if not sep or not mount or not name or "/" in name:
        raise InvalidKeyURI("a vault key URI is vault:MOUNT/keys/NAME, e.g. vault:transit/keys/intermediate")
    return mount.strip("/"), name


class VaultTransitBackend:
    """One client per (address, namespace, mount, token file, timeout, cooldown); its keys share its HTTP pool."""

    name = "vault"

    @staticmethod
    def identity(uri: KeyURI) -> Hashable:
        mount = split_path(uri)[0]  # the shape first: a malformed URI is not a missing address
        return (_address(uri), uri.query.get("namespace"), mount, uri.query.get("token-file"),
                uri.query.get("timeout"), uri.query.get("cooldown"))

    def __init__(self, uri: KeyURI) -> None:
        self.address = _address(uri)
        self.mount = split_path(uri)[0]
        try:
            self.timeout = float(uri.query.get("timeout", DEFAULT_TIMEOUT))
            cooldown = float(uri.query.get("cooldown", DEFAULT_COOLDOWN))
        except ValueError:
            raise InvalidKeyURI("vault key URI: timeout and cooldown are numbers of seconds") from None
        # Many request threads sign at once through one client: keep a connection for each.
        session = requests.Session()
        session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE))
        session.mount("https://", requests.adapters.HTTPAdapter(pool_maxsize=POOL_SIZE))
        # The environment (proxies, REQUESTS_CA_BUNDLE) is read once here: requests would rescan
        # os.environ on every signature otherwise, a quarter of this backend's CPU per call.
        session.trust_env = False
        verify: bool | str = (uri.query.get("ca-file") or os.environ.get("REQUESTS_CA_BUNDLE")
                              or os.environ.get("CURL_CA_BUNDLE") or True)
        self.client = hvac.Client(url=self.address, token=_token(uri), timeout=self.timeout, verify=verify,
                                  namespace=uri.query.get("namespace"), session=session,
                                  proxies=requests.utils.get_environ_proxies(self.address) or None)
        self.calls = RemoteCalls(f"vault at {self.address}", cooldown=cooldown)
        self.breaker = self.calls.breaker

    def open_key(self, uri: KeyURI) -> CAKey:
        require_key(uri)
        _, name = split_path(uri)
        data = self._call(f"reading key {name}", lambda: self.client.secrets.transit.read_key(
            name=name, mount_point=self.mount))["data"]
        if not data.get("supports_signing"):
            raise UnsupportedAlgorithm(f"vault key {name} ({data.get('type')}) cannot sign")
        if data.get("exportable"):
            log.warning("vault key %s is exportable; a CA key should be created non-exportable", name)
        version = str(uri.query.get("version") or data["latest_version"])
        entry = data.get("keys", {}).get(version)
        if not isinstance(entry, dict) or not entry.get("public_key"):
            raise KeyNotFound(f"vault key {name} has no version {version}")
        public = _public_key(str(entry["public_key"]), str(data.get("type")))
        spec = spec_of_public(public)
        signer = _TransitSigner(self, name, int(version), spec)
        adapter = REMOTE_ADAPTERS[spec.kty](uri=str(uri.redacted()), spec=spec, public=public, signer=signer,
                                            backend=f"vault {self.address}")
        return adapter  # type: ignore[return-value]  # each adapter also subclasses its family's ABC

    def create_key(self, uri: KeyURI, spec: KeySpec) -> CAKey:
        require_key(uri)
        _, name = split_path(uri)
        key_type = _KEY_TYPES.get(spec)
        if key_type is None:
            raise UnsupportedAlgorithm(f"vault transit has no {spec.value} keys")
        try:
            self.client.secrets.transit.read_key(name=name, mount_point=self.mount)
            raise KeyExists(f"vault key {name} already exists at {self.address}/{self.mount}")
        except hv.InvalidPath:
            pass
        except _TRANSIENT as exc:
            raise BackendUnavailable(f"vault at {self.address}: {_describe(exc)}") from None
        except (hv.Forbidden, hv.Unauthorized) as exc:
            raise PermissionDenied(f"vault at {self.address} refused reading key {name}: {_describe(exc)}") from None
        self._call(f"creating key {name}", lambda: self.client.secrets.transit.create_key(
            name=name, key_type=key_type, exportable=False, allow_plaintext_backup=False, mount_point=self.mount),
            retry=False)
        log.info("created %s key %s in vault %s/%s", spec.value, name, self.address, self.mount)
        return self.open_key(uri)

    def health(self) -> dict[str, Any]:
        try:
            state = self.client.sys.read_health_status(method="GET")
            ok = isinstance(state, dict) and not state.get("sealed")
            detail = "unsealed, answering" if ok else "sealed"
        except Exception as exc:  # health reports, it does not raise
            ok, detail = False, _describe(exc)
        return {"backend": self.name, "address": self.address, "mount": self.mount, "ok": ok, "detail": detail,
                "breaker": self.breaker.state, "lastError": self.calls.last_error}

    def close(self) -> None:
        self.client.adapter.close()

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        return self.calls.call(what, fn, self._classify, retry=retry)

    def _classify(self, exc: BaseException, what: str) -> str | None:
        """hvac's exceptions in the backend's vocabulary (see kms/resilience.py)."""
        if isinstance(exc, _TRANSIENT):
            return _describe(exc)
        if isinstance(exc, hv.InvalidPath):
            raise KeyNotFound(f"vault at {self.address}: no such key or mount while {what}") from None
        if isinstance(exc, (hv.Forbidden, hv.Unauthorized)):
            raise PermissionDenied(f"vault at {self.address} refused {what}: {_describe(exc)}") from None
        if isinstance(exc, hv.VaultError):
            raise SigningFailed(f"vault at {self.address} refused {what}: {_describe(exc)}") from None
        return None


class _TransitSigner:
    def __init__(self, backend: VaultTransitBackend, name: str, version: int, spec: KeySpec) -> None:
        self.backend, self.name, self.version, self.spec = backend, name, version, spec

    def sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm, scheme: Scheme,
                    message: bytes | None = None) -> bytes:
        options: dict[str, Any] = {"prehashed": True, "hash_algorithm": _HASHES[algorithm.name]}
        if scheme == "ecdsa":
            options["marshaling_algorithm"] = "asn1"
        else:
            options["signature_algorithm"] = "pkcs1v15" if scheme == "pkcs1v15" else "pss"
            if scheme == "pss":
                options["salt_length"] = "hash"
        return self._sign(digest, options)

    def sign_message(self, data: bytes) -> bytes:
        return self._sign(data, {})

    def _sign(self, data: bytes, options: dict[str, Any]) -> bytes:
        b = self.backend
        response = b._call(f"signing with key {self.name}", lambda: b.client.secrets.transit.sign_data(
            name=self.name, hash_input=base64.b64encode(data).decode(), key_version=self.version,
            mount_point=b.mount, **options))
        text = str(response["data"]["signature"])
        prefix = f"vault:v{self.version}:"
        if not text.startswith(prefix):
            raise SigningFailed(f"vault signed with {text.split(':')[1] if text.count(':') >= 2 else '?'}, "
                                f"not v{self.version} of key {self.name}")
        return base64.b64decode(text[len(prefix):])


def _public_key(text: str, key_type: str) -> Any:
    """PEM for ECDSA and RSA keys; transit gives an Ed25519 key as base64 of its 32 raw bytes."""
    try:
        if key_type == "ed25519":
            return ed25519.Ed25519PublicKey.from_public_bytes(base64.b64decode(text))
        return serialization.load_pem_public_key(text.encode())
    except ValueError as exc:
        raise KMSError(f"vault returned a {key_type} public key that cannot be read: {exc}") from None


def _address(uri: KeyURI) -> str:
    address = uri.query.get("addr") or os.environ.get("VAULT_ADDR")
    if not address:
        raise InvalidKeyURI("vault key URI: no address (add ?addr=https://vault:8200 or set VAULT_ADDR)")
    return address.rstrip("/")


def _token(uri: KeyURI) -> str | None:
    if os.environ.get("VAULT_TOKEN"):
        return os.environ["VAULT_TOKEN"]
    source = uri.query.get("token-file") or os.environ.get("VAULT_TOKEN_FILE")
    path = Path(source).expanduser() if source else Path("~/.vault-token").expanduser()
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except OSError:
        if source:
            raise PermissionDenied(f"cannot read the vault token from {path}") from None
        return None


def _describe(exc: BaseException) -> str:
    """One line, without the request body (it carries the digest, harmless, but noise)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__

