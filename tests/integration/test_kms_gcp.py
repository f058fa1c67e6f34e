"""The Cloud KMS backend through Google's real client library (google-cloud-kms, REST transport), against
tests/emulators/gcp_kms.py: a local emulator of Cloud KMS's documented v1 REST API, not Google's server
(none installs here). Certificates and CRLs signed through the backend are checked with openssl; the
emulator runs as a subprocess so that it can be frozen with SIGSTOP."""

from __future__ import annotations

import datetime
import json
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import kms
from kms.errors import (
    BackendUnavailable,
    InvalidKeyURI,
    KeyExists,
    KeyNotFound,
    PermissionDenied,
    SigningFailed,
    UnsupportedAlgorithm,
)
from kms.gcp_backend import crc32c
from kms.registry import backend_for
from tests.integration.conftest import REPO, free_port

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
RING = "projects/hsmca-test/locations/europe-west1/keyRings/ca"
PSS = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)


@dataclass
class Emulator:
    proc: subprocess.Popen[str]
    endpoint: str

    def uri(self, key: str, extra: str = "") -> str:
        return f"gcpkms:{RING}/cryptoKeys/{key}/cryptoKeyVersions/1?endpoint={self.endpoint}&insecure=1{extra}"

    def control(self, **switches: Any) -> dict[str, Any]:
        answer = requests.post(f"http://{self.endpoint}/_emulator/control", json=switches, timeout=5)
        answer.raise_for_status()
        result: dict[str, Any] = answer.json()
        return result


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    log = tmp_path_factory.mktemp("gcpkms") / "emulator.log"
    proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.gcp_kms", "--port", "0"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the emulator prints its address once it listens
    assert line.startswith("listening on "), log.read_text()
    yield Emulator(proc, line.split()[-1])
    kms.close_all()
    proc.send_signal(signal.SIGCONT)
    proc.terminate()
    proc.wait(timeout=10)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ecdsa(key: kms.CAKey, h: hashes.HashAlgorithm | None = None) -> bytes:
    """Sign b"tbs" with an EC key through the backend (the narrowing keeps the type checker exact)."""
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key.sign(b"tbs", ec.ECDSA(h or hashes.SHA256()))


def _openssl(tmp: Path, *args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=tmp)
    return done.stdout + done.stderr


@pytest.mark.parametrize(("spec", "pss"), [("EC-P256", False), ("EC-P384", False), ("RSA-2048", False),
                                           ("RSA-3072", False), ("RSA-4096", False), ("RSA-2048", True)],
                         ids=["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096", "RSA-2048-PSS"])
def test_keys_made_in_cloud_kms_sign_certificates_and_crls_openssl_accepts(emulator: Emulator, spec: str, pss: bool,
                                                                           tmp_path: Path) -> None:
    uri = emulator.uri(f"ca-{spec.lower()}{'-pss' if pss else ''}", "&padding=pss" if pss else "")
    key = kms.create_key(uri, spec)
    assert kms.spec_of(key).value == spec
    with pytest.raises(KeyExists, match=r"the key already exists .*ALREADY_EXISTS"):
        kms.create_key(uri, spec)
    opened = kms.open_key(uri)
    assert opened.public_key() == key.public_key()

    h, rsa_padding = kms.default_hash(opened), PSS if pss else None
    root = (x509.CertificateBuilder().subject_name(_name(f"gcp root {spec}")).issuer_name(_name(f"gcp root {spec}"))
            .public_key(opened.public_key()).serial_number(kms.new_serial()).not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(opened, h, rsa_padding=rsa_padding))
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.internal")).issuer_name(root.subject)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(kms.new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(opened, h, rsa_padding=rsa_padding))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1)).sign(opened, h, rsa_padding=rsa_padding))
    for file, doc in (("root.pem", root), ("leaf.pem", leaf), ("crl.pem", crl)):
        (tmp_path / file).write_bytes(doc.public_bytes(Encoding.PEM))
    assert "leaf.pem: OK" in _openssl(tmp_path, "verify", "-CAfile", "root.pem", "leaf.pem")
    assert "verify OK" in _openssl(tmp_path, "crl", "-in", "crl.pem", "-CAfile", "root.pem", "-noout")
    if isinstance(opened, rsa.RSAPrivateKey) and pss:
        assert "rsassaPss" in _openssl(tmp_path, "x509", "-in", "leaf.pem", "-noout", "-text")
        with pytest.raises(UnsupportedAlgorithm, match="RSA_SIGN_PSS_2048_SHA256: it signs with PSS only, not PKCS#1"):
            opened.sign(b"tbs", padding.PKCS1v15(), hashes.SHA256())
    elif isinstance(opened, rsa.RSAPrivateKey):
        with pytest.raises(UnsupportedAlgorithm, match="PKCS#1 v1.5 only, not PSS"):
            opened.sign(b"tbs", PSS, hashes.SHA256())
    else:
        wrong = hashes.SHA384() if spec == "EC-P256" else hashes.SHA256()
        with pytest.raises(UnsupportedAlgorithm, match=f"digests only, not {wrong.name}"):
            _ecdsa(opened, wrong)


def test_refusals_name_the_key_and_the_cause(emulator: Emulator) -> None:
    with pytest.raises(KeyNotFound, match=r"gcp kms 127\.0\.0\.1:\d+: not found while reading the public key of "
                                          r"key missing version 1: NOT_FOUND"):
        kms.open_key(emulator.uri("missing"))
    uri = emulator.uri("disabled")
    key = kms.create_key(uri, "EC-P256")
    version = f"http://{emulator.endpoint}/v1/{RING}/cryptoKeys/disabled/cryptoKeyVersions/1"
    requests.patch(version, params={"updateMask": "state"}, json={"state": "DISABLED"}, timeout=5).raise_for_status()
    with pytest.raises(PermissionDenied, match=r"refused signing with key disabled version 1: the key version is "
                                               r"not usable: FAILED_PRECONDITION: .* has value DISABLED"):
        _ecdsa(key)
    with pytest.raises(PermissionDenied, match="DISABLED"):
        kms.open_key(uri)
    requests.patch(version, params={"updateMask": "state"}, json={"state": "ENABLED"}, timeout=5).raise_for_status()
    _ecdsa(key)

    emulator.control(corruptSignatureCrc32c=True)
    with pytest.raises(SigningFailed, match="integrity check failed while signing with key disabled version 1: "
                                            "the signature does not match its CRC32C"):
        _ecdsa(key)
    _ecdsa(key)


def test_uris_are_checked_before_any_call(emulator: Emulator) -> None:
    with pytest.raises(InvalidKeyURI, match="loopback only"):
        kms.open_key(f"gcpkms:{RING}/cryptoKeys/k/cryptoKeyVersions/1?endpoint=kms.example:443&insecure=1")
    with pytest.raises(InvalidKeyURI, match="cryptoKeyVersions/V"):
        kms.open_key(f"gcpkms:{RING}/cryptoKeys/k?endpoint={emulator.endpoint}&insecure=1")
    with pytest.raises(InvalidKeyURI, match="first version is 1; the URI names version 2"):
        kms.create_key(emulator.uri("k").replace("Versions/1", "Versions/2"), "EC-P256")
    with pytest.raises(UnsupportedAlgorithm, match="creates no Ed25519 keys"):
        kms.create_key(emulator.uri("k"), "Ed25519")
    with pytest.raises(InvalidKeyURI, match="padding applies to RSA keys"):
        kms.create_key(emulator.uri("k", "&padding=pss"), "EC-P384")
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)


def test_new_versions_are_awaited_until_generated(emulator: Emulator) -> None:
    emulator.control(pendingSeconds=0.6)
    try:
        start = time.monotonic()
        key = kms.create_key(emulator.uri("slow-hsm"), "EC-P384")
        assert time.monotonic() - start >= 0.5
    finally:
        emulator.control(pendingSeconds=0)
    _ecdsa(key, hashes.SHA384())


def test_throttling_is_retried_then_reported_and_the_breaker_recovers(emulator: Emulator) -> None:
    key = kms.create_key(emulator.uri("throttled", "&cooldown=0.5"), "EC-P256")
    assert emulator.control(throttle=2)["throttle"] == 2
    _ecdsa(key)  # two 429s absorbed by the retries
    assert emulator.control()["throttle"] == 0
    emulator.control(throttle=3)
    with pytest.raises(BackendUnavailable, match=r"gcp kms 127\.0\.0\.1:\d+ while signing with key throttled "
                                                 r"version 1: RESOURCE_EXHAUSTED: Quota exceeded"):
        _ecdsa(key)
    with pytest.raises(BackendUnavailable, match="is failing"):  # the breaker is open: no request sent
        _ecdsa(key)
    time.sleep(0.6)
    _ecdsa(key)
    health = backend_for(emulator.uri("throttled", "&cooldown=0.5")).health()
    assert health["ok"] and health["breaker"] == "closed" and health["backend"] == "gcpkms"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_an_unreachable_endpoint_fails_fast(transport: str) -> None:
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"gcp kms 127\.0\.0\.1:\d+ while reading the public key of key k "
                                                 r"version 1: .*(Connection refused|UNAVAILABLE)"):
        kms.open_key(f"gcpkms:{RING}/cryptoKeys/k/cryptoKeyVersions/1?endpoint=127.0.0.1:{free_port()}"
                     f"&insecure=1&timeout=2&transport={transport}")
    assert time.monotonic() - start < 3


def test_a_frozen_emulator_gives_backend_unavailable_in_time_and_signing_resumes(emulator: Emulator) -> None:
    """SIGSTOP: the kernel still accepts connections but nothing answers, the worst case for a client."""
    uri = emulator.uri("frozen", "&timeout=2&cooldown=1")
    key = kms.create_key(uri, "EC-P256")
    emulator.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match=r"while signing with key frozen version 1: ReadTimeout: no "
                                                     r"answer in time"):
            _ecdsa(key)
        took = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match="is failing"):
            _ecdsa(key)
        fast = time.monotonic() - start
        assert not backend_for(uri).health()["ok"]
    finally:
        emulator.proc.send_signal(signal.SIGCONT)
    assert 6 <= took < 9, f"3 attempts of 2 s each, plus backoff; took {took:.1f} s"
    assert fast < 0.1
    time.sleep(1.1)  # the cooldown: then one trial call, which succeeds and closes the breaker
    public = key.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(_ecdsa(key), b"tbs", ec.ECDSA(hashes.SHA256()))
    print(json.dumps({"frozen_first_error_s": round(took, 2), "breaker_open_error_s": round(fast, 4)}))


def test_init_with_the_intermediate_key_in_cloud_kms_gives_a_working_ca(emulator: Emulator, tmp_path: Path) -> None:
    """`hsmca init --intermediate-key gcpkms:…` against the emulator: `hsmca serve` signs through the real
    google-cloud-kms client in its workers, and openssl accepts the chains."""
    from tests.integration.conftest import init_with_intermediate_key, issue_through, start_server

    uri = emulator.uri(f"init-{secrets.token_hex(3)}")
    ca = init_with_intermediate_key(tmp_path, uri)
    assert ca.config.key == uri
    running = start_server(ca)
    try:
        issue_through(running, "gcp.internal")
    finally:
        running.stop()
