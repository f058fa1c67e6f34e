"""The Azure Key Vault backend through Microsoft's real client library (azure-keyvault-keys, over HTTPS with its
401 bearer challenge) against tests/emulators/azure_kv.py, a small local emulator of the documented REST API:
Key Vault has no server that installs here, so this is not Microsoft's service. Certificates checked with openssl.

In this process the backend gets a static-token credential (`azure_backend.credential_factory`); the served CA
(`hsmca init`, `hsmca serve`) gets nothing injected: azure-identity's DefaultAzureCredential finds the emulator's
App Service managed-identity endpoint through IDENTITY_ENDPOINT and IDENTITY_HEADER, as it would on Azure. The
emulator's loopback host cannot pass the SDK's challenge-resource check, so its URIs carry `verify-challenge=0`."""

from __future__ import annotations

import datetime
import secrets
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
    KMSError,
    PermissionDenied,
    SigningFailed,
    UnsupportedAlgorithm,
)
from kms.registry import backend_for
from tests.integration.conftest import (
    REPO,
    free_port,
    init_with_intermediate_key,
    issue_through,
    start_server,
)

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
DENIED = "denied-token"


class StaticCredential:
    """A real TokenCredential handing out a fixed bearer token: the emulator accepts any token but DENIED."""

    def __init__(self, token: str = "test-token") -> None:
        self.token = token

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)


# What DefaultAzureCredential would try before managed identity, or that would make it another kind of managed
# identity (Service Fabric, Arc, Azure ML): unset for the served CA, whatever the developer's shell has.
NOT_APP_SERVICE_IDENTITY = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET",
                            "AZURE_CLIENT_CERTIFICATE_PATH", "AZURE_USERNAME", "AZURE_PASSWORD",
                            "AZURE_FEDERATED_TOKEN_FILE", "AZURE_TOKEN_CREDENTIALS", "AZURE_AUTHORITY_HOST",
                            "IDENTITY_SERVER_THUMBPRINT", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET",
                            "IDENTITY_ENDPOINT", "IDENTITY_HEADER")


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    port: int
    cert: Path
    log: Path
    host: str = "localhost"
    identity_endpoint: str | None = None  # with --identity-port: App Service's token endpoint, and its secret
    identity_header: str | None = None

    @property
    def url(self) -> str:
        return f"https://{self.host}:{self.port}"

    def uri(self, name: str, **query: str) -> str:
        # verify-challenge=0: the emulator's challenge names https://vault.azure.net, as Key Vault's does, which no
        # loopback host is under (see kms/azure_backend.py)
        params = "&".join(f"{k.replace('_', '-')}={v}"
                          for k, v in {"ca_file": str(self.cert), "verify_challenge": "0", **query}.items())
        return f"azurekv:{self.url}/keys/{name}?{params}"

    def throttle(self, count: int) -> None:
        requests.post(f"{self.url}/_emulator/throttle", json={"count": count}, verify=str(self.cert),
                      timeout=5).raise_for_status()

    def stats(self) -> dict[str, Any]:
        answer = requests.get(f"{self.url}/_emulator/stats", verify=str(self.cert), timeout=5)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result

    def identity_env(self) -> dict[str, str]:
        """What App Service puts in a process's environment for its managed identity."""
        assert self.identity_endpoint and self.identity_header
        return {"IDENTITY_ENDPOINT": self.identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGCONT)
        self.proc.terminate()
        self.proc.wait(timeout=10)


def start_emulator(tmp: Path, *, host: str = "localhost", managed_identity: bool = False) -> Emulator:
    """The emulator in its own process; with `managed_identity`, it also serves App Service's token endpoint and
    its vault then takes only the tokens that endpoint issued."""
    tmp.mkdir(parents=True, exist_ok=True)
    port, cert, log = free_port(), tmp / "emulator.pem", tmp / "emulator.log"
    args = ["--port", str(port), "--cert-out", str(cert), "--denied-token", DENIED]
    endpoint = header = None
    if managed_identity:
        identity_port, header = free_port(), secrets.token_urlsafe(24)
        endpoint = f"http://127.0.0.1:{identity_port}/msi/token"
        args += ["--identity-port", str(identity_port), "--identity-header", header]
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.azure_kv", *args], cwd=REPO, stdout=out,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not cert.exists():  # written once both ports listen
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    return Emulator(proc, port, cert, log, host, endpoint, header)


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """The module's emulator, taking any bearer token but DENIED; this process's backends get StaticCredential."""
    started = start_emulator(tmp_path_factory.mktemp("azure-kv"))
    saved = azure_backend.credential_factory
    azure_backend.credential_factory = StaticCredential
    yield started
    kms.close_all()
    azure_backend.credential_factory = saved
    started.stop()


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


def test_the_challenge_resource_is_checked_unless_the_uri_says_otherwise(emulator: Emulator) -> None:
    """The SDK's check stays on by default: the emulator's challenge (https://vault.azure.net, as Key Vault's) does not
    cover a loopback host, and the error says which URI option a vault outside *.vault.azure.net needs."""
    kms.create_key(emulator.uri("checked"), "EC-P256")  # verify-challenge=0: the challenge is not checked
    checked = f"azurekv:{emulator.url}/keys/checked?ca-file={emulator.cert}"
    with pytest.raises(KMSError, match=r"challenge resource 'vault\.azure\.net' does not match the requested domain: "
                                       r".*add verify-challenge=0 to the key URI"):
        kms.open_key(checked)
    with pytest.raises(InvalidKeyURI, match="verify-challenge is 1 .* or 0"):
        kms.open_key(emulator.uri("checked", verify_challenge="off"))


def test_init_with_the_intermediate_key_in_key_vault_gives_a_working_ca(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`hsmca init --intermediate-key azurekv:…` and `hsmca serve`, with no test hook in either: DefaultAzureCredential,
    in the init process and in the HTTPS workers, finds the emulator's App Service managed-identity endpoint
    through IDENTITY_ENDPOINT and IDENTITY_HEADER as it would on Azure (so it never asks IMDS), and this vault takes
    only the tokens that endpoint issued. The vault's self-signed certificate is trusted through `ca-file=`;
    openssl accepts the chains against the root."""
    for name in NOT_APP_SERVICE_IDENTITY:
        monkeypatch.delenv(name, raising=False)
    vault = start_emulator(tmp_path / "emulator", host="127.0.0.1", managed_identity=True)
    try:
        # Nothing but the identity endpoint's tokens gets in, and that endpoint wants its header.
        assert requests.get(f"{vault.url}/keys/any?api-version=7.5", headers={"Authorization": "Bearer test-token"},
                            verify=str(vault.cert), timeout=5).status_code == 401
        assert requests.get(f"{vault.identity_endpoint}?api-version=2019-08-01&resource=https://vault.azure.net",
                            timeout=5).status_code == 401

        uri = vault.uri(f"init-{secrets.token_hex(3)}")
        ca = init_with_intermediate_key(tmp_path / "ca", uri, vault.identity_env())
        assert ca.config.key == uri
        signed_at_init = vault.stats()["requests"].get("sign managed-identity 200", 0)
        running = start_server(ca, env=vault.identity_env())
        try:
            for name in ("azure-a.internal", "azure-b.internal"):
                issue_through(running, name)
        finally:
            running.stop()
        log = running.log()
        stats = vault.stats()
    finally:
        vault.stop()
    requests_seen = stats["requests"]
    assert requests_seen.get("sign managed-identity 200", 0) >= signed_at_init + 2, (requests_seen, log)
    assert requests_seen.get("create managed-identity 200") == 1, requests_seen
    assert stats["identity"].get("issued", 0) >= 2, stats  # one for `hsmca init`, at least one for the server
    assert {k for k in requests_seen if " rejected " in k or " bearer " in k} == {"get rejected 401"}, requests_seen
    assert stats["identity"] == {"issued": stats["identity"]["issued"], "refused 401": 1}, stats
    assert "verify-challenge=0" in log  # the backend says the check is off
