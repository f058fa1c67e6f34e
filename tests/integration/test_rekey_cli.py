"""`hsmca rekey` against a real `hsmca serve`: over mTLS and with --bearer, and refused for a revoked certificate.

Real SoftHSM keys, real SQLite, the command run as a user runs it. The new pair must be a pair (the
certificate's key is the key file's), name exactly what the old certificate named, and chain to the
root with `openssl verify`; a refusal must leave the files as they were.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.ra.pipeline import STEPS
from tests.integration.conftest import DevCA, Server, free_port, hsmca, openssl_verify_chain


@pytest.fixture(scope="module")
def ca(short_lived_ca: DevCA) -> DevCA:
    return short_lived_ca


@pytest.fixture(scope="module")
def served(short_lived_server: Server) -> Server:
    return short_lived_server


def issue(server: Server, name: str) -> tuple[Path, Path]:
    ca = server.ca
    directory = ca.base / name
    directory.mkdir()
    crt, key = directory / "svc.crt", directory / "svc.key"
    hsmca(ca, "certificate", name, str(crt), str(key), "--san", f"alt.{name}", "--ca-url", server.url,
          "--root", str(ca.root), "--password-file", str(ca.password_file), "--force")
    return crt, key


def rekey(server: Server, crt: Path, key: Path, *args: str, check: bool = True) -> Any:
    return hsmca(server.ca, "rekey", str(crt), str(key), "--ca-url", server.url, "--root", str(server.ca.root),
                 *args, check=check)


def leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def names(cert: x509.Certificate) -> set[x509.GeneralName]:
    return set(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def private_key(path: Path) -> Any:
    return serialization.load_pem_private_key(path.read_bytes(), None)


def assert_rekeyed(old: x509.Certificate, old_key: Any, crt: Path, key: Path, root: Path) -> x509.Certificate:
    new = leaf(crt)
    assert new.serial_number != old.serial_number
    assert new.subject == old.subject and names(new) == names(old)
    assert new.public_key() == private_key(key).public_key() != old_key.public_key()
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(x509.load_pem_x509_certificates(crt.read_bytes())) == 2  # leaf, then intermediate
    assert ": OK" in openssl_verify_chain(root, crt)  # -CAfile root -untrusted crt crt
    assert not list(crt.parent.glob("*.new")) and not list(crt.parent.glob(".*"))  # nothing staged is left
    return new


def test_rekey_over_mtls_replaces_both_files_in_place(served: Server):
    crt, key = issue(served, "mtls.corp")
    old, old_key = leaf(crt), private_key(key)
    done = rekey(served, crt, key, "--exec", f"touch {crt.parent / 'hook-ran'}")
    assert f"certificate has been saved in {crt}" in done.stderr and f"key has been saved in {key}" in done.stderr
    new = assert_rekeyed(old, old_key, crt, key, served.ca.root)
    assert isinstance(private_key(key), ec.EllipticCurvePrivateKey) and private_key(key).curve.name == "secp256r1"
    assert (crt.parent / "hook-ran").exists()
    events = [e for e in served.ca.audit_events() if e["action"] == "x509.rekey" and e["decision"] == "allowed"]
    assert events[-1]["details"] == {**events[-1]["details"], "renewed": str(old.serial_number), "via": "mtls"}
    assert events[-1]["serial"] == str(new.serial_number) and events[-1]["details"]["steps"] == list(STEPS)
    # The new pair is a credential in its turn.
    hsmca(served.ca, "renew", str(crt), str(key), "--ca-url", served.url, "--root", str(served.ca.root), "--force")
    assert leaf(crt).serial_number != new.serial_number and leaf(crt).public_key() == new.public_key()


def test_rekey_with_a_bearer_token_to_new_files_with_another_key_type(served: Server):
    crt, key = issue(served, "bearer.corp")
    before = crt.read_bytes(), key.read_bytes()
    old, old_key = leaf(crt), private_key(key)
    out_crt, out_key = crt.parent / "next.crt", crt.parent / "next.key"
    rekey(served, crt, key, "--bearer", "--kty", "RSA", "--size", "2048",
          "--out-cert", str(out_crt), "--out-key", str(out_key))
    assert (crt.read_bytes(), key.read_bytes()) == before  # --out-*: the old pair is left alone
    assert_rekeyed(old, old_key, out_crt, out_key, served.ca.root)
    assert isinstance(private_key(out_key), rsa.RSAPrivateKey) and private_key(out_key).key_size == 2048
    events = [e for e in served.ca.audit_events() if e["action"] == "x509.rekey"]
    assert events[-1]["decision"] == "allowed" and events[-1]["details"]["via"] == "x5c-token"

    again = rekey(served, crt, key, "--out-cert", str(out_crt), "--out-key", str(out_key), check=False)
    assert again.returncode == 1 and "exists; use --force" in again.stderr


def test_a_revoked_certificate_cannot_rekey_and_its_files_are_untouched(served: Server):
    crt, key = issue(served, "revoked.corp")
    hsmca(served.ca, "revoke", "--cert", str(crt), "--key", str(key), "--reason-code", "1",
          "--ca-url", served.url, "--root", str(served.ca.root))
    before = sorted(p.name for p in crt.parent.iterdir()), crt.read_bytes(), key.read_bytes()
    for extra in ((), ("--bearer",)):
        done = rekey(served, crt, key, *extra, check=False)
        assert done.returncode == 1, done.stderr
        assert "error: the CA refused POST /rekey (401)" in done.stderr and "was revoked" in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert (sorted(p.name for p in crt.parent.iterdir()), crt.read_bytes(), key.read_bytes()) == before


def test_an_unreachable_ca_is_said_plainly_and_changes_nothing(served: Server):
    crt, key = issue(served, "offline.corp")
    before = sorted(p.name for p in crt.parent.iterdir()), crt.read_bytes(), key.read_bytes()
    done = hsmca(served.ca, "rekey", str(crt), str(key), "--ca-url", f"https://localhost:{free_port()}",
                 "--root", str(served.ca.root), check=False)
    assert done.returncode == 1 and "error: cannot reach the CA at https://localhost:" in done.stderr
    assert (sorted(p.name for p in crt.parent.iterdir()), crt.read_bytes(), key.read_bytes()) == before


def test_a_key_that_is_not_the_certificates_is_refused_before_asking(served: Server):
    crt, _ = issue(served, "mismatch.corp")
    _, other = issue(served, "other.corp")
    done = rekey(served, crt, other, check=False)
    assert done.returncode == 1 and f"{other} does not hold the key of the certificate in {crt}" in done.stderr
