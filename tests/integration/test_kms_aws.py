"""The AWS KMS backend against moto's real server (`python -m moto.server` on loopback), driven through
boto3; certificates and CRLs checked with openssl.

moto ignores `MessageType=DIGEST` (it hashes the digest again) and signs PSS with the maximum salt, so
the server tests use `message-type=RAW`. The DIGEST requests production sends are checked without a
server, with botocore's Stubber, which validates every request and response against botocore's own
copy of the AWS KMS API model.
"""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests
from botocore.stub import Stubber
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

import kms
from kms.aws_backend import AwsKmsBackend
from kms.errors import (
    BackendUnavailable,
    InvalidKeyURI,
    KeyExists,
    KeyNotFound,
    PermissionDenied,
    SigningFailed,
    UnsupportedAlgorithm,
)
from tests.integration.conftest import free_port

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
REGION = "us-east-1"
SPECS = ["EC-P256", "EC-P384", "RSA-2048", "RSA-3072", "RSA-4096"]
# The SDK must see test credentials only: nothing from the host's ~/.aws or environment.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": REGION,
           "AWS_CONFIG_FILE": "/nonexistent/aws-config", "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-creds"}
AWS_UNSET = ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_KMS")


@dataclass
class Moto:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def uri(self, key_id: str | None = None, **query: str) -> str:
        path = f"key-id={key_id};region={REGION}" if key_id else f"region={REGION}"
        return f"awskms:{path}?" + "&".join(f"{k}={v}" for k, v in
                                            {"endpoint": self.url, "message-type": "RAW", **query}.items())

    def client(self) -> Any:
        return boto3.client("kms", region_name=REGION, endpoint_url=self.url)


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Moto]:
    pytest.importorskip("moto.server", reason="moto's server is not installed (pip install 'moto[server]')")
    saved = {k: os.environ.get(k) for k in (*AWS_ENV, *AWS_UNSET)}
    for k in AWS_UNSET:
        os.environ.pop(k, None)
    os.environ.update(AWS_ENV)  # the backend takes credentials from the SDK chain, as in production
    port, log = free_port(), tmp_path_factory.mktemp("moto") / "moto.log"
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)
    server = Moto(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if requests.get(f"{server.url}/moto-api/", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"moto did not start:\n{log.read_text()}"
            time.sleep(0.1)
        yield server
    finally:
        kms.close_all()
        proc.send_signal(signal.SIGCONT)  # in case a test stopped it and failed before resuming it
        proc.terminate()
        proc.wait(timeout=30)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ec(key: kms.CAKey) -> ec.EllipticCurvePrivateKey:
    assert isinstance(key, ec.EllipticCurvePrivateKey), key
    return key


def _openssl(*args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True)
    return done.stdout + done.stderr


@pytest.mark.parametrize("spec", SPECS)
def test_keys_made_in_kms_sign_certificates_and_crls_openssl_accepts(moto: Moto, spec: str, tmp_path: Path) -> None:
    alias = f"alias/hsmca-{spec.lower()}-{secrets.token_hex(3)}"
    key = kms.create_key(moto.uri(alias), spec)
    assert isinstance(key, kms.KMSKey) and key.uri == moto.uri(alias) and kms.spec_of(key).value == spec
    meta = moto.client().describe_key(KeyId=alias)["KeyMetadata"]
    assert (meta["KeyUsage"], meta["KeySpec"], meta["Description"]) == \
        ("SIGN_VERIFY", {"EC-P256": "ECC_NIST_P256", "EC-P384": "ECC_NIST_P384"}.get(spec, spec.replace("-", "_")),
         "hsmca CA key")
    with pytest.raises(KeyExists, match=f"aws kms {REGION}: {alias} already exists"):
        kms.create_key(moto.uri(alias), spec)
    opened = kms.open_key(moto.uri(alias))
    assert opened.public_key() == key.public_key()
    spki = moto.client().get_public_key(KeyId=alias)["PublicKey"]
    assert opened.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo) == spki

    root = kms.root_certificate(opened, _name(f"aws root {spec}"), NOW, NOW + datetime.timedelta(days=30))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.internal")).issuer_name(root.subject)
            .public_key(leaf_key.public_key()).serial_number(kms.new_serial()).not_valid_before(NOW)
            .not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(opened, kms.default_hash(opened)))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1)).sign(opened, kms.default_hash(opened)))
    for name, obj in (("root.pem", root), ("leaf.pem", leaf), ("crl.pem", crl)):
        (tmp_path / name).write_bytes(obj.public_bytes(Encoding.PEM))
    assert ": OK" in _openssl("verify", "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "leaf.pem"))
    assert "verify OK" in _openssl("crl", "-in", str(tmp_path / "crl.pem"), "-CAfile", str(tmp_path / "root.pem"),
                                   "-noout")

    if isinstance(opened, rsa.RSAPrivateKey):
        for h in (hashes.SHA384(), hashes.SHA512()):  # PKCS#1 v1.5 with every hash AWS offers
            sig = opened.sign(b"probe", padding.PKCS1v15(), h)
            opened.public_key().verify(sig, b"probe", padding.PKCS1v15(), h)
        # moto signs PSS with the maximum salt; AWS (and X.509 profiles) use salt = digest length, which the
        # adapter verifies every signature against. So on moto the adapter refuses to hand the signature out:
        # that is the local verification working, not a defect of the backend.
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        with pytest.raises(SigningFailed, match=f"aws kms {REGION} returned an RSA signature that does not verify"):
            opened.sign(b"probe", pss, hashes.SHA256())
        raw = moto.client().sign(KeyId=alias, Message=b"probe", MessageType="RAW",
                                 SigningAlgorithm="RSASSA_PSS_SHA_256")["Signature"]
        opened.public_key().verify(raw, b"probe", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.AUTO),
                                   hashes.SHA256())  # a valid signature, with a salt we do not accept


def test_a_key_created_without_an_alias_is_named_by_its_arn(moto: Moto) -> None:
    key = kms.create_key(moto.uri(), "EC-P256")
    assert isinstance(key, kms.KMSKey) and f"key-id=arn:aws:kms:{REGION}:" in key.uri
    by_arn = kms.open_key(key.uri)
    key_id = moto.client().describe_key(KeyId=kms.parse_key_uri(key.uri).path["key-id"])["KeyMetadata"]["KeyId"]
    by_id = kms.open_key(moto.uri(key_id))
    assert by_arn.public_key() == by_id.public_key() == key.public_key()
    with pytest.raises(KeyExists, match="already exists"):
        kms.create_key(moto.uri(key_id), "EC-P256")
    with pytest.raises(InvalidKeyURI, match="AWS assigns key ids itself"):
        kms.create_key(moto.uri("1234abcd-12ab-34cd-56ef-1234567890ab"), "EC-P256")


def test_digest_mode_on_moto_is_caught_by_local_verification(moto: Moto) -> None:
    """moto signs SHA-256(digest) instead of the digest: exactly the wrong signature the adapter must stop."""
    alias = f"alias/digest-{secrets.token_hex(3)}"
    kms.create_key(moto.uri(alias), "EC-P256")
    key = _ec(kms.open_key(moto.uri(alias, **{"message-type": "DIGEST"})))
    with pytest.raises(SigningFailed, match="returned an ECDSA signature that does not verify"):
        key.sign(b"tbs", ec.ECDSA(hashes.SHA256()))


def test_keys_that_cannot_serve_as_ca_keys_are_refused_with_the_reason(moto: Moto) -> None:
    with pytest.raises(KeyNotFound, match=f"aws kms {REGION}: not found while describing key alias/missing"):
        kms.open_key(moto.uri("alias/missing"))
    client = moto.client()
    disabled = client.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_NIST_P256")["KeyMetadata"]["KeyId"]
    client.disable_key(KeyId=disabled)
    with pytest.raises(PermissionDenied, match=f"key {disabled} is Disabled; it cannot sign until it is enabled"):
        kms.open_key(moto.uri(disabled))
    symmetric = client.create_key(KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["KeyId"]
    with pytest.raises(UnsupportedAlgorithm, match="has KeyUsage ENCRYPT_DECRYPT; a CA key needs SIGN_VERIFY"):
        kms.open_key(moto.uri(symmetric))
    k1 = client.create_key(KeyUsage="SIGN_VERIFY", KeySpec="ECC_SECG_P256K1")["KeyMetadata"]["KeyId"]
    with pytest.raises(UnsupportedAlgorithm, match="is ECC_SECG_P256K1; hsmca signs with ECC_NIST_P256"):
        kms.open_key(moto.uri(k1))
    with pytest.raises(UnsupportedAlgorithm, match="does not create Ed25519 keys in AWS KMS"):
        kms.create_key(moto.uri("alias/edwards"), "Ed25519")
    with pytest.raises(InvalidKeyURI, match="looks like a credential"):
        kms.open_key(moto.uri("alias/x", **{"secret-access-key": "x"}))
    with pytest.raises(InvalidKeyURI, match="unknown query attribute 'mesage-type'"):
        kms.open_key(moto.uri("alias/x", **{"mesage-type": "RAW"}))


def test_raw_mode_refuses_what_it_cannot_send(moto: Moto) -> None:
    alias = f"alias/raw-{secrets.token_hex(3)}"
    key = _ec(kms.create_key(moto.uri(alias), "EC-P384"))
    digest = hashes.Hash(hashes.SHA384())
    digest.update(b"tbs")
    with pytest.raises(UnsupportedAlgorithm, match="only a digest was given .Prehashed.; use message-type=DIGEST"):
        key.sign(digest.finalize(), ec.ECDSA(utils.Prehashed(hashes.SHA384())))
    with pytest.raises(SigningFailed, match="a 4097-byte message is over AWS KMS's 4096-byte limit"):
        key.sign(b"x" * 4097, ec.ECDSA(hashes.SHA384()))
    with pytest.raises(UnsupportedAlgorithm, match="cannot sign ecdsa with sha256; it offers ECDSA_SHA_384"):
        key.sign(b"tbs", ec.ECDSA(hashes.SHA256()))
    key.sign(b"x" * 4096, ec.ECDSA(hashes.SHA384()))


def test_an_unreachable_endpoint_is_unavailable_within_seconds(moto: Moto) -> None:
    uri = f"awskms:key-id=alias/k;region={REGION}?endpoint=http://127.0.0.1:{free_port()}&timeout=2"
    start = time.monotonic()
    with pytest.raises(BackendUnavailable, match=f"aws kms {REGION} while describing key alias/k: "
                                                 "EndpointConnectionError: Could not connect"):
        kms.open_key(uri)
    assert time.monotonic() - start < 5
    report = kms.registry.backend_for(uri).health()  # no key opened yet: ListKeys
    assert report["ok"] is False and report["status"].startswith("unavailable: EndpointConnectionError")


def test_one_adapter_signs_from_many_threads(moto: Moto) -> None:
    alias = f"alias/threads-{secrets.token_hex(3)}"
    key = _ec(kms.create_key(moto.uri(alias), "EC-P256"))
    messages = [secrets.token_bytes(64) for _ in range(24)]
    with ThreadPoolExecutor(8) as pool:
        signatures = list(pool.map(lambda m: key.sign(m, ec.ECDSA(hashes.SHA256())), messages))
    for m, sig in zip(messages, signatures, strict=True):  # the adapter verified each; check again independently
        key.public_key().verify(sig, m, ec.ECDSA(hashes.SHA256()))


def test_a_frozen_server_is_unavailable_in_time_and_signing_resumes(moto: Moto) -> None:
    """SIGSTOP: the kernel still accepts connections but nothing answers, the worst case for a client."""
    alias = f"alias/frozen-{secrets.token_hex(3)}"
    kms.create_key(moto.uri(alias), "EC-P256")
    key = _ec(kms.open_key(moto.uri(alias, timeout="2", cooldown="1")))
    backend = kms.registry.backend_for(moto.uri(alias, timeout="2", cooldown="1"))
    key.sign(b"before", ec.ECDSA(hashes.SHA256()))
    moto.proc.send_signal(signal.SIGSTOP)
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match=f"aws kms {REGION} while signing with key {alias}: "
                                                     "ReadTimeoutError"):
            key.sign(b"during", ec.ECDSA(hashes.SHA256()))
        took = time.monotonic() - start
        fast = time.monotonic()
        with pytest.raises(BackendUnavailable, match=f"aws kms {REGION} is failing .* not tried again for"):
            key.sign(b"breaker open", ec.ECDSA(hashes.SHA256()))  # fails at once, the server is not asked
        assert time.monotonic() - fast < 0.5
        sick = backend.health()
    finally:
        moto.proc.send_signal(signal.SIGCONT)
    assert took < 3 * 2 + 2, f"took {took:.1f} s; the URI's timeout is 2 s and there are 3 attempts"
    assert sick["ok"] is False and sick["status"].startswith("unavailable: ReadTimeoutError")
    assert "ReadTimeoutError" in str(sick["lastError"])
    time.sleep(1.1)  # the URI's cooldown; then one trial call, which succeeds and closes the breaker
    sig = key.sign(b"after", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"after", ec.ECDSA(hashes.SHA256()))
    well = backend.health()
    assert (well["backend"], well["region"], well["ok"], well["status"], well["lastError"]) == \
        ("awskms", REGION, True, "ok", None)


# --- DIGEST mode, no server: botocore's Stubber validates requests against the real AWS KMS API model ---

STUB_ARN = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
STUB_URI = "awskms:key-id=alias/stubbed;region=eu-west-1"


@pytest.fixture
def stubbed_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in AWS_UNSET:
        monkeypatch.delenv(k, raising=False)
    for k, v in AWS_ENV.items():
        monkeypatch.setenv(k, v)


def _open_stubbed(stub: Stubber, backend: AwsKmsBackend, private: Any, aws_spec: str, algorithms: list[str]) -> Any:
    der = private.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    stub.add_response("describe_key", {"KeyMetadata": {
        "KeyId": STUB_ARN.rsplit("/", 1)[1], "Arn": STUB_ARN, "Enabled": True, "KeyState": "Enabled",
        "KeyUsage": "SIGN_VERIFY", "KeySpec": aws_spec, "SigningAlgorithms": algorithms}},
        {"KeyId": "alias/stubbed"})
    stub.add_response("get_public_key", {"KeyId": STUB_ARN, "PublicKey": der, "KeySpec": aws_spec,
                                         "KeyUsage": "SIGN_VERIFY", "SigningAlgorithms": algorithms},
                      {"KeyId": STUB_ARN})
    return backend.open_key(kms.parse_key_uri(STUB_URI))


RSA_ALGORITHMS = [f"RSASSA_{p}_SHA_{n}" for p in ("PSS", "PKCS1_V1_5") for n in (256, 384, 512)]


@pytest.mark.parametrize(("aws_spec", "scheme", "h", "algorithm"), [
    ("ECC_NIST_P256", "ecdsa", hashes.SHA256(), "ECDSA_SHA_256"),
    ("ECC_NIST_P384", "ecdsa", hashes.SHA384(), "ECDSA_SHA_384"),
    ("RSA_2048", "pkcs1v15", hashes.SHA256(), "RSASSA_PKCS1_V1_5_SHA_256"),
    ("RSA_3072", "pkcs1v15", hashes.SHA384(), "RSASSA_PKCS1_V1_5_SHA_384"),
    ("RSA_2048", "pss", hashes.SHA256(), "RSASSA_PSS_SHA_256"),
    ("RSA_3072", "pss", hashes.SHA384(), "RSASSA_PSS_SHA_384"),
], ids=lambda v: getattr(v, "name", v))
def test_digest_mode_sends_the_digest_with_the_right_algorithm(stubbed_env: None, aws_spec: str, scheme: str,
                                                               h: hashes.HashAlgorithm, algorithm: str) -> None:
    """Stubber checks each request against botocore's copy of the real AWS KMS API model, and we check
    that the Sign request is the production one: MessageType=DIGEST, the 32/48-byte digest, the algorithm."""
    ecc = aws_spec.startswith("ECC")
    private: Any = ec.generate_private_key(ec.SECP256R1() if aws_spec.endswith("256") else ec.SECP384R1()) if ecc \
        else rsa.generate_private_key(65537, int(aws_spec.split("_")[1]))
    algorithms = [algorithm] if ecc else RSA_ALGORITHMS
    tbs = secrets.token_bytes(5000)  # over RAW's limit: DIGEST mode never sends the message
    ctx = hashes.Hash(h)
    ctx.update(tbs)
    digest = ctx.finalize()
    assert len(digest) == {"sha256": 32, "sha384": 48}[h.name]
    pad: Any = padding.PKCS1v15() if scheme == "pkcs1v15" else padding.PSS(padding.MGF1(h), padding.PSS.DIGEST_LENGTH)
    made = private.sign(digest, ec.ECDSA(utils.Prehashed(h))) if ecc else private.sign(digest, pad, utils.Prehashed(h))
    backend = AwsKmsBackend(kms.parse_key_uri(STUB_URI))
    with Stubber(backend.client) as stub:
        key = _open_stubbed(stub, backend, private, aws_spec, algorithms)
        expected = {"KeyId": STUB_ARN, "Message": digest, "MessageType": "DIGEST", "SigningAlgorithm": algorithm}
        stub.add_response("sign", {"KeyId": STUB_ARN, "Signature": made, "SigningAlgorithm": algorithm}, expected)
        got = key.sign(tbs, ec.ECDSA(h)) if ecc else key.sign(tbs, pad, h)
        stub.assert_no_pending_responses()
    assert got == made
    backend.close()


ERROR_CASES = [  # (code, HTTP status, error raised, Sign calls made, message)
    ("ThrottlingException", 400, BackendUnavailable, 3,
     "aws kms eu-west-1 while signing with key alias/stubbed: ThrottlingException: slow down"),
    ("KMSInternalException", 500, BackendUnavailable, 3, "while signing with key alias/stubbed: KMSInternalException"),
    ("DisabledException", 400, PermissionDenied, 1, "aws kms eu-west-1 refused signing with key alias/stubbed: "
                                                    "DisabledException"),
    ("KMSInvalidStateException", 400, PermissionDenied, 1, "refused signing with key alias/stubbed: KMSInvalidState"),
    ("AccessDeniedException", 400, PermissionDenied, 1, "refused signing with key alias/stubbed: AccessDenied"),
    ("InvalidKeyUsageException", 400, SigningFailed, 1, "refused signing with key alias/stubbed: InvalidKeyUsage"),
]


@pytest.mark.parametrize(("code", "status", "error", "calls", "message"),
                         [pytest.param(*case, id=case[0]) for case in ERROR_CASES])
def test_sign_errors_map_to_the_error_vocabulary_and_only_transient_ones_are_retried(
        stubbed_env: None, code: str, status: int, error: type[Exception], calls: int, message: str) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    backend = AwsKmsBackend(kms.parse_key_uri(STUB_URI))
    with Stubber(backend.client) as stub:
        key = _open_stubbed(stub, backend, private, "ECC_NIST_P256", ["ECDSA_SHA_256"])
        for _ in range(calls):  # a retry past these would meet no stub and fail with another error type
            stub.add_client_error("sign", code, "slow down" if calls > 1 else "no", http_status_code=status)
        with pytest.raises(error, match=message):
            key.sign(b"tbs", ec.ECDSA(hashes.SHA256()))
        stub.assert_no_pending_responses()
    assert (backend.calls.last_error is not None) == (error is BackendUnavailable)  # what health() reports


def test_throttling_then_success_signs(stubbed_env: None) -> None:
    private = ec.generate_private_key(ec.SECP384R1())
    backend = AwsKmsBackend(kms.parse_key_uri(STUB_URI))
    with Stubber(backend.client) as stub:
        key = _open_stubbed(stub, backend, private, "ECC_NIST_P384", ["ECDSA_SHA_384"])
        stub.add_client_error("sign", "ThrottlingException", "Rate exceeded")
        made = private.sign(b"tbs", ec.ECDSA(hashes.SHA384()))
        stub.add_response("sign", {"KeyId": STUB_ARN, "Signature": made, "SigningAlgorithm": "ECDSA_SHA_384"})
        assert key.sign(b"tbs", ec.ECDSA(hashes.SHA384())) == made
        stub.assert_no_pending_responses()


def test_an_alias_taken_during_create_leaves_no_orphan_key(stubbed_env: None) -> None:
    """Another creator wins the alias between our check and CreateAlias: our new key is scheduled for deletion."""
    backend = AwsKmsBackend(kms.parse_key_uri(STUB_URI))
    with Stubber(backend.client) as stub:
        stub.add_client_error("describe_key", "NotFoundException", "Alias alias/stubbed is not found.",
                              expected_params={"KeyId": "alias/stubbed"})
        stub.add_response("create_key", {"KeyMetadata": {"KeyId": STUB_ARN.rsplit("/", 1)[1], "Arn": STUB_ARN}},
                          {"KeyUsage": "SIGN_VERIFY", "KeySpec": "RSA_3072", "Description": "hsmca CA key"})
        stub.add_client_error("create_alias", "AlreadyExistsException", "An alias with the name alias/stubbed exists",
                              expected_params={"AliasName": "alias/stubbed", "TargetKeyId": STUB_ARN})
        stub.add_response("schedule_key_deletion", {"KeyId": STUB_ARN, "KeyState": "PendingDeletion"},
                          {"KeyId": STUB_ARN, "PendingWindowInDays": 7})
        with pytest.raises(KeyExists, match="refused creating alias alias/stubbed: AlreadyExistsException"):
            backend.create_key(kms.parse_key_uri(STUB_URI), kms.KeySpec.RSA_3072)
        stub.assert_no_pending_responses()


def test_init_with_the_intermediate_key_in_aws_kms_gives_a_working_ca(moto: Moto, tmp_path: Path) -> None:
    """`hsmca init --intermediate-key awskms:…`: the dev root in SoftHSM, the intermediate key in (moto's) KMS;
    `hsmca serve` issues through it and openssl accepts the chain."""
    from tests.integration.conftest import init_with_intermediate_key, issue_through, start_server

    uri = moto.uri(f"alias/init-{secrets.token_hex(3)}")
    ca = init_with_intermediate_key(tmp_path, uri)
    assert ca.config.key == uri
    running = start_server(ca)
    try:
        issue_through(running, "aws.internal")
    finally:
        running.stop()
