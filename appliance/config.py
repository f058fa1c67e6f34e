"""`ca.json`: step-ca 0.19's shape where step-ca has the field, hsmca's additions beside it.

Validated with pydantic so that a typo or a bad value stops the CA at start-up with the path
of the offending field, instead of surfacing later as a wrong certificate.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import os
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import load_pem_public_key, load_ssh_public_key
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from appliance.atomic_file import write_atomically
from kms.errors import InvalidKeyURI
from kms.uri import KeyURI, parse_key_uri
from policy import Claims, PolicyConfig, parse_duration

DEFAULT_PATH = "~/.hsmca"
MIB = 1024 * 1024


def hsmca_path() -> Path:
    """The CA's home: `$HSMCA_PATH`, else `~/.hsmca` (step's `$STEPPATH` plays this role)."""
    return Path(os.environ.get("HSMCA_PATH") or DEFAULT_PATH).expanduser()


def default_config_path() -> Path:
    return hsmca_path() / "config" / "ca.json"


class ConfigError(Exception):
    """`ca.json` is missing, unreadable or invalid; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# step-ca's Go cipher-suite names (IANA names) → OpenSSL's names, for Python's ssl module.
# TLS 1.3 suites are not configurable in Python's ssl and always use OpenSSL's defaults.
CIPHER_SUITES: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
}


class TLSOptions(_Strict):
    """step-ca's `tls` block; also returned to clients as `tlsOptions` in sign responses."""

    cipherSuites: list[str] = Field(
        default_factory=lambda: [
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
            "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        ]
    )
    minVersion: float = 1.2
    maxVersion: float = 1.3
    renegotiation: bool = False

    @field_validator("cipherSuites")
    @classmethod
    def _known_suites(cls, v: list[str]) -> list[str]:
        unknown = [s for s in v if s not in CIPHER_SUITES]
        if unknown:
            raise ValueError(f"unknown cipher suites {unknown}; known: {sorted(CIPHER_SUITES)}")
        return v

    @field_validator("minVersion", "maxVersion")
    @classmethod
    def _version(cls, v: float) -> float:
        if v not in (1.2, 1.3):
            raise ValueError("TLS version must be 1.2 or 1.3")
        return v


class DBConfig(_Strict):
    type: Literal["sqlite", "postgresql", "mysql"] = "sqlite"
    dataSource: str
    badgerFileLoadingMode: str | None = None  # step-ca writes it whatever the type; meaningless without badger


class KMSConfig(_Strict):
    """step-ca's `kms` block: `uri` carries what all keys share (module, token, PIN source).

    `environment` (hsmca) is set before the backend loads, e.g. SOFTHSM2_CONF for SoftHSM.
    """

    type: Literal["pkcs11"] = "pkcs11"
    uri: str | None = None
    environment: dict[str, str] = Field(default_factory=dict)


class X509Options(_Strict):
    """step-ca's `options.x509`: a certificate template (hsmca's are Jinja2: see the README's "Certificate
    templates"; a step-ca Go template is refused when the CA loads it), inline or in a file, and its data."""

    template: str | None = None
    templateFile: str | None = None  # relative to the CA's home
    templateData: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_template(self) -> X509Options:
        if self.template is not None and self.templateFile is not None:
            raise ValueError("give template or templateFile, not both")
        return self


class ProvisionerOptions(_Strict):
    x509: X509Options | None = None
    # step-ca's `options.ssh`: the same three fields; the template renders an SSH certificate's JSON (`type`,
    # `keyId`, `principals`, `extensions`, `criticalOptions`; see the README's SSH section).
    ssh: X509Options | None = None


class ProvisionerConfig(_Strict):
    """A step-ca JWK provisioner, plus its own `policy` (names, keys) on top of the authority's."""

    type: Literal["JWK"]
    name: str = Field(min_length=1, max_length=128)
    key: dict[str, Any]
    encryptedKey: str | None = None
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    options: ProvisionerOptions | None = None


def _pem_blocks(value: str, field: str) -> bytes:
    """step-ca's `[]byte` fields are the base64 of a PEM file in ca.json."""
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise ValueError(f"{field} must be the base64 of a PEM file (as step-ca writes it)") from None


def x5c_roots(value: str) -> list[x509.Certificate]:
    """The certificates of an X5C provisioner's `roots` (base64 of a PEM bundle); ValueError saying what is wrong."""
    pem = _pem_blocks(value, "roots")
    try:
        roots = x509.load_pem_x509_certificates(pem)
    except ValueError as exc:
        raise ValueError(f"roots: not a PEM bundle of certificates: {exc}") from None
    for cert in roots:
        try:
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (x509.ExtensionNotFound, ValueError):
            constraints = None
        if constraints is None or not constraints.ca:
            raise ValueError(f"roots: {cert.subject.rfc4514_string()} is not a CA certificate (basicConstraints CA)")
    return roots


def k8s_public_keys(value: str) -> list[PublicKeyTypes]:
    """The keys of a K8sSA provisioner's `publicKeys` (base64 of PEM public keys or certificates)."""
    pem = _pem_blocks(value, "publicKeys")
    keys: list[PublicKeyTypes] = []
    for block in re.finditer(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", pem, re.S):
        kind = block.group(1).decode()
        try:
            if kind == "CERTIFICATE":
                key: PublicKeyTypes = x509.load_pem_x509_certificate(block.group(0)).public_key()
            elif kind in ("PUBLIC KEY", "RSA PUBLIC KEY"):
                key = load_pem_public_key(block.group(0))
            else:
                raise ValueError(f"a {kind} block is not a public key")
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise ValueError(f"publicKeys: key {len(keys) + 1}: {exc}") from None
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
            raise ValueError(f"publicKeys: key {len(keys) + 1} is a {type(key).__name__}; RSA, EC or Ed25519 only")
        keys.append(key)
    if not keys:
        raise ValueError("publicKeys holds no PEM public key")
    return keys


class X5CProvisionerConfig(_Strict):
    """step-ca's X5C provisioner: a token whose `x5c` header chains to one of `roots` (base64 of a PEM bundle)."""

    type: Literal["X5C"]
    name: str = Field(min_length=1, max_length=128)
    roots: str
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    options: ProvisionerOptions | None = None

    @field_validator("roots")
    @classmethod
    def _roots(cls, v: str) -> str:
        x5c_roots(v)
        return v


class K8sSAProvisionerConfig(_Strict):
    """step-ca's K8sSA provisioner: a Kubernetes service-account token signed by one of `publicKeys` (base64 of
    PEM public keys). hsmca additions: `issuers`, the `iss` a bound (projected) token may have (empty: any), and
    `audiences`, what its `aud` may name besides this CA's own URLs."""

    type: Literal["K8sSA"]
    name: str = Field(min_length=1, max_length=128)
    publicKeys: str
    issuers: list[str] = Field(default_factory=list)
    audiences: list[str] = Field(default_factory=list)
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    options: ProvisionerOptions | None = None

    @field_validator("publicKeys")
    @classmethod
    def _keys(cls, v: str) -> str:
        k8s_public_keys(v)
        return v

    @field_validator("issuers", "audiences")
    @classmethod
    def _non_empty(cls, v: list[str]) -> list[str]:
        if any(not item for item in v):
            raise ValueError("entries cannot be empty")
        return v


def loopback_host(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost: where plain http cannot be intercepted off the machine (RFC 8252 §8.3)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def provider_url(value: str, field: str) -> str:
    """An OpenID provider's URL: https, or http on a loopback address only (a provider on this machine)."""
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
    except ValueError as exc:
        raise ValueError(f"{field} {value!r} is not a URL: {exc}") from None
    if parts.scheme == "https" and host:
        return value
    if parts.scheme == "http" and loopback_host(host):
        return value
    raise ValueError(f"{field} must be an https URL (http only on a loopback address), not {value!r}")


class OIDCProvisionerConfig(_Strict):
    """step-ca's OIDC provisioner: an ID token from the OpenID provider at `configurationEndpoint`, issued to
    `clientID`. `clientSecret` may be empty (a public client); like step-ca, hsmca publishes it in
    `GET /provisioners`, since a native app's secret is no secret (RFC 8252 §8.5)."""

    type: Literal["OIDC"]
    name: str = Field(min_length=1, max_length=128)
    clientID: str = Field(min_length=1, max_length=512)
    clientSecret: str = ""
    configurationEndpoint: str
    tenantID: str | None = None  # Azure: replaces `{tenantid}` in the discovered issuer
    admins: list[str] = Field(default_factory=list)
    domains: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)
    listenAddress: str | None = None  # the client's loopback redirect listener, HOST:PORT
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    options: ProvisionerOptions | None = None

    @field_validator("configurationEndpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        return provider_url(v, "configurationEndpoint")

    @field_validator("listenAddress")
    @classmethod
    def _listen(cls, v: str | None) -> str | None:
        if v:
            split_address(v)
        return v

    @field_validator("admins")
    @classmethod
    def _admins(cls, v: list[str]) -> list[str]:
        bad = [a for a in v if a.count("@") != 1 or a.startswith("@") or a.endswith("@")]
        if bad:
            raise ValueError(f"admins must be e-mail addresses, not {bad}")
        return v

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        bad = [d for d in v if not d or "@" in d or "/" in d or d.startswith(".")]
        if bad:
            raise ValueError(f"domains must be domain names such as example.com, not {bad}")
        return v

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        if any(not g for g in v):
            raise ValueError("groups cannot hold an empty name")
        return v


class SSHPOPProvisionerConfig(_Strict):
    """step-ca's SSHPOP provisioner: a host proves possession of its SSH host certificate (this CA issued it, not
    revoked, valid now) by signing the token with the certificate's key, to renew, rekey or revoke it."""

    type: Literal["SSHPOP"]
    name: str = Field(min_length=1, max_length=128)
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    options: ProvisionerOptions | None = None


ChallengeType = Literal["http-01", "dns-01", "tls-alpn-01"]
ALL_CHALLENGES: tuple[ChallengeType, ...] = ("http-01", "dns-01", "tls-alpn-01")


class ACMEProvisionerConfig(_Strict):
    """hsmca: an ACME (RFC 8555) provisioner at `/acme/{name}/directory`, gated by its own policy.

    The validator connects to `http01Port`/`tlsalpn01Port` (80/443 as the RFCs say; other ports are for tests
    and for sites whose front door forwards), asks `resolvers` (HOST:PORT; empty = the system's), and never
    connects to an address in `denyValidationTo` (CIDRs), nor to unspecified or multicast addresses.
    """

    type: Literal["ACME"]
    name: str = Field(min_length=1, max_length=128)
    challenges: list[ChallengeType] = Field(default_factory=lambda: list(ALL_CHALLENGES))
    http01Port: int = Field(default=80, ge=1, le=65535)
    tlsalpn01Port: int = Field(default=443, ge=1, le=65535)
    resolvers: list[str] = Field(default_factory=list)
    validationTimeout: float = Field(default=10.0, gt=0, le=120)
    denyValidationTo: list[str] = Field(default_factory=list)
    termsOfService: str | None = None
    # New accounts must be bound to a key made with `hsmca acme eab add` (RFC 8555 §7.3.4).
    requireEAB: bool = False
    # step-ca 0.19's: put a SAN in the CN when the CSR has none. Accepted for compatibility; hsmca always does.
    forceCN: bool = False
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    options: ProvisionerOptions | None = None

    @field_validator("resolvers")
    @classmethod
    def _resolvers(cls, v: list[str]) -> list[str]:
        for r in v:
            split_address(r)
        return v

    @field_validator("termsOfService")
    @classmethod
    def _terms(cls, v: str | None) -> str | None:
        if v is not None and urlsplit(v).scheme not in ("http", "https"):
            raise ValueError(f"termsOfService must be an http(s) URL (clients show it to their users), not {v!r}")
        return v

    @field_validator("denyValidationTo")
    @classmethod
    def _networks(cls, v: list[str]) -> list[str]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ValueError(f"denyValidationTo: {exc}") from None
        return v


AnyProvisionerConfig = Annotated[ProvisionerConfig | ACMEProvisionerConfig | X5CProvisionerConfig
                                 | K8sSAProvisionerConfig | OIDCProvisionerConfig | SSHPOPProvisionerConfig,
                                 Field(discriminator="type")]


class AuthorityConfig(_Strict):
    provisioners: list[AnyProvisionerConfig] = Field(default_factory=list)
    claims: Claims | None = None
    policy: PolicyConfig | None = None
    # hsmca: hardened deployments switch this off; clients then need the provisioner key file.
    publishEncryptedKeys: bool = True
    # hsmca: how long after expiry a certificate may still be renewed (step's allowRenewalAfterExpiry,
    # bounded); none by default, since an expired certificate no longer vouches for its holder.
    renewalGracePeriod: str = "0s"
    # step-ca fields hsmca accepts and does not use: the intermediate's subject for `step ca init` (hsmca's comes
    # from the ceremony), and the backdate of certificates (hsmca's is fixed).
    template: dict[str, Any] | None = None
    backdate: str | None = None

    @field_validator("renewalGracePeriod")
    @classmethod
    def _grace(cls, v: str) -> str:
        if parse_duration(v).total_seconds() < 0:
            raise ValueError("renewalGracePeriod cannot be negative")
        return v

    @property
    def renewal_grace(self) -> timedelta:
        return parse_duration(self.renewalGracePeriod)

    @field_validator("provisioners")
    @classmethod
    def _unique_names(cls, v: list[AnyProvisionerConfig]) -> list[AnyProvisionerConfig]:
        names = [p.name for p in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provisioner names must be unique: {dupes}")
        k8s = [p.name for p in v if p.type == "K8sSA"]
        if len(k8s) > 1:  # a service-account token names no provisioner, so one judges them all (as step-ca)
            raise ValueError(f"at most one K8sSA provisioner, not {k8s}")
        return v


class ServerConfig(_Strict):
    """hsmca: how `hsmca serve` runs: `workers` HTTPS processes sharing one listening socket, `httpWorkers`
    plain-HTTP processes sharing the plain-HTTP port (SO_REUSEPORT), each with `threads` application threads.

    The limits hold for both listeners, per process (serving/http_server.py): a client has `handshakeTimeout`
    seconds for its TLS handshake, `headerTimeout` for a request's whole line and headers (from its first byte,
    however slowly it trickles), `bodyTimeout` for the whole body, `writeTimeout` to read an answer, and may
    stay idle `keepAlive` seconds between requests (0: one request per connection). Past
    `maxConnectionsPerAddress` connections from one address, or `maxConnections` in all, a new connection is
    answered 503 and closed."""

    workers: int = Field(default=2, ge=1, le=64)
    httpWorkers: int = Field(default=2, ge=1, le=64)
    threads: int = Field(default=4, ge=1, le=64)
    # How long a reload (SIGHUP) keeps the previous configuration's KMS sessions open for requests still running.
    requestTimeout: int = Field(default=30, ge=1, le=600)
    gracefulTimeout: int = Field(default=20, ge=1, le=600)
    keepAlive: float = Field(default=5, ge=0, le=300)
    handshakeTimeout: float = Field(default=10, gt=0, le=300)
    headerTimeout: float = Field(default=10, gt=0, le=300)
    bodyTimeout: float = Field(default=30, gt=0, le=600)
    writeTimeout: float = Field(default=30, gt=0, le=600)
    maxConnections: int = Field(default=1000, ge=1, le=100_000)
    maxConnectionsPerAddress: int = Field(default=100, ge=1, le=100_000)
    maxRequestBytes: int = Field(default=1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    # A reservation older than this, still not signed, was left by a killed worker.
    reservationTimeout: str = "2m"
    housekeepingInterval: str = "30s"
    tlsCertificateLifetime: str = "720h"

    @field_validator("reservationTimeout", "housekeepingInterval", "tlsCertificateLifetime")
    @classmethod
    def _duration(cls, v: str) -> str:
        parse_duration(v)
        return v

    @model_validator(mode="after")
    def _reservations_outlive_requests(self) -> ServerConfig:
        # A reservation swept while its request still runs is refused at "issued" (safe, but a
        # needless 503), so keep the cut-off well above the slowest signature; zero would sweep all.
        for name in ("reservationTimeout", "housekeepingInterval", "tlsCertificateLifetime"):
            if parse_duration(getattr(self, name)).total_seconds() <= 0:
                raise ValueError(f"{name} must be positive")
        return self


class SyslogConfig(_Strict):
    """hsmca: also send every audit record to syslog/journald as RFC 5424 with structured data (a copy for a SIEM;
    the chained file stays the evidence). `address`: a Unix datagram socket path (journald's /dev/log) or
    udp://HOST:PORT. Sends never block a request: a record that cannot be sent is counted and logged."""

    address: str = "/dev/log"
    facility: int = Field(default=10, ge=0, le=23)  # 10: authpriv
    appName: str = Field(default="hsmca", min_length=1, max_length=48, pattern=r"^[!-~]+$")

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v.startswith("udp://"):
            split_address(v.removeprefix("udp://"))
        elif not v.startswith("/"):
            raise ValueError("must be a Unix socket path (e.g. /dev/log) or udp://HOST:PORT")
        return v


class AuditConfig(_Strict):
    """The audit trail: hash-chained JSON lines (one chain per writing process), sealed by signed checkpoints.

    `key`/`certificate`: the audit key in the CA's KMS and the certificate the CA issued for it (made by
    `hsmca init` or `hsmca audit init-key`); without them records are chained but never sealed.
    `checkpointInterval`: how often a process that wrote records signs a checkpoint (also at shutdown and rotation).
    `maxBytes`: the file is rotated past this size (0: never); the new file continues every chain."""

    path: str = "audit/audit.jsonl"
    key: str | None = None
    certificate: str | None = None
    checkpointInterval: str = "1m"
    maxBytes: int = Field(default=256 * 1024 * 1024, ge=0)
    replica: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")  # default: the host name
    syslog: SyslogConfig | None = None

    @field_validator("checkpointInterval")
    @classmethod
    def _interval(cls, v: str) -> str:
        if parse_duration(v).total_seconds() < 1:
            raise ValueError("must be at least 1s, e.g. 1m")
        return v

    @model_validator(mode="after")
    def _key_and_certificate(self) -> AuditConfig:
        if (self.key is None) != (self.certificate is None):
            raise ValueError("key and certificate go together (`hsmca audit init-key` sets both)")
        return self


class DelegatedResponder(_Strict):
    """hsmca: a delegated OCSP responder (made by `hsmca ocsp-responder`): its kms key and its certificate."""

    key: str
    certificate: str


class OCSPConfig(_Strict):
    """hsmca: the OCSP responder. A certificate's response is signed at its first request and stored; `validity`
    is nextUpdate - thisUpdate (stored ones are re-signed past half of it). `presign` also signs one for every new
    certificate in housekeeping (a second KMS signature per certificate, asked for or not). `echoNonce` signs
    every request that carries a nonce (a KMS signature each)."""

    validity: str = "24h"
    echoNonce: bool = False
    presign: bool = False
    presignBatch: int = Field(default=500, ge=1, le=100_000)
    # hsmca: responses the plain-HTTP listener keeps in memory (0: none; every request reads the database), and
    # the bytes they may take per listener process (keys, answers and a fixed overhead per key; both bounds hold).
    memorySize: int = Field(default=100_000, ge=0, le=10_000_000)
    memoryBytes: int = Field(default=32 * MIB, ge=MIB, le=4096 * MIB)
    responders: list[DelegatedResponder] = Field(default_factory=list)

    @field_validator("validity")
    @classmethod
    def _validity(cls, v: str) -> str:
        if not 60 <= parse_duration(v).total_seconds() <= 7 * 86400:
            raise ValueError("ocsp.validity must be between 1m and 168h")
        return v


class CRLConfig(_Strict):
    """hsmca: CRLs. `validity` is nextUpdate - thisUpdate; the housekeeping process signs a new one past half
    of it, and within seconds of a revocation."""

    validity: str = "24h"

    @field_validator("validity")
    @classmethod
    def _validity(cls, v: str) -> str:
        if not 300 <= parse_duration(v).total_seconds() <= 31 * 86400:
            raise ValueError("crl.validity must be between 5m and 744h")
        return v


class CertificateURLs(_Strict):
    """hsmca: the URLs written into issued certificates (CRL distribution point, AIA OCSP and caIssuers).

    Unset: `publicURL` + /crl, /ocsp, /intermediate.crt, else the plain-HTTP listener's address
    (see appliance/ca/urls.py). An empty string leaves that URL out of certificates.
    """

    crl: str | None = None
    ocsp: str | None = None
    caIssuers: str | None = None

    @field_validator("crl", "ocsp", "caIssuers")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v and not v.startswith(("http://", "https://", "ldap://")):
            raise ValueError("must be an http://, https:// or ldap:// URL (or empty to leave it out)")
        return v


class SSHConfig(_Strict):
    """step-ca's `ssh` block, with hsmca's keys as KMS URIs (merged with `kms.uri` like the intermediate's):
    `userKey` signs user certificates, `hostKey` host certificates. `federatedUserKeys`/`federatedHostKeys`
    (hsmca) are CA public keys (`ssh-ed25519 AAAA…` lines) still published by `/ssh/roots` and `/ssh/federation`
    after a rotation, until relying parties have the new key and the old one is retired."""

    userKey: str | None = None
    hostKey: str | None = None
    federatedUserKeys: list[str] = Field(default_factory=list)
    federatedHostKeys: list[str] = Field(default_factory=list)
    # step-ca's, accepted and not used: hsmca adds no principal and runs no command on the host.
    addUserPrincipal: str | None = None
    addUserCommand: str | None = None

    @field_validator("userKey", "hostKey")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                parse_key_uri(v)
            except InvalidKeyURI as exc:
                raise ValueError(f"not a key URI: {exc}") from None
        return v

    @field_validator("federatedUserKeys", "federatedHostKeys")
    @classmethod
    def _lines(cls, v: list[str]) -> list[str]:
        for line in v:
            try:
                load_ssh_public_key(line.encode())
            except (ValueError, UnsupportedAlgorithm) as exc:
                raise ValueError(f"{line[:40]!r}… is not an SSH public key line: {exc}") from None
        return v


class CAConfig(_Strict):
    root: str
    # The first intermediate (step-ca's fields). Intermediates live in the database; these are
    # recorded there on first start, and may be absent when the first one comes from a ceremony.
    crt: str | None = None
    key: str | None = None
    address: str = ":9000"
    dnsNames: list[str] = Field(min_length=1)
    db: DBConfig
    authority: AuthorityConfig = Field(default_factory=AuthorityConfig)
    tls: TLSOptions = Field(default_factory=TLSOptions)
    kms: KMSConfig = Field(default_factory=KMSConfig)
    # step-ca fields hsmca accepts and does not use yet.
    federatedRoots: list[str] | None = None
    logger: dict[str, Any] | None = None
    insecureAddress: str | None = None  # step-ca's plain-HTTP listener; hsmca's is httpAddress
    commonName: str | None = None
    # hsmca additions
    httpAddress: str = ":9080"
    publicURL: str | None = None
    server: ServerConfig = Field(default_factory=ServerConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)
    crl: CRLConfig = Field(default_factory=CRLConfig)
    certificateURLs: CertificateURLs = Field(default_factory=CertificateURLs)
    ocsp: OCSPConfig = Field(default_factory=OCSPConfig)
    ssh: SSHConfig | None = None
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("address", "httpAddress")
    @classmethod
    def _address(cls, v: str) -> str:
        split_address(v)
        return v

    @field_validator("publicURL")
    @classmethod
    def _public_url(cls, v: str | None) -> str | None:
        # Only the shape, as for certificateURLs: a CA whose publicURL names `localhost` keeps starting;
        # `hsmca public-url` and `hsmca init --public-url` check the host too (appliance/ca/urls.py).
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL, e.g. http://ca.internal:9080 "
                             "(set it with `hsmca public-url URL`)")
        return v

    @property
    def base_dir(self) -> Path:
        """The CA's home: the parent of the `config/` directory holding ca.json, else $HSMCA_PATH."""
        return self._base_dir or hsmca_path()

    def resolve(self, path: str) -> Path:
        """Relative paths in ca.json are relative to the CA's home (see `base_dir`)."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.base_dir / p

    def key_uri(self, key: str | None = None) -> str:
        """The full URI of a CA key: `kms.uri` supplies what the key's own URI leaves out."""
        key = key or self.key
        if not key:
            raise ConfigError("no key URI: ca.json names no intermediate key ('key')")
        return merge_key_uri(self.kms.uri, key)

    def apply_kms_environment(self) -> None:
        """Set the backend's environment before any module loads (SoftHSM reads it once)."""
        for name, value in self.kms.environment.items():
            os.environ[name] = str(self.resolve(value)) if name.endswith("_CONF") else value


def split_address(address: str) -> tuple[str, int]:
    """`:9000`, `127.0.0.1:9000`, `[::1]:9000` → (host, port); an empty host means all interfaces."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r} must be HOST:PORT with a port between 1 and 65535")
    host = host.strip("[]")
    return host, int(port)


def merge_key_uri(base: str | None, key: str) -> str:
    """Merge step-ca style: path and query attributes of `key` win over those of `base`."""
    try:
        k = parse_key_uri(key)
        if not base:
            return str(k)
        b = parse_key_uri(base)
    except InvalidKeyURI as exc:
        raise ConfigError(f"invalid key URI: {exc}") from exc
    if b.scheme != k.scheme:
        return str(k)
    return str(KeyURI(scheme=k.scheme, path={**b.path, **k.path}, query={**b.query, **k.query}))


# step-ca's provisioner types hsmca does not have yet: a ca.json moved from step-ca says which one it is.
STEP_CA_ONLY_TYPES = ("AWS", "GCP", "Azure", "SCEP", "Nebula")


def _format_validation_error(path: Path, exc: ValidationError, raw: object = None) -> str:
    lines = [f"{path}: invalid configuration"]
    provisioners = raw.get("authority", {}).get("provisioners") if isinstance(raw, dict) and \
        isinstance(raw.get("authority"), dict) else None
    for err in exc.errors():
        loc, msg = err["loc"], err["msg"]
        where = ".".join(str(p) for p in loc) or "(top level)"
        if loc[:2] == ("authority", "provisioners") and len(loc) > 2 and isinstance(provisioners, list) \
                and isinstance(loc[2], int) and loc[2] < len(provisioners) and isinstance(provisioners[loc[2]], dict):
            given = provisioners[loc[2]]  # say which provisioner, by the name and type an operator wrote
            where += f" (provisioner {given.get('name')!r}, type {given.get('type')!r})"
            if err["type"] == "union_tag_invalid" and given.get("type") in STEP_CA_ONLY_TYPES:
                msg = (f"step-ca's {given.get('type')} provisioner type is not supported by hsmca yet; hsmca has "
                       "JWK, ACME, OIDC, X5C, K8sSA and SSHPOP")
        lines.append(f"  {where}: {msg}")
    return "\n".join(lines)


def load_config(path: Path | None = None) -> CAConfig:
    path = path or default_config_path()
    try:
        raw = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run `hsmca init` to create a CA)") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read JSON: {exc}") from None
    try:
        config = CAConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(Path(path), exc, raw)) from None
    parent = Path(path).resolve().parent
    config._base_dir = parent.parent if parent.name == "config" else parent
    return config


def save_config(config: CAConfig, path: Path) -> None:
    """Write atomically, 0600, so a crash never leaves half a ca.json."""
    data = config.model_dump(mode="json", exclude_none=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, (json.dumps(data, indent=2) + "\n").encode(), 0o600)
