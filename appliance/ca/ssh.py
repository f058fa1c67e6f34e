"""The SSH CA: user and host CA keys in the KMS, and the one place an SSH certificate is recorded and signed.

cryptography's `SSHCertificateBuilder.sign()` takes any private key object of the right family, so it signs
through the same `kms/` adapters X.509 does. It draws a fresh nonce at every call, so the to-be-signed body
cannot be built twice (once to record, once to sign): the key handed to the builder is the issuer's proxy
(ca/tbs.py), whose `sign()` first records the exact body it was given (serial reserved, token spent), then asks
the KMS. A crash after the signature leaves the reservation with its body on record, as for X.509.

RSA CA keys sign with rsa-sha2-512 (cryptography's choice for RSA, never ssh-rsa/SHA-1).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_ssh_public_key
from cryptography.hazmat.primitives.serialization.ssh import (
    SSHCertificate,
    SSHCertificateBuilder,
    SSHCertificateType,
    SSHCertPublicKeyTypes,
)

import kms
from appliance import metrics
from appliance.ca import tbs
from appliance.config import CAConfig
from appliance.errors import BadRequest, CAError, ServiceUnavailable

CertType = Literal["user", "host"]
MAX_PRINCIPALS = 256
MAX_PRINCIPAL_LENGTH = 255
MAX_KEY_ID_LENGTH = 255
# OpenSSH's user extensions; a host certificate carries none.
USER_EXTENSIONS = ("permit-X11-forwarding", "permit-agent-forwarding", "permit-port-forwarding", "permit-pty",
                   "permit-user-rc")
KNOWN_EXTENSIONS = (*USER_EXTENSIONS, "no-touch-required")
CRITICAL_OPTIONS = ("force-command", "source-address", "verify-required")


@dataclass(frozen=True)
class SSHProfile:
    """What the certificate will hold, decided by the pipeline (policy judged exactly this)."""

    cert_type: CertType
    key_id: str
    principals: tuple[str, ...]
    public_key: SSHCertPublicKeyTypes
    valid_after: datetime
    valid_before: datetime
    critical_options: Mapping[str, str] = field(default_factory=dict)
    extensions: Mapping[str, str] = field(default_factory=dict)


def public_line(key: Any) -> str:
    """`ssh-ed25519 AAAA…` for a public key (what sshd's TrustedUserCAKeys and known_hosts hold)."""
    return key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()


def blob_of(line: str) -> bytes:
    return base64.b64decode(line.split()[1])


def fingerprint(line: str) -> str:
    """SHA-256 (hex) of the key's SSH blob: how the store and the KRL name a CA key."""
    return hashlib.sha256(blob_of(line)).hexdigest()


def lint(profile: SSHProfile) -> None:
    """What no certificate from this CA may be, whatever policy allowed; BadRequest saying which rule.

    OpenSSH reads an empty principal list as "any principal": refused. Principals and key ids are short
    printable text without commas (sshd's principal lists are comma-separated). Host certificates carry no
    user extensions; critical options are the ones OpenSSH defines.
    """
    if not profile.principals:
        raise BadRequest("an SSH certificate must name at least one principal (none would mean any)")
    if len(profile.principals) > MAX_PRINCIPALS:
        raise BadRequest(f"at most {MAX_PRINCIPALS} principals")
    for p in (*profile.principals, profile.key_id):
        if not p.isprintable() or "," in p or any(c.isspace() for c in p) or len(p) > MAX_PRINCIPAL_LENGTH:
            raise BadRequest(f"SSH principal or key id {p[:64]!r} must be printable, without spaces or commas, and "
                             f"at most {MAX_PRINCIPAL_LENGTH} characters")
    if not profile.key_id:
        raise BadRequest("an SSH certificate needs a key id")
    if profile.valid_before <= profile.valid_after:
        raise BadRequest("validBefore must be after validAfter")
    if profile.cert_type == "host" and profile.extensions:
        raise BadRequest(f"a host certificate carries no extensions, not {sorted(profile.extensions)}")
    unknown = sorted(set(profile.critical_options) - set(CRITICAL_OPTIONS))
    if unknown:
        raise BadRequest(f"unknown critical options {unknown}; OpenSSH defines {list(CRITICAL_OPTIONS)}")
    if profile.cert_type == "host" and profile.critical_options:
        raise BadRequest("a host certificate carries no critical options")
    if "force-command" in profile.critical_options and not profile.critical_options["force-command"].strip():
        raise BadRequest("critical option force-command needs a command")
    if "source-address" in profile.critical_options:
        for entry in profile.critical_options["source-address"].split(","):
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise BadRequest(f"critical option source-address: {entry.strip()!r} is not an address or CIDR "
                                 "range (a comma-separated list, as sshd reads it)") from None
    unknown_ext = sorted(e for e in profile.extensions if e not in KNOWN_EXTENSIONS and "@" not in e)
    if unknown_ext:
        raise BadRequest(f"unknown extensions {unknown_ext}: OpenSSH defines {list(KNOWN_EXTENSIONS)} (others are "
                         "name@domain)")
    if isinstance(profile.public_key, rsa.RSAPublicKey) and profile.public_key.key_size < 2048:
        raise BadRequest("an RSA key for an SSH certificate must have at least 2048 bits")


class SSHCA:
    """The SSH CA keys of ca.json's `ssh` block, opened through kms/ on first use (after the fork)."""

    def __init__(self, config: CAConfig) -> None:
        self.config = config
        self._keys: dict[str, kms.CAKey] = {}

    def enabled(self, cert_type: CertType) -> bool:
        ssh = self.config.ssh
        return ssh is not None and bool(ssh.userKey if cert_type == "user" else ssh.hostKey)

    def key(self, cert_type: CertType) -> kms.CAKey:
        ssh = self.config.ssh
        uri = (ssh.userKey if cert_type == "user" else ssh.hostKey) if ssh is not None else None
        if not uri:
            raise BadRequest(f"this CA signs no SSH {cert_type} certificates: ca.json has no ssh.{cert_type}Key "
                             "(`hsmca ssh init-ca` makes the SSH CA keys)")
        if cert_type not in self._keys:
            try:
                self._keys[cert_type] = kms.open_key(self.config.key_uri(uri))
            except kms.KMSError as exc:
                raise ServiceUnavailable(f"the SSH {cert_type} CA key cannot be opened: {exc}") from None
        return self._keys[cert_type]

    def public_lines(self, cert_type: CertType) -> list[str]:
        """The CA keys relying parties should trust: the signing one first, then federated (retiring) ones."""
        ssh = self.config.ssh
        lines = [public_line(self.key(cert_type).public_key())] if self.enabled(cert_type) else []
        if ssh is not None:
            lines += ssh.federatedUserKeys if cert_type == "user" else ssh.federatedHostKeys
        return list(dict.fromkeys(" ".join(line.split()[:2]) for line in lines))

    def record_and_sign(self, profile: SSHProfile, record: Callable[[int, str, bytes], None]) -> SSHCertificate:
        """Sign `profile` with its type's CA key; `record(serial, ca_fingerprint, body)` runs before the KMS signs
        and may refuse (raise), in which case nothing is signed."""
        key = self.key(profile.cert_type)
        ca_fingerprint = fingerprint(public_line(key.public_key()))
        serial = secrets.randbits(64) or 1
        builder = (SSHCertificateBuilder().public_key(profile.public_key).serial(serial)
                   .type(SSHCertificateType.USER if profile.cert_type == "user" else SSHCertificateType.HOST)
                   .key_id(profile.key_id.encode()).valid_principals([p.encode() for p in profile.principals])
                   .valid_after(int(profile.valid_after.timestamp()))
                   .valid_before(int(profile.valid_before.timestamp())))
        for name, value in sorted(profile.critical_options.items()):
            builder = builder.add_critical_option(name.encode(), value.encode())
        for name, value in sorted(profile.extensions.items()):
            builder = builder.add_extension(name.encode(), value.encode())
        backend = metrics.backend_of(key)

        def on_sign(body: bytes, real: Callable[[], bytes]) -> bytes:
            record(serial, ca_fingerprint, body)  # may refuse: then nothing is signed
            return metrics.timed_signature(backend, real)

        try:
            cert = builder.sign(tbs.proxy(key, on_sign))
            cert.verify_cert_signature()  # a faulty signer is caught here, as for X.509
        except kms.BackendUnavailable as exc:
            raise ServiceUnavailable(f"signing backend unavailable: {exc}") from None
        except (kms.KMSError, InvalidSignature) as exc:
            if isinstance(exc, InvalidSignature):
                metrics.signature_rejected(backend)
            raise CAError(f"SSH signing failed: {exc}") from None
        metrics.ssh_certificate_signed(backend, profile.cert_type)
        return cert


def ssh_line(blob_b64: str) -> str:
    """`<type> <base64>` for the base64 of an SSH key or certificate blob (what step's JSON carries), so
    cryptography's loaders read it; ValueError saying why not."""
    try:
        blob = base64.b64decode(blob_b64, validate=True)
    except ValueError as exc:
        raise ValueError(f"not base64: {exc}") from None
    length = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + length or not 0 < length <= 64:
        raise ValueError("not an SSH blob (its type name is missing)")
    try:
        name = blob[4:4 + length].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("not an SSH blob (its type name is not ASCII)") from None
    return f"{name} {blob_b64}"


def load_public_key(text: str) -> SSHCertPublicKeyTypes:
    """The subject key of `POST /ssh/sign` (`publicKey`: the base64 of its SSH wire blob, as step sends it), or a
    full `ssh-ed25519 AAAA…` line; BadRequest saying what is wrong."""
    text = text.strip()
    try:
        key = load_ssh_public_key((text if " " in text else ssh_line(text)).encode())
    except ValueError as exc:
        raise BadRequest(f"publicKey is not an SSH public key: {exc}") from None
    except UnsupportedAlgorithm as exc:
        raise BadRequest(f"publicKey: unsupported SSH key type ({exc})") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey):
        raise BadRequest(f"publicKey must be an ECDSA, RSA or Ed25519 key, not {type(key).__name__}")
    return key
