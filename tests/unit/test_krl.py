"""OpenSSH KRLs checked by the real `ssh-keygen -Q`, against certificates signed with cryptography."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa, x25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    SSHCertificateBuilder,
    SSHCertificateType,
)

from appliance.status.krl import build_krl, ssh_key_blob

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
BIG = 2**63 + 5
SSH_KEYGEN = shutil.which("ssh-keygen")

CAKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
Issue = Callable[[CAKey, int], Path]


@pytest.fixture(scope="module")
def keygen() -> str:
    """The ssh-keygen binary; the KRL tests are worthless without the real parser, so they skip loudly."""
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen is not on PATH: install openssh-client (`make image-deps` installs it, `make deps` "
                    "does not)")
    return SSH_KEYGEN


@pytest.fixture(scope="module")
def ca_a() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def ca_b() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def issue(tmp_path_factory: pytest.TempPathFactory) -> Issue:
    """Sign a user certificate for one user key with the given CA and serial; return its -cert.pub file."""
    directory = tmp_path_factory.mktemp("certs")
    user = ed25519.Ed25519PrivateKey.generate().public_key()
    made: dict[tuple[bytes, int], Path] = {}

    def make(ca: CAKey, serial: int) -> Path:
        blob = ssh_key_blob(ca.public_key())
        if (blob, serial) not in made:
            cert = (SSHCertificateBuilder().public_key(user).serial(serial).type(SSHCertificateType.USER)
                    .key_id(b"alice@test").valid_principals([b"alice"])
                    .valid_after(int((NOW - timedelta(hours=1)).timestamp()))
                    .valid_before(int((NOW + timedelta(hours=8)).timestamp())).sign(ca))
            path = directory / f"{len(made)}-serial{serial}-cert.pub"
            path.write_bytes(cert.public_bytes() + b"\n")
            made[(blob, serial)] = path
        return made[(blob, serial)]

    return make


def write_krl(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "krl.bin"
    path.write_bytes(data)
    return path


def is_revoked(keygen: str, krl: Path, cert: Path) -> bool:
    """`ssh-keygen -Q`: exit 0 and "ok" = not revoked, non-zero and "REVOKED" = revoked, anything else fails."""
    run = subprocess.run([keygen, "-Q", "-f", str(krl), str(cert)], capture_output=True, text=True, timeout=30)
    output = run.stdout + run.stderr
    if run.returncode == 0 and ": ok" in output:
        return False
    if run.returncode != 0 and "REVOKED" in output:
        return True
    pytest.fail(f"ssh-keygen -Q exited {run.returncode}: {output}")


def listing(keygen: str, krl: Path) -> str:
    """`ssh-keygen -Q -l`: OpenSSH's dump of a KRL (dates in the TZ given), which must load without error."""
    run = subprocess.run([keygen, "-Q", "-l", "-f", str(krl)], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "TZ": "UTC"})
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def krl(revoked: dict[bytes, list[int]] | None = None, **kwargs: object) -> bytes:
    args: dict[str, object] = {"version": 1, "generated_at": NOW, **kwargs}
    return build_krl(revoked or {}, **args)  # type: ignore[arg-type]


def test_revokes_listed_serials_only(keygen: str, tmp_path: Path, issue: Issue,
                                     ca_a: ed25519.Ed25519PrivateKey) -> None:
    path = write_krl(tmp_path, krl({ssh_key_blob(ca_a.public_key()): [1, 3, BIG]}))
    results = {serial: is_revoked(keygen, path, issue(ca_a, serial)) for serial in (1, 2, 3, 7, BIG, BIG - 1)}
    assert results == {1: True, 2: False, 3: True, 7: False, BIG: True, BIG - 1: False}


def test_same_serial_from_another_ca_is_not_revoked(keygen: str, tmp_path: Path, issue: Issue,
                                                    ca_a: ed25519.Ed25519PrivateKey,
                                                    ca_b: ec.EllipticCurvePrivateKey) -> None:
    path = write_krl(tmp_path, krl({ssh_key_blob(ca_a.public_key()): [1, 2, 3, 7, BIG]}))
    assert is_revoked(keygen, path, issue(ca_a, 7))
    for serial in (1, 2, 3, 7, BIG):
        assert not is_revoked(keygen, path, issue(ca_b, serial))


def test_empty_krl_revokes_nothing(keygen: str, tmp_path: Path, issue: Issue, ca_a: ed25519.Ed25519PrivateKey) -> None:
    empty = krl()
    assert krl({ssh_key_blob(ca_a.public_key()): []}) == empty  # a CA with nothing revoked adds no section
    path = write_krl(tmp_path, empty)
    for serial in (1, 2, 3, 7, BIG):
        assert not is_revoked(keygen, path, issue(ca_a, serial))
    assert "serial" not in listing(keygen, path)


def test_two_cas_in_one_krl(keygen: str, tmp_path: Path, issue: Issue, ca_a: ed25519.Ed25519PrivateKey,
                            ca_b: ec.EllipticCurvePrivateKey) -> None:
    path = write_krl(tmp_path, krl({ssh_key_blob(ca_a.public_key()): [1, 2], ssh_key_blob(ca_b.public_key()): [7]}))
    got = {(name, serial): is_revoked(keygen, path, issue(ca, serial))
           for name, ca in (("a", ca_a), ("b", ca_b)) for serial in (1, 2, 7)}
    assert got == {("a", 1): True, ("a", 2): True, ("a", 7): False,
                   ("b", 1): False, ("b", 2): False, ("b", 7): True}
    text = listing(keygen, path)
    assert text.count("# CA key ") == 2
    assert "# CA key ssh-ed25519 " in text and "# CA key ecdsa-sha2-nistp256 " in text


def test_ranges_revoke_exactly_the_range(keygen: str, tmp_path: Path, issue: Issue,
                                         ca_a: ed25519.Ed25519PrivateKey) -> None:
    top = 2**64 - 1
    revoked = [2, 3, 4, 5, 6, 9, 10, 20, top - 2, top - 1, top]
    data = krl({ssh_key_blob(ca_a.public_key()): revoked})
    # runs of three or more are range subsections; 9, 10 and 20 stay in the serial list
    assert b"\x21" + struct.pack(">IQQ", 16, 2, 6) in data
    assert b"\x21" + struct.pack(">IQQ", 16, top - 2, top) in data
    assert b"\x20" + struct.pack(">IQQQ", 24, 9, 10, 20) in data
    path = write_krl(tmp_path, data)
    probes = [1, 2, 3, 6, 7, 8, 9, 10, 11, 19, 20, 21, top - 3, top - 2, top]
    assert {s: is_revoked(keygen, path, issue(ca_a, s)) for s in probes} == {s: s in revoked for s in probes}
    text = listing(keygen, path)
    for line in ("serial: 2-6", "serial: 9-10", "serial: 20", f"serial: {top - 2}-{top}"):
        assert line + "\n" in text


@pytest.mark.parametrize("make", [
    ed25519.Ed25519PrivateKey.generate,
    lambda: ec.generate_private_key(ec.SECP256R1()),
    lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: ec.generate_private_key(ec.SECP521R1()),
    lambda: rsa.generate_private_key(65537, 2048),
], ids=["ed25519", "p256", "p384", "p521", "rsa"])
def test_every_ca_key_type(make: Callable[[], CAKey], keygen: str, tmp_path: Path, issue: Issue) -> None:
    ca = make()
    blob = ssh_key_blob(ca.public_key())
    line = ca.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH)
    assert base64.b64encode(blob) == line.split()[1]
    path = write_krl(tmp_path, krl({blob: [5]}))
    assert is_revoked(keygen, path, issue(ca, 5))
    assert not is_revoked(keygen, path, issue(ca, 6))
    (tmp_path / "ca.pub").write_bytes(line + b"\n")
    fingerprint = subprocess.run([keygen, "-l", "-f", str(tmp_path / "ca.pub")], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()[1]
    assert f"# CA key {line.split()[0].decode()} {fingerprint}\nserial: 5\n" in listing(keygen, path)


def test_header_and_listing(keygen: str, tmp_path: Path, ca_a: ed25519.Ed25519PrivateKey) -> None:
    at = datetime(2026, 1, 2, 4, 4, 5, 999_999, tzinfo=timezone(timedelta(hours=1)))
    data = krl({ssh_key_blob(ca_a.public_key()): [1]}, version=42, generated_at=at, comment="hsmca user CA ✓")
    comment = "hsmca user CA ✓".encode()
    assert data.startswith(b"SSHKRL\n\x00" + struct.pack(">IQQQI", 1, 42, int(at.timestamp()), 0, 0)
                           + struct.pack(">I", len(comment)) + comment + b"\x01")
    text = listing(keygen, write_krl(tmp_path, data))
    assert "# KRL version 42\n" in text
    assert "# Generated at 20260102T030405\n" in text
    assert "# Comment: hsmca user CA" in text


def test_deterministic(ca_a: ed25519.Ed25519PrivateKey, ca_b: ec.EllipticCurvePrivateKey) -> None:
    a, b = ssh_key_blob(ca_a.public_key()), ssh_key_blob(ca_b.public_key())
    first = build_krl({a: [1, 3, BIG, 2], b: [7]}, version=3, generated_at=NOW)
    again = build_krl({b: iter([7, 7]), a: (s for s in [BIG, 3, 2, 1, 3])}, version=3, generated_at=NOW)
    assert first == again
    assert build_krl({a: [1]}, version=4, generated_at=NOW) != build_krl({a: [1]}, version=3, generated_at=NOW)


@pytest.mark.parametrize(("revoked", "kwargs", "error", "message"), [
    ({"A": [0]}, {}, ValueError, "serial 0 cannot be revoked by serial"),
    ({"A": [1, 0]}, {}, ValueError, "serial 0"),
    ({"A": [2**64]}, {}, ValueError, "outside 1..2**64-1"),
    ({"A": [-1]}, {}, ValueError, "outside 1..2**64-1"),
    ({"A": [True]}, {}, TypeError, "serial must be an int"),
    ({"A": ["1"]}, {}, TypeError, "serial must be an int"),
    ({b"": [1]}, {}, ValueError, "must not be empty"),
    ({"str": [1]}, {}, TypeError, "must be bytes"),
    ({b"\x00\x00": [1]}, {}, ValueError, "not an SSH public key blob"),
    ({b"\x00\x00\x00\x07ssh-dss": [1]}, {}, ValueError, "not a CA key type"),
    ({"cert": [1]}, {}, ValueError, "not a CA key type"),
    ({"truncated": [1]}, {}, ValueError, "does not parse"),
    ({"trailing": [1]}, {}, ValueError, "does not parse"),
    ({}, {"version": -1}, ValueError, "KRL version -1 does not fit a uint64"),
    ({}, {"version": 2**64}, ValueError, "does not fit a uint64"),
    ({}, {"generated_at": datetime(2026, 1, 1)}, ValueError, "timezone-aware"),
    ({}, {"generated_at": datetime(1969, 12, 31, tzinfo=UTC)}, ValueError, "before 1970"),
    ({}, {"comment": "a\x00b"}, ValueError, "NUL"),
])
def test_bad_inputs(revoked: dict[object, list[object]], kwargs: dict[str, object], error: type[Exception],
                    message: str, ca_a: ed25519.Ed25519PrivateKey) -> None:
    good = ssh_key_blob(ca_a.public_key())
    cert = (SSHCertificateBuilder().public_key(ca_a.public_key()).serial(1).type(SSHCertificateType.USER)
            .key_id(b"x").valid_for_all_principals().valid_after(0).valid_before(2**64 - 1).sign(ca_a))
    blobs: dict[object, object] = {"A": good, "str": good.hex(), "truncated": good[:-1], "trailing": good + b"\x00",
                                   "cert": base64.b64decode(cert.public_bytes().split()[1])}
    mapping = {blobs.get(key, key): serials for key, serials in revoked.items()}
    with pytest.raises(error, match=message.replace("*", r"\*").replace(".", r"\.")):
        build_krl(mapping, **{"version": 1, "generated_at": NOW, **kwargs})  # type: ignore[arg-type]


def test_ssh_key_blob_refuses_non_ca_keys() -> None:
    with pytest.raises(TypeError, match="not an SSH CA public key"):
        ssh_key_blob(x25519.X25519PrivateKey.generate().public_key())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not an SSH CA public key"):
        ssh_key_blob(dsa.generate_private_key(2048).public_key())  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ssh_key_blob(ec.generate_private_key(ec.SECP256K1()).public_key())
