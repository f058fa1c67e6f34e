"""The Azure Key Vault backend through Microsoft's real client library (azure-keyvault-keys, over HTTPS with its
401 bearer challenge) against tests/emulators/azure_kv.py, a small local emulator of the documented REST API:
Key Vault has no server that installs here, so this is not Microsoft's service. Certificates checked with openssl."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.keyvault.keys import KeyClient
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import kms
from kms import azure_backend
from kms.errors import (
    BackendUnavailable,
    InvalidKeyURI,
    KeyExists,
    KeyNotFound,
    PermissionDenied,
    SigningFailed,
    UnsupportedAlgorithm,
)
from kms.registry import backend_for
from tests.integration.conftest import REPO, free_port

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DENIED = "denied-token"


class StaticCredential:
    """A real TokenCredential handing out a fixed bearer token: the emulator accepts any token but DENIED."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    port: int
    cert: Path
    log: Path

    def uri(self, name: str, **query: str) -> str:
        params = "&".join(f"{k.replace('_', '-')}={v}" for k, v in {"ca_file": str(self.cert), **query}.items())
        return f"azurekv:https://localhost:{self.port}/keys/{name}?{params}"

    def throttle(self, count: int) -> None:
        requests.post(f"https://localhost:{self.port}/_emulator/throttle", json={"count": count},
                      verify=str(self.cert), timeout=5).raise_for_status()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    tmp = tmp_path_factory.mktemp("azure-kv")
    port, cert, log = free_port(), tmp / "emulator.pem", tmp / "emulator.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.azure_kv", "--port", str(port), "--cert-out",
                                 str(cert), "--denied-token", DENIED], cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not cert.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    saved = azure_backend.credential_factory, azure_backend.verify_challenge_resource
    azure_backend.credential_factory = StaticCredential
    azure_backend.verify_challenge_resource = False  # a loopback host cannot be under vault.azure.net
    yield Emulator(proc, port, cert, log)
    kms.close_all()
    azure_backend.credential_factory, azure_backend.verify_challenge_resource = saved
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _client(emulator: Emulator) -> KeyClient:
    """The SDK client of the registry's backend for the emulator: to look behind the backend, as an admin would."""
    backend = backend_for(emulator.uri("any"))
    assert isinstance(backend, azure_backend.AzureKeyVaultBackend)
    return backend.client


def _ec(key: kms.CAKey) -> ec.EllipticCurvePrivateKey:
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _rsa(key: kms.CAKey) -> rsa.RSAPrivateKey:
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _openssl(tmp: Path, *args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=tmp)
    return done.stdout + done.stderr


@pytest.mark.parametrize("spec", ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096"])
def test_keys_made_in_key_vault_sign_certificates_and_crls_openssl_accepts(emulator: Emulator, spec: str,
                                                                           tmp_path: Path) -> None:
    name = f"ca-{spec.lower()}"
    key = kms.create_key(emulator.uri(name), spec)
    assert kms.spec_of(key).value == spec
    stored = _client(emulator).get_key(name)
    assert sorted(str(op) for op in stored.key_operations) == ["sign", "verify"]
    assert stored.properties.exportable is not True
    with pytest.raises(KeyExists, match=f"key {name} already exists"):
        kms.create_key(emulator.uri(name), spec)
    opened = kms.open_key(emulator.uri(name))
    assert opened.public_key() == key.public_key()

    root = kms.root_certificate(opened, _name(f"azure root {spec}"), NOW, NOW + datetime.timedelta(days=30))
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.internal")).issuer_name(root.subject)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(kms.new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(opened, kms.default_hash(opened)))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1)).sign(opened, kms.default_hash(opened)))
    for file, obj in (("root.pem", root), ("leaf.pem", leaf), ("crl.pem", crl)):
        (tmp_path / file).write_bytes(obj.public_bytes(Encoding.PEM))
    assert "leaf.pem: OK" in _openssl(tmp_path, "verify", "-CAfile", "root.pem", "leaf.pem")
    assert "verify OK" in _openssl(tmp_path, "crl", "-in", "crl.pem", "-CAfile", "root.pem", "-noout")
    if spec.startswith("RSA"):
        pss = padding.PSS(padding.MGF1(hashes.SHA384()), padding.PSS.DIGEST_LENGTH)
        sig = _rsa(opened).sign(b"probe", pss, hashes.SHA384())
        _rsa(opened).public_key().verify(sig, b"probe", padding.PSS(padding.MGF1(hashes.SHA384()), 48), hashes.SHA384())


def test_the_key_version_is_fixed_when_opened(emulator: Emulator) -> None:
    first = _ec(kms.create_key(emulator.uri("rotating"), "EC-P256"))
    client = _client(emulator)
    v1 = client.get_key("rotating").properties.version
    client.create_ec_key("rotating", curve="P-256")  # a new version made in the vault, e.g. by a rotation policy
    latest = kms.open_key(emulator.uri("rotating"))
    pinned = kms.open_key(emulator.uri(f"rotating/{v1}"))
    assert latest.public_key() != first.public_key() and pinned.public_key() == first.public_key()
    sig = first.sign(b"x", ec.ECDSA(hashes.SHA256()))
    first.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA256()))


def test_refusals_name_the_vault_and_the_cause(emulator: Emulator) -> None:
    vault = rf"azure key vault https://localhost:{emulator.port}"
    with pytest.raises(KeyNotFound, match=f"{vault}: no such key while reading key missing"):
        kms.open_key(emulator.uri("missing"))
    with pytest.raises(UnsupportedAlgorithm, match="no Ed25519 keys"):
        kms.create_key(emulator.uri("edwards"), "Ed25519")
    with pytest.raises(InvalidKeyURI, match="unknown parameter 'pin-value'"):
        kms.open_key(emulator.uri("missing", pin_value="1234"))
    with pytest.raises(InvalidKeyURI, match="azurekv:https://VAULT"):
        kms.open_key(f"azurekv:http://localhost:{emulator.port}/keys/missing")

    key = _ec(kms.create_key(emulator.uri("guarded"), "EC-P256"))
    azure_backend.credential_factory = lambda: StaticCredential(DENIED)
    try:  # a backend of its own: the registry's one keeps its credential
        denied = azure_backend.AzureKeyVaultBackend(kms.parse_key_uri(emulator.uri("guarded")))
    finally:
        azure_backend.credential_factory = StaticCredential
    with pytest.raises(PermissionDenied, match=f"{vault} refused reading key guarded: HTTP 403 Forbidden"):
        denied.open_key(kms.parse_key_uri(emulator.uri("guarded")))
    denied.close()

    _client(emulator).update_key_properties("guarded", enabled=False)
    with pytest.raises(SigningFailed, match=f"{vault} refused signing with key guarded: the key is disabled"):
        key.sign(b"x", ec.ECDSA(hashes.SHA256()))
    with pytest.raises(SigningFailed, match="key guarded version [0-9a-f]{32} is disabled"):
        kms.open_key(emulator.uri("guarded"))


def test_throttling_is_retried_twice_then_reported(emulator: Emulator) -> None:
    key = _ec(kms.create_key(emulator.uri("busy", timeout="9", cooldown="0.5"), "EC-P384"))  # its own backend
    emulator.throttle(2)
    sig = key.sign(b"x", ec.ECDSA(hashes.SHA384()))
    key.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA384()))
    emulator.throttle(3)
    with pytest.raises(BackendUnavailable, match="while signing with key busy: HTTP 429 Throttled"):
        key.sign(b"x", ec.ECDSA(hashes.SHA384()))
    with pytest.raises(BackendUnavailable, match="is failing"):  # throttled out: the breaker backs off
        key.sign(b"x", ec.ECDSA(hashes.SHA384()))
    time.sleep(0.6)
    key.sign(b"x", ec.ECDSA(hashes.SHA384()))


def test_an_unreachable_vault_fails_fast(emulator: Emulator) -> None:
    port = free_port()
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=rf"https://localhost:{port} while reading key k: ServiceRequestError"):
        kms.open_key(f"azurekv:https://localhost:{port}/keys/k?timeout=2")
    assert time.monotonic() - start < 5


def test_a_frozen_vault_is_reported_in_time_and_signing_resumes(emulator: Emulator) -> None:
    """SIGSTOP: connections are accepted by the kernel but never answered, the worst case."""
    key = _rsa(kms.create_key(emulator.uri("frozen", timeout="2", cooldown="1"), "RSA-2048"))
    emulator.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="while signing with key frozen: ServiceResponse"):
            key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
        took = time.monotonic() - start
        fast = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"azure key vault https://localhost:\d+ is failing"):
            key.sign(b"y", padding.PKCS1v15(), hashes.SHA256())  # the breaker is open: the vault is not asked
        assert time.monotonic() - fast < 0.5
    finally:
        emulator.proc.send_signal(signal.SIGCONT)
    assert took < 10, f"took {took:.1f} s; the URI's timeout is 2 s per attempt, 3 attempts"
    time.sleep(1.1)  # the cooldown; one trial call then closes the breaker
    sig = key.sign(b"x", padding.PKCS1v15(), hashes.SHA256())
    key.public_key().verify(sig, b"x", padding.PKCS1v15(), hashes.SHA256())
