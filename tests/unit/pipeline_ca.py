"""A whole registration authority in one process, in seconds: software keys, SQLite in RAM, no server.

The intermediate's key is a software key handed to the authority as its in-process issuer, so the
pipeline's every step runs for real (policy, record before sign, mark issued, audit) without an HSM.
The database lives on tmpfs (/dev/shm): a real SQLite file, so the write lock and the migrations run as in
production, kept in memory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from appliance.audit import JsonLinesAudit, read_events
from appliance.ca.intermediates import bootstrap, key_id
from appliance.ca.issuer import Issuer
from appliance.client.keys import build_csr
from appliance.config import CAConfig
from appliance.provisioners import jose
from appliance.ra.authority import Authority
from appliance.store import IntermediateRecord, Store
from kms.signer import spki_der

CA_NAME = "ca.internal"
SIGN_AUDIENCE = f"https://{CA_NAME}/1.0/sign"


def ca_cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer_name: x509.Name | None,
            issuer_key: ec.EllipticCurvePrivateKey, path_length: int | None,
            extensions: Sequence[x509.ExtensionType] = (), days: int = 365) -> x509.Certificate:
    """A CA certificate signed by `issuer_key` (itself when `issuer_name` is None), with `extensions` added."""
    now = datetime.now(timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=days)))
    for ext in extensions:
        builder = builder.add_extension(ext, critical=isinstance(ext, x509.NameConstraints))
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(issuer_key, hashes.SHA256()))



def ram_directory() -> Path:
    shm = Path("/dev/shm")
    base = shm if shm.is_dir() and os.access(shm, os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="hsmca-unit-", dir=base))


@dataclass
class InProcessCA:
    home: Path
    authority: Authority
    provisioner_key: jose.PublicKey
    kid: str
    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate

    @property
    def store(self) -> Store:
        return self.authority.store

    def token(self, subject: str, sans: list[str] | None = None, **claims: Any) -> str:
        now = int(datetime.now(timezone.utc).timestamp())
        body = {"iss": "admin", "sub": subject, "aud": SIGN_AUDIENCE, "sans": sans or [subject],
                "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(16), **claims}
        return jose.sign_token(self.provisioner_key, {k: v for k, v in body.items() if v is not None}, kid=self.kid)

    def csr(self, subject: str, sans: list[str] | None = None,
            key: ec.EllipticCurvePrivateKey | None = None) -> x509.CertificateSigningRequest:
        return build_csr(key or ec.generate_private_key(ec.SECP256R1()), subject, [subject] if sans is None else sans)

    def events(self) -> list[dict[str, Any]]:
        return read_events(self.home / "audit.jsonl")

    def rotate(self, extensions: Sequence[x509.ExtensionType] = ()) -> Issuer:
        """A new intermediate under the same root signs from now on (the old one stays on record)."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = ca_cert("Unit Intermediate 2", key, self.root.subject, self.root_key, 0, extensions)
        now = datetime.now(timezone.utc)
        self.store.intermediates.add(IntermediateRecord(
            id=key_id(key.public_key()), name="intermediate-2", key_uri="pkcs11:object=intermediate-2",
            public_key=spki_der(key.public_key()), csr=None, certificate=cert.public_bytes(Encoding.DER),
            subject=cert.subject.rfc4514_string(), not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc, activate_at=now, retired_at=None, created_at=now, installed_at=now))
        issuer = Issuer(key, cert)  # type: ignore[arg-type]  # a software key stands in for the KMS
        self.authority._issuer = issuer
        return issuer

    def used_tokens(self) -> int:
        return self.store.tokens.count()


@contextmanager
def make_ca(policy: dict[str, Any] | None = None, provisioners: list[dict[str, Any]] | None = None,
            intermediate_extensions: Sequence[x509.ExtensionType] = (), intermediate_days: int = 365,
            claims: dict[str, Any] | None = None, options: dict[str, Any] | None = None,
            **config: Any) -> Iterator[InProcessCA]:
    """The CA, removed with its database and audit trail on leaving the block."""
    home = ram_directory()
    try:
        root_key = ec.generate_private_key(ec.SECP256R1())
        root = ca_cert("Unit Root", root_key, None, root_key, None)
        int_key = ec.generate_private_key(ec.SECP256R1())
        intermediate = ca_cert("Unit Intermediate", int_key, root.subject, root_key, 0, intermediate_extensions,
                               intermediate_days)
        (home / "root.crt").write_bytes(root.public_bytes(Encoding.PEM))
        (home / "intermediate.crt").write_bytes(intermediate.public_bytes(Encoding.PEM))
        prov_key = jose.generate_provisioner_key()
        public = jose.public_jwk(prov_key)
        cfg = CAConfig.model_validate({
            "root": str(home / "root.crt"), "crt": str(home / "intermediate.crt"),
            "key": "pkcs11:token=unit;object=intermediate", "dnsNames": [CA_NAME],
            "db": {"type": "sqlite", "dataSource": str(home / "hsmca.sqlite")},
            "audit": {"path": str(home / "audit.jsonl")},
            "authority": {"provisioners": [{"type": "JWK", "name": "admin", "key": public,
                                            **({"options": options} if options else {})},
                                           {"type": "ACME", "name": "acme"}, *(provisioners or [])],
                          **({"policy": policy} if policy else {}), **({"claims": claims} if claims else {})},
            **config})
        store = Store.from_config(cfg.db.model_dump(), home)
        store.migrate()
        bootstrap(cfg, store)
        issuer = Issuer(int_key, intermediate)  # type: ignore[arg-type]  # a software key stands in for the KMS
        authority = Authority(cfg, store, JsonLinesAudit(home / "audit.jsonl"), issuer=issuer)
        yield InProcessCA(home, authority, prov_key, public["kid"], root_key, root)
        authority.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
