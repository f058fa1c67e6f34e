"""Azure Key Vault and Managed HSM: `azurekv:https://VAULT.vault.azure.net/keys/NAME[/VERSION][?…]`.

Keys are created allowed to sign and verify only, and HSM-protected (EC-HSM, RSA-HSM) in a Managed HSM or with
`hsm=1` (a premium vault); they are non-exportable, the service's default (the `exportable` attribute is not sent:
standard vaults refuse it). The digest is computed locally and only the digest is sent (ES256/ES384, RS*, PS*,
PSS always with salt = digest length); Key Vault returns ECDSA signatures as raw r||s, turned here into the DER
X.509 wants. Key Vault has no Ed25519. The key version is fixed when the key is opened (the URI's VERSION, else
the current one then), so a new version made in the vault never changes the key under certificates already out.

Credentials never come from the URI: azure-identity's DefaultAzureCredential (environment, workload identity,
managed identity, …). Query: `timeout` (seconds per HTTP call, default 10), `ca-file` (a PEM bundle to trust
instead of the system's), `hsm=1`, `verify-challenge=0`. The SDK's own retries are off; transient failures (429,
5xx, connection errors, timeouts) are retried here, twice, with jitter.

The SDK checks that the resource named in the vault's 401 challenge is a parent domain of the vault's host
(`ca.vault.azure.net` under `https://vault.azure.net`), so that a mistyped or hostile vault URL never obtains a
token good for every vault. Every real vault passes, private endpoints included (they keep the
`*.vault.azure.net` name). A vault addressed otherwise (an emulator on `https://127.0.0.1:PORT`, a host behind a
name of one's own) cannot: `verify-challenge=0` turns the check off for that vault, and each backend made with it
logs a warning. It is for emulators and such endpoints only; the token then goes to whatever the URL names.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ServiceRequestError,
    ServiceResponseError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.keyvault.keys import KeyClient, KeyVaultKey, KeyVaultKeyIdentifier
from azure.keyvault.keys.crypto import CryptographyClient, SignatureAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from kms.errors import (
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

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT = 10.0  # seconds per HTTP call; a signature takes milliseconds
DEFAULT_COOLDOWN = 5.0  # seconds a failing vault is left alone before one trial call
MAX_RETRY_AFTER = 2.0  # seconds: a longer Retry-After means the vault is unavailable for this request
QUERY = frozenset({"timeout", "ca-file", "hsm", "cooldown", "verify-challenge"})
_CURVES = {KeySpec.EC_P256: "P-256", KeySpec.EC_P384: "P-384"}
_EC_ALGORITHMS = {(KeySpec.EC_P256, "sha256"): SignatureAlgorithm.es256,
                  (KeySpec.EC_P384, "sha384"): SignatureAlgorithm.es384}
_RSA_ALGORITHMS = {
    ("pkcs1v15", "sha256"): SignatureAlgorithm.rs256, ("pkcs1v15", "sha384"): SignatureAlgorithm.rs384,
    ("pkcs1v15", "sha512"): SignatureAlgorithm.rs512, ("pss", "sha256"): SignatureAlgorithm.ps256,
    ("pss", "sha384"): SignatureAlgorithm.ps384, ("pss", "sha512"): SignatureAlgorithm.ps512,
}


def _default_credential() -> TokenCredential:
    from azure.identity import DefaultAzureCredential  # imported on first use: it is slow to load

    return DefaultAzureCredential()


credential_factory: Callable[[], TokenCredential] = _default_credential
"""Where each backend gets its credential. In-process tests against the emulator set a static-token credential;
a served CA (and its tests) uses DefaultAzureCredential, e.g. a managed identity found through the environment."""



def split_resource(uri: KeyURI) -> tuple[str, str, str | None]:
    """(vault URL, key name, version or None) from `https://VAULT/keys/NAME[/VERSION]`."""
    resource = uri.path.get("", "")
    parts = urlsplit(resource)
    segments = [s for s in parts.path.split("/") if s]
    if (len(uri.path) != 1 or parts.scheme != "https" or not parts.hostname or parts.query or parts.fragment
            or len(segments) not in (2, 3) or segments[0] != "keys"):
        raise InvalidKeyURI("an azurekv key URI is azurekv:https://VAULT.vault.azure.net/keys/NAME[/VERSION], "
                            "e.g. azurekv:https://ca.vault.azure.net/keys/intermediate")
    unknown = sorted(set(uri.query) - QUERY)
    if unknown:  # a typo (or a secret that does not belong here) fails here, not as a puzzling default
        raise InvalidKeyURI(f"azurekv key URI: unknown parameter {unknown[0]!r}; known: {', '.join(sorted(QUERY))}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    try:
        port = "" if parts.port in (None, 443) else f":{parts.port}"  # Key Vault's key ids never name 443
    except ValueError:
        raise InvalidKeyURI("azurekv key URI: the vault URL has an invalid port") from None
    return f"https://{host}{port}", segments[1], segments[2] if len(segments) == 3 else None


class AzureKeyVaultBackend:
    """One HTTP pool and one credential per (vault, CA file, timeout, hsm); every key opened shares them."""

    name = "azurekv"

    @staticmethod
    def identity(uri: KeyURI) -> Hashable:
        return (split_resource(uri)[0], uri.query.get("ca-file"), _timeout(uri), _hsm(uri), _verify_challenge(uri))

    def __init__(self, uri: KeyURI) -> None:
        self.vault = split_resource(uri)[0]
        self.timeout = _timeout(uri)
        self.hsm = _hsm(uri)
        checked = _verify_challenge(uri)
        self.verify_challenge = checked
        if not checked:
            log.warning("azure key vault %s: verify-challenge=0, so the vault's 401 challenge is not checked against "
                        "its host name and a token for the challenge's resource goes to whatever this URL names; "
                        "for emulators and endpoints outside *.vault.azure.net only", self.vault)
        self._credential = credential_factory()
        # One transport for the key client and every key's cryptography client: one connection pool.
        self._transport = RequestsTransport(connection_timeout=self.timeout, read_timeout=self.timeout,
                                            connection_verify=uri.query.get("ca-file") or True)
        self._options: dict[str, Any] = {"transport": self._transport, "retry_total": 0,
                                         "verify_challenge_resource": self.verify_challenge}
        self.client = KeyClient(self.vault, self._credential, **self._options)
        self._probe: str | None = None  # a key that health() may read: this identity can get it
        try:
            cooldown = float(uri.query.get("cooldown", DEFAULT_COOLDOWN))
        except ValueError:
            raise InvalidKeyURI("azurekv key URI: cooldown must be a number of seconds") from None
        self.calls = RemoteCalls(f"azure key vault {self.vault}", cooldown=cooldown)
        self.breaker = self.calls.breaker

    def open_key(self, uri: KeyURI) -> CAKey:
        require_key(uri)
        _, name, version = split_resource(uri)
        key = self._call(f"reading key {name}", lambda: self.client.get_key(name, version))
        if KeyVaultKeyIdentifier(key.id).vault_url.lower().rstrip("/") != self.vault:
            raise KMSError(f"azure key vault {self.vault} answered for key {name} with an id elsewhere: {key.id}")
        if key.properties.enabled is False:
            raise SigningFailed(f"azure key vault {self.vault}: key {name} version {key.properties.version} "
                                "is disabled")
        ops = [_text(op) for op in key.key_operations or []]
        if "sign" not in ops:
            raise UnsupportedAlgorithm(f"azure key vault key {name} may not sign (key_ops: {', '.join(ops) or 'none'})")
        public = _public_key(key, name)
        spec = spec_of_public(public)
        signer = _KeyVaultSigner(self, key, spec)
        self._probe = self._probe or name
        adapter = REMOTE_ADAPTERS[spec.kty](uri=str(uri.redacted()), spec=spec, public=public, signer=signer,
                                            backend=f"azure key vault {self.vault}")
        return adapter  # type: ignore[return-value]  # each adapter also subclasses its family's ABC

    def create_key(self, uri: KeyURI, spec: KeySpec) -> CAKey:
        require_key(uri)
        _, name, version = split_resource(uri)
        if version is not None:
            raise InvalidKeyURI("a new azurekv key has no version yet: name it without /VERSION")
        if spec.kty not in ("EC", "RSA") or (spec.kty == "EC" and spec not in _CURVES):
            raise UnsupportedAlgorithm(f"azure key vault has no {spec.value} keys")
        try:
            self._call(f"reading key {name}", lambda: self.client.get_key(name))
            raise KeyExists(f"azure key vault key {name} already exists in {self.vault}")
        except KeyNotFound:
            pass
        ops = ["sign", "verify"]
        if spec.kty == "EC":
            created = self._call(f"creating key {name}", lambda: self.client.create_ec_key(
                name, curve=_CURVES[spec], hardware_protected=self.hsm, key_operations=ops), retry=False)
        else:
            created = self._call(f"creating key {name}", lambda: self.client.create_rsa_key(
                name, size=spec.bits, hardware_protected=self.hsm, key_operations=ops), retry=False)
        if created.properties.exportable:
            log.warning("azure key vault key %s in %s is exportable; a CA key should not be", name, self.vault)
        log.info("created %s key %s (%s) in azure key vault %s", spec.value, name, created.properties.version,
                 self.vault)
        return self.open_key(uri)

    def health(self) -> dict[str, Any]:
        """Reads a key opened earlier (the one permission this identity surely has); one try, no retries."""
        if self._probe is None:
            status = "ok"  # nothing opened yet, so nothing to probe: /health must not open a session itself
        else:
            try:
                self.client.get_key(self._probe)
                status = "ok"
            except Exception as exc:  # health reports, it does not raise
                status = f"unavailable: {_describe(exc)}"
        return {"backend": self.name, "address": self.vault, "status": status, "lastError": self.calls.last_error}

    def close(self) -> None:
        self._transport.close()
        close = getattr(self._credential, "close", None)
        if callable(close):
            close()

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        return self.calls.call(what, fn, self._classify, retry=retry, backoff=_backoff)

    def _classify(self, exc: BaseException, what: str) -> str | None:
        """azure-core's exceptions in the backend's vocabulary (see kms/resilience.py)."""
        if isinstance(exc, (ServiceRequestError, ServiceResponseError, HttpResponseError)):
            # HttpResponseError covers ClientAuthenticationError, also raised when the credential found no token.
            if isinstance(exc, HttpResponseError) and not _transient_status(exc.status_code):
                raise self._refusal(what, exc) from None
            return _describe(exc)
        if isinstance(exc, (AzureError, ValueError)):  # ValueError: the SDK refused the vault's challenge
            if isinstance(exc, ValueError) and "does not match the requested domain" in str(exc):
                # The SDK's own advice names its constructor argument; the key URI's is verify-challenge=0.
                raise KMSError(f"azure key vault {self.vault} while {what}: {str(exc).split('. ')[0]}: the vault's "
                               "401 challenge names a resource its host is not under, so no token is sent to it "
                               "(for an emulator or an endpoint outside *.vault.azure.net, add verify-challenge=0 "
                               "to the key URI)") from None
            raise KMSError(f"azure key vault {self.vault} while {what}: {_describe(exc)}") from None
        return None

    def _refusal(self, what: str, exc: HttpResponseError) -> KMSError:
        where = f"azure key vault {self.vault}"
        if isinstance(exc, ResourceNotFoundError):
            return KeyNotFound(f"{where}: no such key while {what}")
        if isinstance(exc, ResourceExistsError):
            return KeyExists(f"{where} refused {what}: {_describe(exc)} (a deleted key may need recovering or "
                             "purging)")
        if _error_code(exc, inner=True) == "KeyDisabled":
            return SigningFailed(f"{where} refused {what}: the key is disabled ({_describe(exc)})")
        if exc.status_code in (401, 403) or isinstance(exc, ClientAuthenticationError):
            return PermissionDenied(f"{where} refused {what}: {_describe(exc)}")
        return SigningFailed(f"{where} refused {what}: {_describe(exc)}")


class _KeyVaultSigner:
    """Signs digests with one version of one key, through a cryptography client that shares the backend's pool."""

    def __init__(self, backend: AzureKeyVaultBackend, key: KeyVaultKey, spec: KeySpec) -> None:
        self.backend, self.name, self.spec = backend, key.name, spec
        self.crypto = CryptographyClient(key, backend._credential, **backend._options)

    def sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm, scheme: Scheme,
                    message: bytes | None = None) -> bytes:
        if scheme == "ecdsa":
            alg = _EC_ALGORITHMS.get((self.spec, algorithm.name))
        else:
            alg = _RSA_ALGORITHMS.get((scheme, algorithm.name)) if self.spec.kty == "RSA" else None
        if alg is None:
            raise UnsupportedAlgorithm(f"azure key vault cannot sign {scheme} with {algorithm.name} for key type "
                                       f"{self.spec.value} (P-256 signs with SHA-256, P-384 with SHA-384)")
        b = self.backend
        signature = b._call(f"signing with key {self.name}", lambda: self.crypto.sign(alg, digest)).signature
        if scheme != "ecdsa":
            return signature
        size = (self.spec.bits + 7) // 8
        if len(signature) != 2 * size:
            raise SigningFailed(f"azure key vault {b.vault} returned a {len(signature)}-byte ECDSA signature with key "
                                f"{self.name}; r||s of {2 * size} bytes expected")
        return utils.encode_dss_signature(int.from_bytes(signature[:size], "big"),
                                          int.from_bytes(signature[size:], "big"))

    def sign_message(self, data: bytes) -> bytes:
        raise UnsupportedAlgorithm("azure key vault has no Ed25519 keys")


def _public_key(key: KeyVaultKey, name: str) -> Any:
    """The JWK Key Vault returns, as a cryptography public key: EC P-256/P-384 or RSA."""
    jwk, kty = key.key, _text(key.key_type)
    try:
        if kty in ("EC", "EC-HSM"):
            crv = _text(getattr(jwk, "crv", None))
            curve = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}.get(crv)
            if curve is None:
                raise UnsupportedAlgorithm(f"azure key vault key {name} is on curve {crv}; "
                                           "hsmca signs with P-256 and P-384")
            x, y = _jwk_bytes(jwk, "x"), _jwk_bytes(jwk, "y")
            return ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"),
                                                 curve).public_key()
        if kty in ("RSA", "RSA-HSM"):
            n, e = _jwk_bytes(jwk, "n"), _jwk_bytes(jwk, "e")
            return rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big")).public_key()
    except ValueError as exc:
        raise KMSError(f"azure key vault returned a {kty} public key for {name} that cannot be read: {exc}") from None
    raise UnsupportedAlgorithm(f"azure key vault key {name} is of type {kty}; hsmca signs with EC and RSA keys")


def _jwk_bytes(jwk: object, field: str) -> bytes:
    """A JWK member as bytes (the SDK decodes base64url); an absent member is an unreadable key."""
    value = getattr(jwk, field, None)
    if not value:
        raise ValueError(f"no {field!r} member")
    return bytes(value)


def _timeout(uri: KeyURI) -> float:
    try:
        timeout = float(uri.query.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise InvalidKeyURI("azurekv key URI: timeout must be a positive number of seconds")
    return timeout


def _hsm(uri: KeyURI) -> bool:
    host = urlsplit(split_resource(uri)[0]).hostname or ""
    return uri.query.get("hsm", "").lower() in ("1", "true", "yes") or host.endswith(".managedhsm.azure.net")


def _verify_challenge(uri: KeyURI) -> bool:
    value = uri.query.get("verify-challenge", "1").lower()
    if value not in ("0", "1", "false", "true", "no", "yes"):
        raise InvalidKeyURI("azurekv key URI: verify-challenge is 1 (the default) or 0")
    return value in ("1", "true", "yes")


def _transient_status(status: int | None) -> bool:
    return status is not None and (status == 429 or status >= 500)


def _backoff(attempt: int, exc: BaseException) -> float:
    delay = random.uniform(0.05, 0.2) * (2 ** attempt)
    response = getattr(exc, "response", None)
    try:
        retry_after = float(response.headers.get("Retry-After", "")) if response is not None else 0.0
    except (TypeError, ValueError):
        retry_after = 0.0
    return max(delay, min(retry_after, MAX_RETRY_AFTER))


def _error_code(exc: HttpResponseError, *, inner: bool = False) -> str | None:
    error = exc.error
    if error is None:
        return None
    if inner:
        details = getattr(error, "innererror", None) or {}
        return details.get("code") if isinstance(details, dict) else None
    return error.code


def _text(value: object) -> str:
    """The value of a str enum of the SDK (KeyType, KeyCurveName, KeyOperation) or a plain string."""
    return str(getattr(value, "value", value))


def _describe(exc: BaseException) -> str:
    """One line: the HTTP status and Key Vault's error code and message, or the exception's first line."""
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        code = _error_code(exc)
        message = exc.error.message if exc.error is not None and exc.error.message else exc.reason
        return f"HTTP {exc.status_code}{f' {code}' if code else ''}: {str(message or '').strip()[:200]}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
