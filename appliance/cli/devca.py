"""`hsmca init`: a developer CA in one step (the production root comes from the ceremony).

A SoftHSM token of its own under $HSMCA_PATH, root and intermediate keys generated inside it,
the self-signed root and the intermediate certificate signed through the token, one JWK
provisioner whose private key is stored encrypted under a password (as step-ca does), the
database, and `ca.json`.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import softhsm
from appliance.ca.intermediates import bootstrap
from appliance.ca.urls import DefaultPublicURL, check_public_url, default_public_url
from appliance.certutil import fingerprint, parse_certificates
from appliance.config import (
    AuditConfig,
    AuthorityConfig,
    CAConfig,
    DBConfig,
    KMSConfig,
    ProvisionerConfig,
    save_config,
    split_address,
)
from appliance.provisioners import jose
from appliance.store import Store
from kms import KeySpec, create_key
from kms.cacerts import intermediate_certificate, root_certificate
from kms.uri import KeyURI, parse_key_uri


class InitError(Exception):
    """`hsmca init` cannot proceed; the message says what to do."""


@dataclass
class InitOptions:
    base: Path
    password: bytes
    name: str = "hsmca"
    dns_names: list[str] = field(default_factory=lambda: ["localhost"])
    address: str = ":9000"
    http_address: str = ":9080"
    provisioner: str = "admin"
    key_spec: KeySpec = KeySpec.EC_P256
    token_label: str = "hsmca"
    module: str = ""
    pin: str | None = None
    so_pin: str | None = None
    force: bool = False
    root_lifetime: timedelta = timedelta(days=3650)
    intermediate_lifetime: timedelta = timedelta(days=3650)
    # A root made by the offline ceremony: no root key here, and no intermediate until one is
    # made with `hsmca intermediate csr`, signed at the ceremony and installed.
    root_certificate: bytes | None = None
    # The intermediate key in another backend (vault:…, awskms:…, gcpkms:…, azurekv:…); the dev
    # root stays in the CA's SoftHSM token.
    intermediate_key: str | None = None
    # The base of the CRL/OCSP/caIssuers URLs in certificates; None: derived (ca/urls.default_public_url).
    public_url: str | None = None
    # A production HSM: the token `token_label` already exists in `module` (made with the HSM's own tools), its
    # user PIN is `pin`; no SoftHSM set-up. Only with `root_certificate`.
    existing_token: bool = False
    # The SSH user and host CA keys (`hsmca ssh init-ca` makes them later when skipped).
    ssh: bool = True


@dataclass(frozen=True)
class InitResult:
    config_path: Path
    root_path: Path
    intermediate_path: Path | None
    root_fingerprint: str
    provisioner: str
    root_key_uri: str | None
    intermediate_key_uri: str | None
    kms_uri: str
    public_url: str
    # Set when the URL was derived rather than given: where its host came from, and whether only
    # this machine can reach it (init then says to set --public-url).
    derived_url: DefaultPublicURL | None = None
    audit_certificate: Path | None = None  # the audit key's certificate (none until there is an intermediate)


def _write_secret(path: Path, value: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")


def _softhsm_conf(base: Path) -> Path:
    """Tests and CAs never share a token: each $HSMCA_PATH has its own unless SOFTHSM2_CONF is set."""
    given = os.environ.get("SOFTHSM2_CONF")
    if given:
        return Path(given)
    conf = softhsm.write_config(base / "softhsm")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    return conf


def init_ca(opts: InitOptions) -> InitResult:
    base = opts.base
    config_path = base / "config" / "ca.json"
    if config_path.exists() and not opts.force:
        raise InitError(f"a CA already exists at {config_path}; use --force to replace it "
                        "(this destroys its keys and database)")
    if not opts.dns_names:
        raise InitError("at least one --dns name is needed")
    try:
        split_address(opts.address)
        split_address(opts.http_address)
    except ValueError as exc:
        raise InitError(str(exc)) from None
    derived: DefaultPublicURL | None = None
    if opts.public_url:
        try:
            public_url = check_public_url(opts.public_url)
        except ValueError as exc:
            raise InitError(f"--public-url: {exc}") from None
    else:
        derived = default_public_url(opts.dns_names, opts.http_address)
        public_url = derived.url
    ceremony_root = _ceremony_root(opts.root_certificate) if opts.root_certificate is not None else None
    if opts.intermediate_key and ceremony_root is not None:
        raise InitError("--intermediate-key makes a dev intermediate; with --root, make it with "
                        "`hsmca intermediate csr --key URI` and sign it at the ceremony")
    if opts.intermediate_key and "pin-value" in opts.intermediate_key:
        raise InitError("--intermediate-key must not carry a PIN (pin-value): it is written to ca.json")

    if opts.existing_token and (ceremony_root is None or not opts.pin or not opts.module):
        raise InitError("--existing-token is for a production HSM: it needs --root, --module and --pin-file")
    secrets_dir = base / "secrets"
    environment: dict[str, str] = {}
    if opts.existing_token:  # the HSM's token, made by its own tools: nothing to set up here
        module, pin = opts.module, opts.pin or ""
        if os.environ.get("SOFTHSM2_CONF"):  # SoftHSM standing in for the HSM (tests, rehearsals)
            environment["SOFTHSM2_CONF"] = os.environ["SOFTHSM2_CONF"]
        if opts.force:
            shutil.rmtree(base / "db", ignore_errors=True)
        _write_secret(secrets_dir / "pin", pin)
    else:
        conf = _softhsm_conf(base)
        environment["SOFTHSM2_CONF"] = str(conf)
        module = opts.module or softhsm.DEFAULT_MODULE
        if softhsm.token_exists(opts.token_label, conf=conf):
            if not opts.force:
                raise InitError(f"SoftHSM token {opts.token_label!r} already exists ({conf}); "
                                "use --force to replace it or --token-label for another")
            softhsm.delete_token(opts.token_label, conf=conf)
        if opts.force:
            shutil.rmtree(base / "db", ignore_errors=True)

        pin = opts.pin or secrets.token_urlsafe(18)
        so_pin = opts.so_pin or secrets.token_urlsafe(18)
        _write_secret(secrets_dir / "pin", pin)
        _write_secret(secrets_dir / "so-pin", so_pin)
        softhsm.init_token(opts.token_label, so_pin, pin, conf=conf)

    kms_uri = KeyURI("pkcs11", {"token": opts.token_label},
                     {"module-path": module, "pin-source": f"file:{secrets_dir / 'pin'}"})
    certs = base / "certs"
    certs.mkdir(parents=True, exist_ok=True)
    root_path, int_path = certs / "root_ca.crt", certs / "intermediate_ca.crt"
    if ceremony_root is not None:
        root = ceremony_root
        root_path.write_bytes(root.public_bytes(Encoding.PEM))
        int_path.unlink(missing_ok=True)  # a previous dev CA's, if --force
        root_uri = int_uri = None
    else:
        root_uri = KeyURI("pkcs11", {**kms_uri.path, "object": "root_ca"}, kms_uri.query)
        int_uri = parse_key_uri(opts.intermediate_key) if opts.intermediate_key else \
            KeyURI("pkcs11", {**kms_uri.path, "object": "intermediate_ca"}, kms_uri.query)
        root, intermediate = _dev_pki(opts, root_uri, int_uri)
        root_path.write_bytes(root.public_bytes(Encoding.PEM))
        int_path.write_bytes(intermediate.public_bytes(Encoding.PEM))

    prov_key = jose.generate_provisioner_key()
    provisioner = ProvisionerConfig(type="JWK", name=opts.provisioner, key=jose.public_jwk(prov_key),
                                    encryptedKey=jose.encrypt_jwk(prov_key, opts.password))

    db_dir = base / "db"
    db_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = CAConfig(
        root=str(root_path), crt=str(int_path) if int_uri else None,
        key=(opts.intermediate_key or "pkcs11:object=intermediate_ca") if int_uri else None,
        address=opts.address, httpAddress=opts.http_address, dnsNames=list(opts.dns_names), publicURL=public_url,
        db=DBConfig(type="sqlite", dataSource=str(db_dir / "hsmca.sqlite")),
        kms=KMSConfig(type="pkcs11", uri=str(kms_uri), environment=environment),
        authority=AuthorityConfig(provisioners=[provisioner]),
        audit=AuditConfig(path=str(base / "audit" / "audit.jsonl")))
    store = Store.from_config(config.db.model_dump(), base)
    try:
        store.migrate()
        bootstrap(config, store)
    finally:
        store.close()
    save_config(config, config_path)
    audit_cert = None
    if int_uri is not None:  # the audit key, certified by the intermediate: it seals the audit trail from now on
        from appliance.cli.audit_key import AuditKeyError, make_audit_key

        try:
            audit_cert = make_audit_key(config, config_path, key_uri="pkcs11:object=audit").certificate_path
        except AuditKeyError as exc:
            raise InitError(f"the audit key could not be made: {exc}") from None
    if opts.ssh:  # the SSH user and host CA keys, beside the others in the token
        from appliance.cli.ssh import SSHCAError, make_ssh_ca

        try:
            make_ssh_ca(config, "EC-P256", "pkcs11:object=ssh-user-ca", "pkcs11:object=ssh-host-ca")
        except SSHCAError as exc:
            raise InitError(str(exc)) from None
        save_config(config, config_path)
    return InitResult(config_path, root_path, int_path if int_uri else None, fingerprint(root), opts.provisioner,
                      str(root_uri.redacted()) if root_uri else None, str(int_uri.redacted()) if int_uri else None,
                      str(kms_uri.redacted()), public_url, derived, audit_cert)


def _ceremony_root(data: bytes) -> x509.Certificate:
    try:
        root = parse_certificates(data)[0]
    except ValueError as exc:
        raise InitError(f"--root is not a certificate: {exc}") from None
    try:
        bc = root.extensions.get_extension_for_class(x509.BasicConstraints).value
        root.verify_directly_issued_by(root)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        raise InitError("--root must be a self-signed CA certificate (the root ceremony's output)") from None
    if not bc.ca:
        raise InitError("--root is not a CA certificate")
    return root


def _dev_pki(opts: InitOptions, root_uri: KeyURI, int_uri: KeyURI) -> tuple[x509.Certificate, x509.Certificate]:
    """A development root and intermediate, both keys inside the CA's own SoftHSM token."""
    root_key = create_key(str(root_uri), opts.key_spec)
    int_key = create_key(str(int_uri), opts.key_spec)
    now = datetime.now(timezone.utc)
    root = root_certificate(
        root_key, x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, opts.name),
                             x509.NameAttribute(NameOID.COMMON_NAME, f"{opts.name} Root CA")]),
        now - timedelta(minutes=1), now + opts.root_lifetime, path_length=1)
    intermediate = intermediate_certificate(
        root_key, root, int_key.public_key(),
        x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, opts.name),
                   x509.NameAttribute(NameOID.COMMON_NAME, f"{opts.name} Intermediate CA")]),
        now - timedelta(minutes=1), min(now + opts.intermediate_lifetime, root.not_valid_after_utc),
        path_length=0)
    return root, intermediate
