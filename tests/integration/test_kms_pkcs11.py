"""kms/ against real SoftHSM2: key generation, signing through cryptography's builders, the
attributes that keep keys inside the token, error mapping, lost sessions, threads and fork."""

from __future__ import annotations

import copy
import datetime
import multiprocessing
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID
from pkcs11 import Attribute, ObjectClass

import kms
import softhsm
from kms import pkcs11_module
from kms.registry import backend_for
from kms.signer import NEVER_LEAVES

if TYPE_CHECKING:
    from tests.conftest import SoftHSMToken

UTC = datetime.UTC
NOW = datetime.datetime.now(UTC).replace(microsecond=0)
DATA = b"the to-be-signed bytes of some certificate"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _verify(public: Any, signature: bytes, data: bytes, *, pss: bool = False) -> None:
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(signature, data, ec.ECDSA(kms.default_hash_for(_spec(public)) or hashes.SHA256()))
    elif isinstance(public, rsa.RSAPublicKey):
        pad = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH) if pss \
            else padding.PKCS1v15()
        public.verify(signature, data, pad, hashes.SHA256())
    else:
        public.verify(signature, data)


def _spec(public: Any) -> kms.KeySpec:
    return kms.KeySpec.EC_P384 if public.curve.key_size == 384 else kms.KeySpec.EC_P256


def _sign(key: kms.CAKey, data: bytes) -> bytes:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(kms.default_hash(key) or hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    return key.sign(data)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60, check=False)


def _pem(path: Path, obj: Any) -> Path:
    path.write_bytes(obj.public_bytes(serialization.Encoding.PEM))
    return path


def _token_objects(tok: SoftHSMToken, label: str) -> dict[ObjectClass, dict[Attribute, Any]]:
    """The token's objects labelled `label`, read with python-pkcs11 directly. The session is
    opened without a PIN: login is per application, and the kms backend has logged in."""
    wanted = [Attribute.TOKEN, Attribute.PRIVATE, Attribute.LABEL, Attribute.ID]
    private_only = [Attribute.SENSITIVE, Attribute.ALWAYS_SENSITIVE, Attribute.EXTRACTABLE,
                    Attribute.NEVER_EXTRACTABLE, Attribute.SIGN, Attribute.DECRYPT,
                    Attribute.UNWRAP, Attribute.DERIVE]
    with pkcs11_module.lock():
        token = pkcs11.lib(tok.module).get_token(token_label=tok.label)
        session = token.open()
        try:
            found = {}
            for obj in list(session.get_objects({Attribute.LABEL: label})):
                cls = obj[Attribute.CLASS]
                extra = private_only if cls == ObjectClass.PRIVATE_KEY else [Attribute.VERIFY]
                found[cls] = obj.get_attributes(wanted + extra)
            return found
        finally:
            session.close()


# ---------------------------------------------------------------- one key of every spec

@pytest.fixture(scope="module")
def spec_token(softhsm_token_factory: Callable[[], SoftHSMToken]) -> SoftHSMToken:
    return softhsm_token_factory()


@pytest.fixture(scope="module")
def keys(spec_token: SoftHSMToken) -> Keys:
    """Each supported spec created once (RSA-4096 takes seconds in SoftHSM)."""
    return {spec: kms.create_key(spec_token.key_uri(f"ca-{spec.value}"), spec) for spec in kms.KeySpec}


Keys = dict[kms.KeySpec, kms.CAKey]
ALL_SPECS = list(kms.KeySpec)
RSA_SPECS = [s for s in kms.KeySpec if s.kty == "RSA"]


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_created_key_has_the_spec_and_the_token_public_key(spec: kms.KeySpec, keys: Keys, spec_token: SoftHSMToken) -> None:  # noqa: E501
    key = keys[spec]
    meta = cast(kms.KMSKey, key)
    assert isinstance(meta, kms.KMSKey) and meta.spec is spec and meta.backend == "pkcs11"
    assert "pin-value" not in meta.uri and spec_token.pin not in meta.uri
    expected = {"EC": ec.EllipticCurvePrivateKey, "RSA": rsa.RSAPrivateKey, "OKP": ed25519.Ed25519PrivateKey}
    assert isinstance(key, expected[spec.kty])
    reopened = kms.open_key(spec_token.key_uri(f"ca-{spec.value}", pin="source"))
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert reopened.public_key().public_bytes(*der) == key.public_key().public_bytes(*der)
    if isinstance(key, rsa.RSAPrivateKey):
        assert key.key_size == spec.bits
    _verify(reopened.public_key(), _sign(key, DATA), DATA)


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_private_key_never_leaves_the_token(spec: kms.KeySpec, keys: Keys, spec_token: SoftHSMToken) -> None:
    objects = _token_objects(spec_token, f"ca-{spec.value}")
    private, public = objects[ObjectClass.PRIVATE_KEY], objects[ObjectClass.PUBLIC_KEY]
    assert private[Attribute.TOKEN] and private[Attribute.PRIVATE]
    assert private[Attribute.SENSITIVE] and private[Attribute.ALWAYS_SENSITIVE]
    assert not private[Attribute.EXTRACTABLE] and private[Attribute.NEVER_EXTRACTABLE]
    assert private[Attribute.SIGN]
    assert not (private[Attribute.DECRYPT] or private[Attribute.UNWRAP] or private[Attribute.DERIVE])
    assert public[Attribute.TOKEN] and public[Attribute.VERIFY]
    assert len(private[Attribute.ID]) == 16 and private[Attribute.ID] == public[Attribute.ID]

    key: Any = keys[spec]  # every adapter refuses all three, whatever its family
    attempts: list[Callable[[], object]] = [
        lambda: key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()),
        lambda: key.private_numbers(),
        lambda: key.private_bytes_raw(),
    ]
    for attempt in attempts:
        with pytest.raises(kms.KMSError, match=NEVER_LEAVES):
            attempt()
    assert copy.copy(key) is key and copy.deepcopy(key) is key


@pytest.mark.parametrize("spec", ALL_SPECS, ids=str)
def test_builders_sign_through_the_adapter(spec: kms.KeySpec, keys: Keys, tmp_path: Path) -> None:
    key = keys[spec]
    h = kms.default_hash(key)
    root = kms.root_certificate(key, _name(f"root {spec}"), NOW, NOW + datetime.timedelta(days=30))
    root.verify_directly_issued_by(root)

    crl = (x509.CertificateRevocationListBuilder().issuer_name(root.subject)
           .last_update(NOW).next_update(NOW + datetime.timedelta(days=1))
           .add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(42)
                                    .revocation_date(NOW).build())
           .sign(key, h))
    assert crl.is_signature_valid(key.public_key())

    csr = x509.CertificateSigningRequestBuilder().subject_name(_name("csr")).sign(key, h)
    assert csr.is_signature_valid

    response = (ocsp.OCSPResponseBuilder()
                .add_response(cert=root, issuer=root, algorithm=hashes.SHA256(),
                              cert_status=ocsp.OCSPCertStatus.GOOD, this_update=NOW,
                              next_update=NOW + datetime.timedelta(hours=1),
                              revocation_time=None, revocation_reason=None)
                .responder_id(ocsp.OCSPResponderEncoding.HASH, root)
                .sign(key, h))
    _verify(key.public_key(), response.signature, response.tbs_response_bytes)

    # The same with OpenSSL as the judge.
    root_pem, crl_pem = _pem(tmp_path / "root.pem", root), _pem(tmp_path / "crl.pem", crl)
    verdict = _openssl("verify", "-x509_strict", "-CAfile", str(root_pem), str(root_pem))
    assert verdict.returncode == 0, verdict.stderr
    verdict = _openssl("crl", "-in", str(crl_pem), "-CAfile", str(root_pem), "-verify", "-noout")
    assert verdict.returncode == 0 and "verify OK" in verdict.stderr + verdict.stdout, verdict.stderr


@pytest.mark.parametrize("spec", RSA_SPECS, ids=str)
def test_rsa_pkcs1v15_and_pss(spec: kms.KeySpec, keys: Keys, tmp_path: Path) -> None:
    key = keys[spec]
    assert isinstance(key, rsa.RSAPrivateKey)
    public = key.public_key()
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    public.verify(key.sign(DATA, padding.PKCS1v15(), hashes.SHA256()), DATA, padding.PKCS1v15(), hashes.SHA256())
    public.verify(key.sign(DATA, pss, hashes.SHA256()), DATA, pss, hashes.SHA256())
    for h in (hashes.SHA384(), hashes.SHA512()):
        digest = hashes.Hash(h)
        digest.update(DATA)
        d = digest.finalize()
        explicit = padding.PSS(padding.MGF1(h), h.digest_size)
        public.verify(key.sign(d, explicit, utils.Prehashed(h)), DATA, explicit, h)
        public.verify(key.sign(d, padding.PKCS1v15(), utils.Prehashed(h)), DATA, padding.PKCS1v15(), h)

    # A PSS-signed certificate, checked by OpenSSL too.
    builder = (x509.CertificateBuilder().subject_name(_name("pss")).issuer_name(_name("pss"))
               .public_key(public).serial_number(kms.new_serial())
               .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
    cert = builder.sign(key, hashes.SHA256(), rsa_padding=pss)
    cert.verify_directly_issued_by(cert)
    pem = _pem(tmp_path / "pss.pem", cert)
    verdict = _openssl("verify", "-CAfile", str(pem), str(pem))
    assert verdict.returncode == 0, verdict.stderr

    with pytest.raises(kms.UnsupportedAlgorithm, match="salt"):
        key.sign(DATA, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256())
    with pytest.raises(kms.UnsupportedAlgorithm, match="MGF1"):
        key.sign(DATA, padding.PSS(padding.MGF1(hashes.SHA512()), 32), hashes.SHA256())
    with pytest.raises(kms.UnsupportedAlgorithm, match="sha1"):
        key.sign(DATA, padding.PKCS1v15(), hashes.SHA1())


def test_ecdsa_prehashed_and_other_hashes(keys: Keys) -> None:
    key = keys[kms.KeySpec.EC_P256]
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    for h in (hashes.SHA256(), hashes.SHA384(), hashes.SHA512()):
        digest = hashes.Hash(h)
        digest.update(DATA)
        signature = key.sign(digest.finalize(), ec.ECDSA(utils.Prehashed(h)))
        key.public_key().verify(signature, DATA, ec.ECDSA(h))
    with pytest.raises(kms.UnsupportedAlgorithm):
        key.sign(DATA, ec.ECDSA(hashes.SHA1()))
    with pytest.raises(kms.UnsupportedAlgorithm, match="prehashed"):
        key.sign(b"short", ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def test_root_and_intermediate_chain_verify_with_openssl(keys: Keys, tmp_path: Path) -> None:
    root_key, inter_key = keys[kms.KeySpec.EC_P384], keys[kms.KeySpec.RSA_2048]
    root = kms.root_certificate(root_key, _name("hsmca test root"), NOW, NOW + datetime.timedelta(days=3650))
    inter = kms.intermediate_certificate(root_key, root, inter_key.public_key(), _name("hsmca test intermediate"),
                                         NOW, NOW + datetime.timedelta(days=365))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder().subject_name(_name("leaf.example")).issuer_name(inter.subject)
            .public_key(leaf_key.public_key()).serial_number(kms.new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("leaf.example")]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_key.public_key()),
                           critical=False)
            .sign(inter_key, kms.default_hash(inter_key)))
    inter.verify_directly_issued_by(root)
    leaf.verify_directly_issued_by(inter)
    aki = inter.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == root.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    paths = [_pem(tmp_path / n, c) for n, c in (("root.pem", root), ("inter.pem", inter), ("leaf.pem", leaf))]
    verdict = _openssl("verify", "-x509_strict", "-CAfile", str(paths[0]), "-untrusted", str(paths[1]), str(paths[2]))
    assert verdict.returncode == 0, verdict.stderr + verdict.stdout
    with pytest.raises(ValueError, match="issuer key"):
        kms.intermediate_certificate(inter_key, root, inter_key.public_key(), _name("x"), NOW,
                                     NOW + datetime.timedelta(days=1))


# ---------------------------------------------------------------- errors

def test_key_exists_and_key_not_found(softhsm_token: SoftHSMToken) -> None:
    uri = softhsm_token.key_uri("dup")
    kms.create_key(uri, "EC-P256")
    with pytest.raises(kms.KeyExists, match="dup"):
        kms.create_key(uri, kms.KeySpec.EC_P384)
    with pytest.raises(kms.KeyNotFound, match="no private key"):
        kms.open_key(softhsm_token.key_uri("missing"))
    with pytest.raises(kms.KeyNotFound, match="no token"):
        kms.open_key(softhsm_token.key_uri("dup").replace(softhsm_token.label, "no-such-token"))
    by_id = softhsm_token.key_uri("with-id", key_id=b"\x01\x02\x03")
    made = kms.create_key(by_id, "EC-P256")
    found = kms.open_key(f"pkcs11:token={softhsm_token.label};id=%01%02%03?pin-value={softhsm_token.pin}")
    _verify(made.public_key(), _sign(found, DATA), DATA)


def test_keys_on_one_token_share_a_backend_and_tokens_match_by_serial(softhsm_token: SoftHSMToken) -> None:
    a = kms.create_key(softhsm_token.key_uri("a"), "EC-P256")
    b = kms.create_key(softhsm_token.key_uri("b"), "EC-P384")
    assert backend_for(softhsm_token.key_uri("a")) is backend_for(softhsm_token.key_uri("b"))
    with pkcs11_module.lock():
        serial = pkcs11.lib(softhsm_token.module).get_token(token_label=softhsm_token.label).serial.decode()
    by_serial = kms.open_key(f"pkcs11:serial={serial};object=b?pin-value={softhsm_token.pin}")
    _verify(b.public_key(), _sign(by_serial, DATA), DATA)
    _verify(a.public_key(), _sign(a, DATA), DATA)


def test_wrong_pin_is_permission_denied_and_never_shown(softhsm_token: SoftHSMToken) -> None:
    wrong = softhsm_token.key_uri("k").replace(softhsm_token.pin, "wrong-pin-123")
    with pytest.raises(kms.PermissionDenied) as refused:
        kms.open_key(wrong)
    assert "wrong-pin-123" not in str(refused.value) and "PinIncorrect" in str(refused.value)
    report = backend_for(wrong).health()
    assert report["ok"] is False and "refused" in report["detail"]
    with pytest.raises(kms.PermissionDenied, match="refused this PIN before"):
        kms.open_key(wrong)  # not tried again: a real HSM would count it towards a lock-out
    # The right PIN still works (a refused PIN is not retried, a different one is).
    kms.create_key(softhsm_token.key_uri("k"), "EC-P256")
    with pytest.raises(kms.PermissionDenied, match="differs"):
        kms.open_key(wrong)


def test_pin_source_problems_are_permission_denied(softhsm_token: SoftHSMToken, tmp_path: Path) -> None:
    base = f"pkcs11:token={softhsm_token.label};object=k?pin-source="
    with pytest.raises(kms.PermissionDenied, match="cannot read the PIN"):
        kms.open_key(base + f"file:{tmp_path}/absent")
    with pytest.raises(kms.PermissionDenied, match="no PIN"):
        kms.open_key(f"pkcs11:token={softhsm_token.label};object=k")


@pytest.mark.parametrize("uri, match", [
    ("", "empty"),
    ("token=x;object=y", "not a key URI"),
    ("pkcs12:token=x;object=y", "unknown key URI scheme"),
    ("pkcs11:object=y?pin-value=1234", "names no token"),
    ("pkcs11:token=x?pin-value=1234", "names no key"),
    ("pkcs11:token=x;object=y;type=public", "type=private"),
    ("awskms:key-id=abc;region=eu-west-1;secret-key=x", "looks like a credential"),
    ("vault:transit/abc", "vault:MOUNT/keys/NAME"),
    ("gcpkms:projects/p/locations/l/keyRings/r/cryptoKeys/k", "version"),
    ("azurekv:https://v.vault.azure.net/keys/k?pin-value=1", "unknown parameter"),
])
def test_bad_uris_are_invalid_key_uri(uri: str, match: str) -> None:
    with pytest.raises(kms.InvalidKeyURI, match=match):
        kms.open_key(uri)


def test_missing_module_is_backend_unavailable(softhsm_token: SoftHSMToken) -> None:
    uri = f"pkcs11:token={softhsm_token.label};object=k?module-path=/nonexistent/libp11.so&pin-value=1234"
    with pytest.raises(kms.BackendUnavailable, match="not found"):
        kms.open_key(uri)
    report = next(r for r in kms.backends_health() if r.get("module") == "/nonexistent/libp11.so")
    assert report["ok"] is False and "not found" in report["detail"]


# ---------------------------------------------------------------- sessions, threads, fork

def _session_of(key: kms.CAKey) -> Any:
    return key._tokens  # type: ignore[union-attr]


def test_lost_session_is_reopened(softhsm_token: SoftHSMToken) -> None:
    key = kms.create_key(softhsm_token.key_uri("k"), "EC-P256")
    tokens = _session_of(key)

    with pkcs11_module.lock():  # the HSM closes our session (as on an idle timeout)
        tokens._session.close()
    _verify(key.public_key(), _sign(key, DATA), DATA)

    with pkcs11_module.lock():  # someone finalises and re-initialises the whole module
        pkcs11.lib(softhsm_token.module).reinitialize()
    _verify(key.public_key(), _sign(key, DATA), DATA)

    with pkcs11_module.lock():  # … or only finalises it (CKR_CRYPTOKI_NOT_INITIALIZED)
        pkcs11.lib(softhsm_token.module).finalize()
    _verify(key.public_key(), _sign(key, DATA), DATA)

    with pkcs11_module.lock():
        tokens._session.close()
    report = next(r for r in kms.backends_health() if r.get("token") == f"token={softhsm_token.label}")
    assert report == {"backend": "pkcs11", "module": softhsm_token.module,
                      "token": f"token={softhsm_token.label}", "ok": True,
                      "detail": "token present; session ok"}


def test_eight_threads_sign_through_one_key(keys: Keys) -> None:
    ec_key, rsa_key = keys[kms.KeySpec.EC_P256], keys[kms.KeySpec.RSA_2048]
    results: list[tuple[kms.CAKey, bytes, bytes]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(n: int) -> None:
        try:
            start.wait()
            for i in range(100):
                key = rsa_key if i % 10 == 0 else ec_key
                data = f"thread {n} message {i}".encode()
                results.append((key, data, _sign(key, data)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and len(results) == 800
    for key, data, signature in results:
        _verify(key.public_key(), signature, data)


def _in_child(fn: Callable[[], Any]) -> Any:
    """Run `fn` in a forked child (as gunicorn forks its workers); return what it returns."""
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()

    def run() -> None:
        try:
            child_end.send(fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the parent
            child_end.send(exc)

    child = ctx.Process(target=run)
    child.start()
    got = parent_end.recv() if parent_end.poll(60) else TimeoutError("the child sent nothing")
    child.join(30)
    if isinstance(got, BaseException):
        raise got
    assert child.exitcode == 0
    return got


def test_forked_child_signs_with_inherited_key(softhsm_token: SoftHSMToken) -> None:
    uri = softhsm_token.key_uri("forked")
    key = kms.create_key(uri, "EC-P256")
    _sign(key, DATA)  # the parent has a live session before the fork
    inherited, reopened = _in_child(lambda: (_sign(key, b"inherited"), _sign(kms.open_key(uri), b"reopened")))
    _verify(key.public_key(), inherited, b"inherited")
    _verify(key.public_key(), reopened, b"reopened")
    _verify(key.public_key(), _sign(key, DATA), DATA)  # the parent's session survived


def test_close_all_and_closed_backends(softhsm_token: SoftHSMToken) -> None:
    uri = softhsm_token.key_uri("k")
    key = kms.create_key(uri, "Ed25519")

    def close_all_in_child() -> tuple[str, bytes]:
        kms.close_all()  # in the child only: the parent's backends stay open
        try:
            _sign(key, DATA)
        except kms.BackendUnavailable as exc:
            refused = exc.reason
        return refused, _sign(kms.open_key(uri), DATA)  # a new backend after close_all

    refused, signature = _in_child(close_all_in_child)
    assert "closed" in refused
    _verify(key.public_key(), signature, DATA)

    _verify(key.public_key(), _sign(key, DATA), DATA)
    backend_for(uri).close()
    with pytest.raises(kms.BackendUnavailable, match="closed"):
        _sign(key, DATA)


# ---------------------------------------------------------------- softhsm/ helpers

def test_softhsm_helpers(tmp_path: Path) -> None:
    conf = softhsm.write_config(tmp_path / "hsm")
    assert softhsm.write_config(tmp_path / "hsm") == conf
    assert (conf.parent.stat().st_mode & 0o777) == 0o700
    assert (conf.parent / "tokens").is_dir()
    assert f"directories.tokendir = {(conf.parent / 'tokens').resolve()}" in conf.read_text()
    assert not softhsm.token_exists("helpers", conf)
    softhsm.init_token("helpers", "so-pin-1234", "user-pin-1234", conf=conf)
    assert softhsm.token_exists("helpers", conf) and softhsm.token_labels(conf) == ["helpers"]
    with pytest.raises(softhsm.TokenExists):
        softhsm.init_token("helpers", "so-pin-1234", "user-pin-1234", conf=conf)
    with pytest.raises(softhsm.SoftHSMError, match="4 to 255"):
        softhsm.init_token("other", "so", "user-pin-1234", conf=conf)
    softhsm.delete_token("helpers", conf)
    assert not softhsm.token_exists("helpers", conf)
    with pytest.raises(softhsm.SoftHSMError) as failed:
        softhsm.delete_token("helpers", conf)
    assert "so-pin-1234" not in str(failed.value)


def test_softhsm_missing_tool_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(softhsm.SoftHSMUnavailable, match="install the softhsm2 package"):
        softhsm.token_exists("x", softhsm.write_config(tmp_path / "hsm"))


def test_module_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(pkcs11_module.MODULE_ENV, raising=False)
    assert Path(pkcs11_module.module_path()).name == "libsofthsm2.so"
    monkeypatch.setenv(pkcs11_module.MODULE_ENV, "/opt/vendor/libvendor.so")
    assert pkcs11_module.module_path() == "/opt/vendor/libvendor.so"
    assert pkcs11_module.module_path("/explicit/lib.so") == "/explicit/lib.so"



def test_a_stopped_network_hsm_gives_503_in_time_and_issuance_resumes(
        softhsm_token_factory: Callable[[], SoftHSMToken], tmp_path: Path) -> None:
    """The intermediate key on a token behind p11-kit's RPC server (as on a network HSM): `hsmca serve` signs
    through p11-kit-client.so; the server is stopped (SIGSTOP: the PKCS#11 call blocks in C, the worst case)
    and continued while the CA keeps running."""
    from tests.integration import p11kit
    from tests.integration.conftest import init_with_intermediate_key, issue_through, start_server
    from tests.integration.signing import sign_bodies

    if why := p11kit.missing():
        pytest.fail(why)  # make deps installs p11-kit: missing, the install is broken
    token = softhsm_token_factory()
    server = p11kit.start(token, tmp_path)
    env = {"P11_KIT_SERVER_ADDRESS": server.address}
    try:
        uri = server.key_uri(token, "intermediate", "timeout=2")
        ca = init_with_intermediate_key(tmp_path / "ca", uri, env)
        running = start_server(ca, env=env, workers=1)
        try:
            issue_through(running, "before.internal", env)
            during, during_2 = sign_bodies(running, ["during.internal", "during-2.internal"])
            server.freeze()
            try:
                started = time.monotonic()
                down = running.post("/1.0/sign", json={"csr": "", "ott": ""})  # refused before any signing
                assert down.status_code == 400
                down = running.post("/1.0/sign", json=during)
                took = time.monotonic() - started
                started = time.monotonic()
                fast = running.post("/1.0/sign", json=during_2)
                fast_took = time.monotonic() - started
                sick = running.get("/health", timeout=30)
            finally:
                server.thaw()
            assert down.status_code == 503, down.text
            assert "signing backend unavailable" in down.json()["message"]
            assert f"token={token.label}" in down.json()["message"] and "within 2 s" in down.json()["message"]
            assert took < 6, f"the 503 took {took:.1f} s; the key URI's timeout is 2 s"
            assert fast.status_code == 503 and "not waiting behind it" in fast.json()["message"], fast.text
            assert fast_took < 1, fast_took
            assert sick.status_code == 503
            issue_through(running, "after.internal", env)  # the stuck call returned: no restart needed
            print(f"PKCS#11 (p11-kit) stopped: 503 after {took:.2f} s, next {fast_took * 1000:.0f} ms")
        finally:
            running.stop()
    finally:
        server.stop()

