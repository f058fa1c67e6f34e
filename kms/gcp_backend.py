"""Google Cloud KMS: `gcpkms:projects/P/locations/L/keyRings/R/cryptoKeys/K/cryptoKeyVersions/V[?…]`.

A key version is bound to one algorithm (curve or modulus, padding and hash), so the algorithm is
read when the key is opened and a request that does not fit it (PKCS#1 v1.5 to a PSS key, SHA-384
to a P-256 key) is refused here, with the reason, before anything is sent. Only the digest travels,
and both directions carry a CRC32C (digest, signature, public key PEM) as Google asks clients to
check: a bit flipped on the way becomes SigningFailed, never a bad certificate.

Credentials come from google.auth's default chain (GOOGLE_APPLICATION_CREDENTIALS, workload
identity, the metadata server), never from the URI. Query: `endpoint=host:port` (default
cloudkms.googleapis.com:443), `transport=rest|grpc` (default rest: plain HTTPS, the transport the
tests exercise), `timeout` (seconds per call, default 10), `cooldown` (circuit breaker, default 5),
`padding=pkcs1|pss` (create_key, RSA only). `insecure=1` with a loopback endpoint talks plain HTTP
without credentials, for a local emulator only.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple, TypeVar

import google_crc32c
import requests
from cryptography.hazmat.primitives import hashes, serialization
from google.api_core import exceptions as gexc
from google.auth import credentials as gcreds
from google.auth import exceptions as gauth
from google.cloud import kms_v1

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

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_ENDPOINT = "cloudkms.googleapis.com"
DEFAULT_TIMEOUT = 10.0  # seconds per call; a signature takes tens of milliseconds
DEFAULT_COOLDOWN = 5.0  # seconds a failing endpoint is left alone before one trial call
GENERATION_WAIT = 60.0  # seconds create_key waits for a new HSM version to leave PENDING_GENERATION

_NAME_RE = re.compile(r"(projects/[^/]+/locations/[^/]+/keyRings/[^/]+)/cryptoKeys/([^/]+)/cryptoKeyVersions/([^/]+)")
_TRANSIENT_STATUSES = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "INTERNAL", "DEADLINE_EXCEEDED"})
_HTTP_STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
                409: "ALREADY_EXISTS", 429: "RESOURCE_EXHAUSTED", 499: "CANCELLED", 500: "INTERNAL",
                501: "UNIMPLEMENTED", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.exceptions.ConnectionError, requests.exceptions.Timeout, gauth.TransportError,
)
_API_OR_TRANSPORT: tuple[type[BaseException], ...] = (gexc.GoogleAPICallError, *_TRANSPORT_ERRORS)
_SCHEME_NAMES: dict[str, str] = {"ecdsa": "ECDSA", "pkcs1v15": "PKCS#1 v1.5", "pss": "PSS"}


class _Algorithm(NamedTuple):
    spec: KeySpec
    scheme: Scheme
    hash: str  # the one digest a version of this algorithm accepts


_ALGORITHMS: dict[str, _Algorithm] = {
    "EC_SIGN_P256_SHA256": _Algorithm(KeySpec.EC_P256, "ecdsa", "sha256"),
    "EC_SIGN_P384_SHA384": _Algorithm(KeySpec.EC_P384, "ecdsa", "sha384"),
    "RSA_SIGN_PKCS1_2048_SHA256": _Algorithm(KeySpec.RSA_2048, "pkcs1v15", "sha256"),
    "RSA_SIGN_PKCS1_3072_SHA256": _Algorithm(KeySpec.RSA_3072, "pkcs1v15", "sha256"),
    "RSA_SIGN_PKCS1_4096_SHA256": _Algorithm(KeySpec.RSA_4096, "pkcs1v15", "sha256"),
    "RSA_SIGN_PKCS1_4096_SHA512": _Algorithm(KeySpec.RSA_4096, "pkcs1v15", "sha512"),
    "RSA_SIGN_PSS_2048_SHA256": _Algorithm(KeySpec.RSA_2048, "pss", "sha256"),
    "RSA_SIGN_PSS_3072_SHA256": _Algorithm(KeySpec.RSA_3072, "pss", "sha256"),
    "RSA_SIGN_PSS_4096_SHA256": _Algorithm(KeySpec.RSA_4096, "pss", "sha256"),
    "RSA_SIGN_PSS_4096_SHA512": _Algorithm(KeySpec.RSA_4096, "pss", "sha512"),
}
# What create_key asks for: SHA-256 for RSA, as default_hash_for signs with.
_CREATE: dict[tuple[KeySpec, str], str] = {
    (KeySpec.EC_P256, "pkcs1"): "EC_SIGN_P256_SHA256", (KeySpec.EC_P384, "pkcs1"): "EC_SIGN_P384_SHA384",
    **{(spec, pad): f"RSA_SIGN_{pad.upper()}_{spec.bits}_SHA256"
       for spec in (KeySpec.RSA_2048, KeySpec.RSA_3072, KeySpec.RSA_4096) for pad in ("pkcs1", "pss")},
}


class _Settings(NamedTuple):
    endpoint: str
    transport: str
    insecure: bool
    timeout: float
    cooldown: float


def split_name(uri: KeyURI) -> tuple[str, str, str]:
    """(key ring, crypto key id, version) from the URI's resource name."""
    match = _NAME_RE.fullmatch(uri.path.get("", ""))
    if not match or len(uri.path) != 1:
        raise InvalidKeyURI("a gcpkms key URI is gcpkms:projects/P/locations/L/keyRings/R/cryptoKeys/K/"
                            "cryptoKeyVersions/V (a key version: the algorithm is bound to it)")
    return match.group(1), match.group(2), match.group(3)


class GcpKmsBackend:
    """One client per (endpoint, transport, insecure, timeout, cooldown); its keys share its connections."""

    name = "gcpkms"

    @staticmethod
    def identity(uri: KeyURI) -> Hashable:
        split_name(uri)  # the shape first: a malformed URI is not a credentials problem
        return _settings(uri)

    def __init__(self, uri: KeyURI) -> None:
        settings = self._settings = _settings(uri)
        self.endpoint, self.transport, self.timeout = settings.endpoint, settings.transport, settings.timeout
        self._client, self._pid = _client(settings), os.getpid()
        self._probe: str | None = None  # a version opened here: health reads its public key
        self.calls = RemoteCalls(f"gcp kms {self.endpoint}", cooldown=settings.cooldown)
        self.breaker = self.calls.breaker

    @property
    def client(self) -> kms_v1.KeyManagementServiceClient:
        """This process's client: one made before a fork shares its sockets (REST) or is dead (gRPC) in a child."""
        if self._pid != os.getpid():
            self._client, self._pid = _client(self._settings), os.getpid()
        return self._client

    def open_key(self, uri: KeyURI) -> CAKey:
        require_key(uri)
        split_name(uri)
        name = uri.path[""]
        label = _label(name)
        response = self._call(f"reading the public key of {label}", lambda: self.client.get_public_key(
            request={"name": name}, timeout=self.timeout, retry=None))
        pem = str(response.pem)
        if response.name != name or response.pem_crc32c != crc32c(pem.encode()):
            raise KMSError(f"gcp kms {self.endpoint} integrity check failed while reading the public key of {label} "
                           f"(name {response.name!r}, PEM CRC32C {response.pem_crc32c})")
        algorithm_name = _enum_name(kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm, response.algorithm)
        algorithm = _ALGORITHMS.get(algorithm_name)
        if algorithm is None:
            raise UnsupportedAlgorithm(f"gcp kms {label} is {algorithm_name}; hsmca signs with "
                                       f"{', '.join(_ALGORITHMS)}")
        try:
            public = serialization.load_pem_public_key(pem.encode())
        except ValueError as exc:
            raise KMSError(f"gcp kms returned a public key for {label} that cannot be read: {exc}") from None
        spec = spec_of_public(public)
        if spec is not algorithm.spec:
            raise KMSError(f"gcp kms {label}: the public key is {spec.value} but the algorithm is {algorithm_name}")
        level = _enum_name(kms_v1.ProtectionLevel, response.protection_level)
        if level != "HSM":
            log.warning("gcp kms %s has protection level %s; a CA key should be HSM-protected", label, level)
        self._probe = name
        signer = _GcpSigner(self, name, algorithm_name, algorithm)
        adapter = REMOTE_ADAPTERS[spec.kty](uri=str(uri.redacted()), spec=spec, public=public, signer=signer,
                                            backend=f"gcp kms {self.endpoint}")
        return adapter  # type: ignore[return-value]  # each adapter also subclasses its family's ABC

    def create_key(self, uri: KeyURI, spec: KeySpec) -> CAKey:
        require_key(uri)
        ring, key_id, version = split_name(uri)
        pad = uri.query.get("padding", "pkcs1").lower()
        if pad not in ("pkcs1", "pss"):
            raise InvalidKeyURI(f"gcpkms key URI: padding is pkcs1 or pss, not {pad!r}")
        if "padding" in uri.query and spec.kty != "RSA":
            raise InvalidKeyURI(f"gcpkms key URI: padding applies to RSA keys, not {spec.value}")
        algorithm = _CREATE.get((spec, pad))
        if algorithm is None:
            raise UnsupportedAlgorithm(f"hsmca creates no {spec.value} keys in gcp kms; it creates "
                                       f"{', '.join(sorted({s.value for s, _ in _CREATE}))}")
        if version != "1":
            raise InvalidKeyURI(f"a new gcp kms key's first version is 1; the URI names version {version}")
        template = {"algorithm": getattr(kms_v1.CryptoKeyVersion.CryptoKeyVersionAlgorithm, algorithm),
                    "protection_level": kms_v1.ProtectionLevel.HSM}
        crypto_key = {"purpose": kms_v1.CryptoKey.CryptoKeyPurpose.ASYMMETRIC_SIGN, "version_template": template}
        # Not retried: after a lost answer the retry would say "already exists" about our own key.
        self._call(f"creating key {key_id} in {ring}", lambda: self.client.create_crypto_key(
            request={"parent": ring, "crypto_key_id": key_id, "crypto_key": crypto_key},
            timeout=self.timeout, retry=None), retry=False)
        log.info("created %s key %s (%s, HSM) in gcp kms %s", spec.value, key_id, algorithm, ring)
        return self._open_when_generated(uri)

    def _open_when_generated(self, uri: KeyURI) -> CAKey:
        """HSM versions are generated asynchronously: FAILED_PRECONDITION until they leave PENDING_GENERATION."""
        deadline, pause = time.monotonic() + GENERATION_WAIT, 0.2
        while True:
            try:
                return self.open_key(uri)
            except PermissionDenied as exc:
                if "PENDING_GENERATION" not in exc.reason or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 2.0)

    def health(self) -> dict[str, Any]:
        probe = self._probe
        if probe is None:
            ok, detail = self.breaker.state == "closed", "no key opened yet"
        else:
            try:
                self.client.get_public_key(request={"name": probe}, timeout=min(self.timeout, 5.0), retry=None)
                ok, detail = True, "answering"
            except Exception as exc:  # health reports, it does not raise
                ok, detail = False, _describe(exc)
        return {"backend": self.name, "endpoint": self.endpoint, "transport": self.transport, "ok": ok,
                "detail": detail, "breaker": self.breaker.state, "lastError": self.calls.last_error}

    def close(self) -> None:
        if self._pid == os.getpid():  # a forked child must not close the sockets its parent still uses
            self._client.transport.close()

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True) -> T:
        return self.calls.call(what, fn, self._classify, retry=retry)

    def _classify(self, exc: BaseException, what: str) -> str | None:
        """google-api-core's exceptions in the backend's vocabulary (see kms/resilience.py)."""
        if isinstance(exc, _API_OR_TRANSPORT):
            status = _status(exc) if isinstance(exc, gexc.GoogleAPICallError) else "TRANSPORT"
            if status != "TRANSPORT" and status not in _TRANSIENT_STATUSES:
                raise self._refusal(status, what, exc) from None
            return _describe(exc)
        if isinstance(exc, gauth.GoogleAuthError):  # RefreshError and kin: the credentials, not the service
            raise PermissionDenied(f"gcp kms {self.endpoint}: no usable Google credentials while {what}: "
                                   f"{_describe(exc)}") from None
        return None

    def _refusal(self, status: str, what: str, exc: BaseException) -> KMSError:
        where = f"gcp kms {self.endpoint}"
        if status == "NOT_FOUND":
            return KeyNotFound(f"{where}: not found while {what}: {_describe(exc)}")
        if status == "ALREADY_EXISTS":
            return KeyExists(f"{where}: the key already exists ({what}): {_describe(exc)}")
        if status in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
            return PermissionDenied(f"{where} refused {what}: {_describe(exc)}")
        if status == "FAILED_PRECONDITION":  # a disabled, destroyed or not yet generated version
            return PermissionDenied(f"{where} refused {what}: the key version is not usable: {_describe(exc)}")
        return SigningFailed(f"{where} refused {what}: {_describe(exc)}")


class _GcpSigner:
    def __init__(self, backend: GcpKmsBackend, name: str, algorithm_name: str, algorithm: _Algorithm) -> None:
        self.backend, self.name, self.algorithm_name, self.algorithm = backend, name, algorithm_name, algorithm
        self.label = _label(name)

    def sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm, scheme: Scheme,
                    message: bytes | None = None) -> bytes:
        want = self.algorithm
        if scheme != want.scheme:
            raise UnsupportedAlgorithm(f"gcp kms {self.label} is {self.algorithm_name}: it signs with "
                                       f"{_SCHEME_NAMES[want.scheme]} only, not {_SCHEME_NAMES[scheme]}")
        if algorithm.name != want.hash:
            raise UnsupportedAlgorithm(f"gcp kms {self.label} is {self.algorithm_name}: it signs {want.hash} "
                                       f"digests only, not {algorithm.name}")
        b = self.backend
        response = b._call(f"signing with {self.label}", lambda: b.client.asymmetric_sign(
            request={"name": self.name, "digest": {want.hash: digest}, "digest_crc32c": crc32c(digest)},
            timeout=b.timeout, retry=None))
        signature = bytes(response.signature)
        if not response.verified_digest_crc32c:
            problem = "the service did not confirm the digest's CRC32C"
        elif response.name != self.name:
            problem = f"the answer names {response.name!r}"
        elif response.signature_crc32c != crc32c(signature):
            problem = "the signature does not match its CRC32C"
        else:
            return signature
        raise SigningFailed(f"gcp kms {b.endpoint} integrity check failed while signing with {self.label}: {problem}")

    def sign_message(self, data: bytes) -> bytes:
        raise UnsupportedAlgorithm(f"gcp kms {self.label}: hsmca signs no whole messages (Ed25519) in gcp kms")


def _settings(uri: KeyURI) -> _Settings:
    q = uri.query
    endpoint = q.get("endpoint") or DEFAULT_ENDPOINT
    if "://" in endpoint or "/" in endpoint:
        raise InvalidKeyURI("gcpkms key URI: endpoint is host[:port], without a scheme or path")
    transport = q.get("transport", "rest").lower()
    if transport not in ("rest", "grpc"):
        raise InvalidKeyURI(f"gcpkms key URI: transport is rest or grpc, not {transport!r}")
    insecure = q.get("insecure", "0").lower() in ("1", "true", "yes")
    if insecure and not _loopback(endpoint):
        raise InvalidKeyURI("gcpkms key URI: insecure=1 (no TLS, no credentials) is for an emulator on "
                            "loopback only, e.g. endpoint=127.0.0.1:8085")
    try:
        timeout = float(q.get("timeout", DEFAULT_TIMEOUT))
        cooldown = float(q.get("cooldown", DEFAULT_COOLDOWN))
    except ValueError:
        raise InvalidKeyURI("gcpkms key URI: timeout and cooldown are numbers of seconds") from None
    if timeout <= 0 or cooldown < 0:
        raise InvalidKeyURI("gcpkms key URI: timeout must be positive and cooldown not negative")
    return _Settings(endpoint, transport, insecure, timeout, cooldown)


def _client(s: _Settings) -> kms_v1.KeyManagementServiceClient:
    """An anonymous plain-text client for an emulator, else Application Default Credentials over TLS."""
    if s.insecure and s.transport == "grpc":
        import grpc
        from google.cloud.kms_v1.services.key_management_service.transports import KeyManagementServiceGrpcTransport

        grpc_transport = KeyManagementServiceGrpcTransport(channel=grpc.insecure_channel(s.endpoint))
        return kms_v1.KeyManagementServiceClient(transport=grpc_transport)
    if s.insecure:  # the REST transport keeps an explicit http:// scheme in api_endpoint
        return kms_v1.KeyManagementServiceClient(transport="rest", credentials=gcreds.AnonymousCredentials(),
                                                 client_options={"api_endpoint": f"http://{s.endpoint}"})
    try:
        return kms_v1.KeyManagementServiceClient(transport=s.transport, client_options={"api_endpoint": s.endpoint})
    except gauth.DefaultCredentialsError as exc:
        raise PermissionDenied("gcp kms: no Google credentials (set GOOGLE_APPLICATION_CREDENTIALS, run on GCP "
                               f"with a service account, or `gcloud auth application-default login`): {exc}") from None


def _loopback(endpoint: str) -> bool:
    host = endpoint
    if host.startswith("["):  # [::1]:port
        host = host[1:host.find("]")]
    elif host.count(":") == 1:
        host = host.split(":")[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _enum_name(enum: Any, value: Any) -> str:
    """The member's name; a number this client library does not know yet stays a number."""
    try:
        return str(enum(value).name)
    except ValueError:
        return f"{enum.__name__} {value}"


def _label(name: str) -> str:
    """`key K version V`: what messages name (the full resource name is in the URI)."""
    match = _NAME_RE.fullmatch(name)
    return f"key {match.group(2)} version {match.group(3)}" if match else name


def _error_body(exc: gexc.GoogleAPICallError) -> dict[str, Any]:
    """The `error` object of a REST answer ({code, message, status}); empty for gRPC."""
    if isinstance(exc.response, requests.Response):
        try:
            error = exc.response.json().get("error")
        except ValueError:
            return {}
        return error if isinstance(error, dict) else {}
    return {}


def _status(exc: gexc.GoogleAPICallError) -> str:
    """The canonical status name: REST maps HTTP codes to coarse classes (400 for FAILED_PRECONDITION)."""
    status = _error_body(exc).get("status")
    if isinstance(status, str) and status:
        return status
    if exc.grpc_status_code is not None:
        return str(exc.grpc_status_code.name)
    return _HTTP_STATUS.get(exc.code or 0, "UNKNOWN")


def _describe(exc: BaseException) -> str:
    """One line: the service's status and message, or the network error's errno text."""
    if isinstance(exc, gexc.GoogleAPICallError):
        message = str(_error_body(exc).get("message") or exc.message or "").strip()
        return f"{_status(exc)}: {message[:200]}" if message else _status(exc)
    text = str(exc).strip()
    if isinstance(exc, requests.exceptions.Timeout):
        return f"{type(exc).__name__}: no answer in time"
    errno = re.search(r"\[Errno -?\d+\][^'\")]*", text)
    if errno:
        return f"{type(exc).__name__}: {errno.group(0).strip()}"
    first = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {first[:200]}" if first else type(exc).__name__


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), Cloud KMS's integrity checksum (google-crc32c, Google's own library)."""
    return int(google_crc32c.value(data))
