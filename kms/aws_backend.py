"""AWS KMS: `awskms:key-id=<id | arn | alias/NAME>;region=<region>[?endpoint=…&timeout=…&message-type=…&profile=…]`.

Keys are asymmetric SIGN_VERIFY keys made inside KMS (CreateKey); the private half never leaves it.
Only the digest travels (`MessageType=DIGEST`); AWS signs PSS with salt = digest length, as X.509
wants, and returns ECDSA signatures in DER. The key a URI names is resolved to its ARN when it is
opened, so re-pointing an alias later never changes the key under an adapter already in use.

`message-type=RAW` sends the whole to-be-signed message instead (AWS accepts at most 4096 bytes). It
exists for test servers such as moto, which ignore DIGEST and hash the digest again; never use it in
production.

Credentials come only from the SDK's standard chain (environment, shared config with the URI's
`profile`, container or instance role), never from the URI: a key URI is configuration and ends up
in logs and audit records. The region is the URI's, else the SDK's (`AWS_REGION`, the profile).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Hashable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from cryptography.hazmat.primitives import hashes, serialization

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

DEFAULT_TIMEOUT = 10.0  # seconds to connect and to read, per request; a signature takes milliseconds
DEFAULT_COOLDOWN = 5.0  # seconds a failing endpoint is left alone before one trial call
RAW_LIMIT = 4096  # bytes: the most AWS KMS accepts as Sign's Message

PATH_ATTRS = frozenset({"key-id", "region"})
QUERY_ATTRS = frozenset({"endpoint", "timeout", "message-type", "profile", "cooldown"})
_CREDENTIAL_WORDS = ("access-key", "secret", "credential", "token")

_AWS_SPECS: dict[KeySpec, str] = {
    KeySpec.EC_P256: "ECC_NIST_P256", KeySpec.EC_P384: "ECC_NIST_P384", KeySpec.RSA_2048: "RSA_2048",
    KeySpec.RSA_3072: "RSA_3072", KeySpec.RSA_4096: "RSA_4096",
}
_SPECS = {v: k for k, v in _AWS_SPECS.items()}
_ALGORITHMS: dict[tuple[str, str], str] = {
    ("ecdsa", "sha256"): "ECDSA_SHA_256", ("ecdsa", "sha384"): "ECDSA_SHA_384",
    ("ecdsa", "sha512"): "ECDSA_SHA_512",
    ("pkcs1v15", "sha256"): "RSASSA_PKCS1_V1_5_SHA_256", ("pkcs1v15", "sha384"): "RSASSA_PKCS1_V1_5_SHA_384",
    ("pkcs1v15", "sha512"): "RSASSA_PKCS1_V1_5_SHA_512",
    ("pss", "sha256"): "RSASSA_PSS_SHA_256", ("pss", "sha384"): "RSASSA_PSS_SHA_384",
    ("pss", "sha512"): "RSASSA_PSS_SHA_512",
}
# Worth another try: rate limits and the service's own transient states (AWS documents these as retryable).
# LimitExceededException is a resource quota (too many keys or aliases), which waiting does not lift.
_TRANSIENT_CODES = frozenset({
    "ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded",
    "KMSInternalException", "KeyUnavailableException", "DependencyTimeoutException", "ServiceUnavailable",
    "InternalFailure",
})
_DENIED_CODES = frozenset({
    "AccessDeniedException", "AccessDenied", "UnrecognizedClientException", "InvalidSignatureException",
    "ExpiredTokenException", "IncompleteSignature", "DisabledException", "KMSInvalidStateException",
})
_NETWORK: tuple[type[BaseException], ...] = (BotoConnectionError, HTTPClientError)
_NO_CREDENTIALS: tuple[type[BaseException], ...] = (NoCredentialsError, PartialCredentialsError,
                                                     CredentialRetrievalError)


def check_uri(uri: KeyURI) -> None:
    """Refuse attributes we do not know: a typo fails here, a secret in a URI fails loudly."""
    for where, names, known in (("path", uri.path, PATH_ATTRS), ("query", uri.query, QUERY_ATTRS)):
        for name in names:
            if any(word in name for word in _CREDENTIAL_WORDS):
                raise InvalidKeyURI(f"awskms key URI: {name!r} looks like a credential; AWS credentials come from "
                                    "the SDK chain (environment, profile, instance role), never from a key URI")
            if name not in known:
                raise InvalidKeyURI(f"awskms key URI: unknown {where} attribute {name!r}; "
                                    f"known: {', '.join(sorted(known))}")
    if "key-id" in uri.path and not uri.path["key-id"]:
        raise InvalidKeyURI("awskms key URI: key-id is empty")


def _timeout(uri: KeyURI) -> float:
    try:
        value = float(uri.query.get("timeout", DEFAULT_TIMEOUT))
    except ValueError:
        raise InvalidKeyURI("awskms key URI: timeout must be a number of seconds") from None
    if not 0 < value <= 300:
        raise InvalidKeyURI("awskms key URI: timeout must be more than 0 and at most 300 seconds")
    return value


def _message_type(uri: KeyURI) -> str:
    value = uri.query.get("message-type", "DIGEST").upper()
    if value not in ("DIGEST", "RAW"):
        raise InvalidKeyURI("awskms key URI: message-type is DIGEST (the default) or RAW (test servers only)")
    return value


class AwsKmsBackend:
    """One KMS client per (region, endpoint, profile, timeout); boto3 clients are thread-safe."""

    name = "awskms"

    @staticmethod
    def identity(uri: KeyURI) -> Hashable:
        check_uri(uri)
        # The region as written ("" = the SDK's default): resolving it here would cost a session per lookup.
        return (uri.path.get("region", ""), uri.query.get("endpoint"), uri.query.get("profile"), _timeout(uri))

    def __init__(self, uri: KeyURI) -> None:
        check_uri(uri)
        self.timeout = _timeout(uri)
        self.endpoint = uri.query.get("endpoint")
        try:
            session = boto3.session.Session(profile_name=uri.query.get("profile"))
        except ProfileNotFound as exc:
            raise InvalidKeyURI(f"awskms key URI: {exc}") from None
        region = uri.path.get("region") or session.region_name
        if not region:
            raise InvalidKeyURI("awskms key URI: no region (add ;region=… or set AWS_REGION / AWS_DEFAULT_REGION)")
        self.region: str = region
        self.label = f"aws kms {region}"
        if self.endpoint and urlsplit(self.endpoint).scheme == "http" and \
                urlsplit(self.endpoint).hostname not in ("127.0.0.1", "localhost", "::1"):
            log.warning("%s: endpoint %s is plain HTTP; use HTTPS outside tests", self.label, self.endpoint)
        config = Config(connect_timeout=self.timeout, read_timeout=self.timeout, user_agent_extra="hsmca",
                        retries={"total_max_attempts": 1, "mode": "standard"})  # we retry, see _call
        try:
            self.client: Any = session.client("kms", region_name=region, endpoint_url=self.endpoint, config=config)
        except ValueError as exc:
            raise InvalidKeyURI(f"awskms key URI: bad endpoint: {exc}") from None
        self._last_key: str | None = None
        try:
            cooldown = float(uri.query.get("cooldown", DEFAULT_COOLDOWN))
        except ValueError:
            raise InvalidKeyURI("awskms key URI: cooldown must be a number of seconds") from None
        self.calls = RemoteCalls(self.label, cooldown=cooldown)
        self.breaker = self.calls.breaker

    def open_key(self, uri: KeyURI) -> CAKey:
        require_key(uri)
        check_uri(uri)
        key_id = uri.path.get("key-id")
        if not key_id:
            raise InvalidKeyURI("awskms key URI names no key (add key-id=<id | arn | alias/NAME>)")
        message_type = _message_type(uri)
        meta = self._call(f"describing key {key_id}", lambda: self.client.describe_key(KeyId=key_id))["KeyMetadata"]
        self._check_usable(key_id, meta)
        arn = str(meta["Arn"])
        der = self._call(f"reading the public key of {key_id}",
                         lambda: self.client.get_public_key(KeyId=arn))["PublicKey"]
        try:
            public = serialization.load_der_public_key(bytes(der))
        except ValueError as exc:
            raise KMSError(f"{self.label} returned a public key for {key_id} that cannot be read: {exc}") from None
        spec = spec_of_public(public)
        if spec is not _SPECS[meta["KeySpec"]]:
            raise KMSError(f"{self.label}: key {key_id} is {meta['KeySpec']} but its public key is {spec.value}")
        signer = _KmsSigner(self, key_id, arn, frozenset(meta.get("SigningAlgorithms") or ()), message_type)
        self._last_key = arn
        adapter = REMOTE_ADAPTERS[spec.kty](uri=str(uri.redacted()), spec=spec, public=public, signer=signer,
                                            backend=self.label)
        return adapter  # type: ignore[return-value]  # each adapter also subclasses its family's ABC

    def create_key(self, uri: KeyURI, spec: KeySpec) -> CAKey:
        """A new key; name it with key-id=alias/NAME (AWS assigns key ids), or omit key-id and keep the
        returned adapter's `uri`, which names the new key by its ARN."""
        require_key(uri)
        check_uri(uri)
        _message_type(uri)
        aws_spec = _AWS_SPECS.get(spec)
        if aws_spec is None:
            # AWS's ECC_NIST_EDWARDS25519 signs whole messages only, at most 4096 bytes: a CRL outgrows that.
            why = " (AWS KMS Ed25519 signs whole messages of at most 4096 bytes)" if spec is KeySpec.ED25519 else ""
            raise UnsupportedAlgorithm(f"hsmca does not create {spec.value} keys in AWS KMS{why}; "
                                       f"supported: {', '.join(s.value for s in _AWS_SPECS)}")
        key_id = uri.path.get("key-id")
        alias = key_id if key_id and key_id.startswith("alias/") else None
        if alias is not None:
            _check_alias(alias)
        if key_id is not None and self._exists(key_id):
            raise KeyExists(f"{self.label}: {key_id} already exists")
        if key_id is not None and alias is None:
            raise InvalidKeyURI(f"{self.label} has no key {key_id}, and AWS assigns key ids itself: name a new key "
                                "with key-id=alias/NAME, or omit key-id")
        created = self._call(f"creating a {aws_spec} key", lambda: self.client.create_key(
            KeyUsage="SIGN_VERIFY", KeySpec=aws_spec, Description="hsmca CA key"), retry=False)
        arn = str(created["KeyMetadata"]["Arn"])
        log.info("created %s key %s in %s", aws_spec, arn, self.label)
        if alias is None:
            return self.open_key(KeyURI(uri.scheme, {**uri.path, "key-id": arn}, uri.query))
        try:
            self._call(f"creating alias {alias}", lambda: self.client.create_alias(AliasName=alias, TargetKeyId=arn),
                       retry=False)
        except BackendUnavailable:
            log.error("%s: key %s was created but alias %s may not exist; check before retrying", self.label, arn,
                      alias)
            raise
        except KMSError:
            self._abandon(arn, alias)  # KeyExists (a concurrent create won) or a refusal: no orphan CA key
            raise
        return self.open_key(uri)

    def health(self) -> dict[str, Any]:
        """A cheap call without retries: DescribeKey of the last key opened, else ListKeys."""
        try:
            if self._last_key:
                meta = self.client.describe_key(KeyId=self._last_key)["KeyMetadata"]
                ok = meta.get("KeyState") == "Enabled"
                detail = "answering" if ok else f"key {self._last_key} is {meta.get('KeyState')}"
            else:
                self.client.list_keys(Limit=1)
                ok, detail = True, "answering"
        except Exception as exc:  # health reports, it does not raise
            ok, detail = False, _describe(exc)
        return {"backend": self.name, "region": self.region, "endpoint": self.endpoint, "ok": ok,
                "status": "ok" if ok else f"unavailable: {detail}", "detail": detail,
                "lastError": self.calls.last_error}

    def close(self) -> None:
        self.client.close()

    def _call(self, what: str, fn: Callable[[], T], *, retry: bool = True, refused: type[KMSError] = KMSError) -> T:
        return self.calls.call(what, fn, lambda exc, w: self._classify(exc, w, refused), retry=retry,
                               backoff=lambda attempt, _exc: random.uniform(0, 0.25 * 2 ** attempt))

    def _classify(self, exc: BaseException, what: str, refused: type[KMSError]) -> str | None:
        """botocore's exceptions in the backend's vocabulary (see kms/resilience.py)."""
        if isinstance(exc, ClientError):
            code, status = _code(exc), _status(exc)
            if code in _TRANSIENT_CODES or status == 429 or status >= 500:
                return _describe(exc)
            if code == "NotFoundException":
                raise KeyNotFound(f"{self.label}: not found while {what} ({_describe(exc)})") from None
            if code in _DENIED_CODES:
                raise PermissionDenied(f"{self.label} refused {what}: {_describe(exc)}") from None
            if code == "AlreadyExistsException":
                raise KeyExists(f"{self.label} refused {what}: {_describe(exc)}") from None
            raise refused(f"{self.label} refused {what}: {_describe(exc)}") from None
        if isinstance(exc, _NETWORK):
            return _describe(exc)
        if isinstance(exc, _NO_CREDENTIALS):
            raise PermissionDenied(f"{self.label} while {what}: no usable AWS credentials in the SDK chain "
                                   f"(environment, profile, instance role): {_describe(exc)}") from None
        if isinstance(exc, BotoCoreError):
            raise refused(f"{self.label} while {what}: {_describe(exc)}") from None
        return None

    def _check_usable(self, key_id: str, meta: dict[str, Any]) -> None:
        usage, state, aws_spec = meta.get("KeyUsage"), meta.get("KeyState"), meta.get("KeySpec")
        if usage != "SIGN_VERIFY":
            raise UnsupportedAlgorithm(f"{self.label}: key {key_id} has KeyUsage {usage}; a CA key needs SIGN_VERIFY")
        if aws_spec not in _SPECS:
            raise UnsupportedAlgorithm(f"{self.label}: key {key_id} is {aws_spec}; hsmca signs with "
                                       f"{', '.join(_SPECS)}")
        if state in ("Unavailable", "Creating", "Updating"):
            raise BackendUnavailable(f"{self.label}: key {key_id} is {state} for now")
        if state != "Enabled":
            raise PermissionDenied(f"{self.label}: key {key_id} is {state}; it cannot sign until it is enabled")

    def _exists(self, key_id: str) -> bool:
        try:
            self._call(f"looking up {key_id}", lambda: self.client.describe_key(KeyId=key_id))
        except KeyNotFound:
            return False
        return True

    def _abandon(self, arn: str, alias: str) -> None:
        """Schedule a key we made but could not name for deletion, after the shortest waiting period."""
        try:
            self.client.schedule_key_deletion(KeyId=arn, PendingWindowInDays=7)
            log.warning("%s: alias %s not created; key %s scheduled for deletion in 7 days", self.label, alias, arn)
        except Exception as exc:
            log.error("%s: alias %s not created and key %s left in place: %s", self.label, alias, arn,
                      _describe(exc))


class _KmsSigner:
    """The RemoteSigner of one key: Sign by ARN with the algorithm the adapter's scheme and hash name."""

    def __init__(self, backend: AwsKmsBackend, key_id: str, arn: str, algorithms: frozenset[str],
                 message_type: str) -> None:
        self.backend, self.key_id, self.arn = backend, key_id, arn
        self.algorithms, self.message_type = algorithms, message_type

    def sign_digest(self, digest: bytes, algorithm: hashes.HashAlgorithm, scheme: Scheme,
                    message: bytes | None = None) -> bytes:
        b = self.backend
        name = _ALGORITHMS.get((scheme, algorithm.name))
        if name is None or (self.algorithms and name not in self.algorithms):
            offered = ", ".join(sorted(self.algorithms)) or "none"
            raise UnsupportedAlgorithm(f"{b.label}: key {self.key_id} cannot sign {scheme} with {algorithm.name}; "
                                       f"it offers {offered}")
        if self.message_type == "RAW":
            if message is None:
                raise UnsupportedAlgorithm(f"{b.label}: key {self.key_id} is opened with message-type=RAW, which "
                                           "sends the whole message, but only a digest was given (Prehashed); "
                                           "use message-type=DIGEST")
            if len(message) > RAW_LIMIT:
                raise SigningFailed(f"{b.label}: a {len(message)}-byte message is over AWS KMS's {RAW_LIMIT}-byte "
                                    "limit for message-type=RAW; use message-type=DIGEST (the default)")
            payload = message
        else:
            payload = digest
        response = b._call(f"signing with key {self.key_id}", lambda: b.client.sign(
            KeyId=self.arn, Message=payload, MessageType=self.message_type, SigningAlgorithm=name),
            refused=SigningFailed)
        return bytes(response["Signature"])

    def sign_message(self, data: bytes) -> bytes:
        raise UnsupportedAlgorithm(f"{self.backend.label}: hsmca signs with AWS KMS EC and RSA keys only")


def _check_alias(alias: str) -> None:
    """AWS's alias rules, checked before a key is created for it."""
    name = alias[len("alias/"):]
    if not name or len(alias) > 256 or not all(c.isascii() and (c.isalnum() or c in "/_-") for c in name):
        raise InvalidKeyURI(f"awskms key URI: {alias!r} is not an AWS alias (alias/ then letters, digits, / _ -)")
    if alias.lower().startswith("alias/aws/"):
        raise InvalidKeyURI("awskms key URI: aliases under alias/aws/ are reserved for AWS managed keys")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def _describe(exc: BaseException) -> str:
    """One line: the AWS error code and message, or the exception's name and first line."""
    if isinstance(exc, ClientError):
        message = str(exc.response.get("Error", {}).get("Message", "")).strip()
        return f"{_code(exc) or 'ClientError'}: {message[:200]}" if message else _code(exc) or "ClientError"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__
