"""The sshd harness (tests/integration/sshd.py) against real OpenSSH, with certificates made by `cryptography`.

A software user CA (Ed25519) and host CA (ECDSA P-256) sign the certificates; one sshd per module serves the
login tests, a second one (with RevokedKeys) the revocation tests. Every refusal is checked for its reason
(sshd's log or ssh's stderr), so a test cannot pass because of an unrelated misconfiguration.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import SSHCertificateBuilder, SSHCertificateType

from tests.integration import sshd

pytestmark = [pytest.mark.slow, pytest.mark.skipif(sshd.available() is not None, reason=str(sshd.available()))]

USER = "hsmca-alice"
# What `ssh-keygen -s` gives a user certificate by default; `echo ok` (no pty) would log in without any.
USER_EXTENSIONS = (b"permit-X11-forwarding", b"permit-agent-forwarding", b"permit-port-forwarding", b"permit-pty",
                   b"permit-user-rc")  # fmt: skip
HOUR = datetime.timedelta(hours=1)

CAKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def public_line(key: CAKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def fingerprint(key: CAKey) -> str:
    """OpenSSH's SHA256:… fingerprint, as sshd logs it."""
    blob = base64.b64decode(public_line(key).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def write_key(path: Path) -> ed25519.Ed25519PrivateKey:
    """A new Ed25519 key in OpenSSH format at `path` (0600) with its public half at `path`.pub."""
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    path.touch(mode=0o600)
    path.write_bytes(pem)
    path.with_name(path.name + ".pub").write_text(public_line(key) + "\n")
    return key


def write_certificate(
    path: Path,
    key: ed25519.Ed25519PrivateKey,
    ca: CAKey,
    cert_type: SSHCertificateType,
    principals: list[str],
    serial: int = 1,
    valid_from: datetime.timedelta = -datetime.timedelta(minutes=5),
    valid_for: datetime.timedelta = HOUR,
) -> Path:
    """Sign `key` with `ca`, valid from now + `valid_from` for `valid_for`; write the certificate line to `path`."""
    start = datetime.datetime.now(datetime.timezone.utc) + valid_from
    builder = (
        SSHCertificateBuilder()
        .public_key(key.public_key())
        .serial(serial)
        .type(cert_type)
        .key_id(f"{principals[0] if principals else 'any'}-{serial}".encode())
        .valid_after(int(start.timestamp()))
        .valid_before(int((start + valid_for).timestamp()))
    )
    # An empty principal list (valid for every name) has to be asked for explicitly in cryptography.
    if principals:
        builder = builder.valid_principals([p.encode() for p in principals])
    else:
        builder = builder.valid_for_all_principals()
    if cert_type == SSHCertificateType.USER:
        for extension in USER_EXTENSIONS:
            builder = builder.add_extension(extension, b"")
    path.write_bytes(builder.sign(ca).public_bytes() + b"\n")
    return path


@dataclass
class PKI:
    dir: Path
    user_ca: ed25519.Ed25519PrivateKey
    host_ca: ec.EllipticCurvePrivateKey
    other_ca: ed25519.Ed25519PrivateKey
    user_ca_keys: Path  # for TrustedUserCAKeys
    host_key_path: Path
    host_key: ed25519.Ed25519PrivateKey
    user_key_path: Path
    user_key: ed25519.Ed25519PrivateKey

    def user_certificate(
        self,
        name: str,
        principals: list[str],
        ca: CAKey | None = None,
        serial: int = 1,
        valid_from: datetime.timedelta = -datetime.timedelta(minutes=5),
        valid_for: datetime.timedelta = HOUR,
    ) -> Path:
        return write_certificate(self.dir / f"{name}-cert.pub", self.user_key, ca or self.user_ca,
                                 SSHCertificateType.USER, principals, serial, valid_from, valid_for)  # fmt: skip

    def host_certificate(self, name: str, principals: list[str], ca: CAKey | None = None) -> Path:
        return write_certificate(self.dir / f"{name}-cert.pub", self.host_key, ca or self.host_ca,
                                 SSHCertificateType.HOST, principals)  # fmt: skip

    def known_hosts(self, port: int) -> Path:
        """A known_hosts holding only the host CA's @cert-authority line for this port."""
        path = self.dir / f"known_hosts-{port}"
        path.write_text(sshd.known_hosts_line(port, public_line(self.host_ca)) + "\n")
        return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    d = tmp_path_factory.mktemp("ssh-pki")
    user_ca = ed25519.Ed25519PrivateKey.generate()
    user_ca_keys = d / "user_ca_keys.pub"
    user_ca_keys.write_text(public_line(user_ca) + "\n")
    sshd.ensure_user(USER)
    return PKI(
        dir=d,
        user_ca=user_ca,
        host_ca=ec.generate_private_key(ec.SECP256R1()),
        other_ca=ed25519.Ed25519PrivateKey.generate(),
        user_ca_keys=user_ca_keys,
        host_key_path=d / "ssh_host_ed25519_key",
        host_key=write_key(d / "ssh_host_ed25519_key"),
        user_key_path=d / "id_ed25519",
        user_key=write_key(d / "id_ed25519"),
    )


@pytest.fixture(scope="module")
def server(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sshd.Sshd]:
    with sshd.start_sshd(
        tmp_path_factory.mktemp("sshd"),
        host_key=pki.host_key_path,
        host_certificate=pki.host_certificate("host", ["127.0.0.1"]),
        trusted_user_ca_keys=pki.user_ca_keys,
    ) as running:
        yield running


def login(
    server: sshd.Sshd, pki: PKI, certificate: Path | None, command: str = "echo ok"
) -> tuple[subprocess.CompletedProcess[str], str]:
    """ssh into `server` as USER; the client's result and what sshd logged meanwhile."""
    before = len(server.log())
    done = sshd.ssh(server.port, USER, pki.user_key_path, certificate, pki.known_hosts(server.port), command)
    return done, server.log()[before:]


def assert_logged_in(done: subprocess.CompletedProcess[str], log: str) -> None:
    assert done.returncode == 0, (done, log)
    assert done.stdout == "ok\n"
    assert f"Accepted publickey for {USER} from 127.0.0.1" in log


def assert_refused(done: subprocess.CompletedProcess[str], log: str) -> None:
    assert done.returncode == 255, (done, log)
    assert f"{USER}@127.0.0.1: Permission denied (publickey)." in done.stderr
    assert done.stdout == ""
    assert "Accepted publickey" not in log


def assert_host_refused(done: subprocess.CompletedProcess[str], log: str) -> None:
    assert done.returncode == 255, (done, log)
    assert "Host key verification failed." in done.stderr
    assert done.stdout == ""
    assert "Accepted publickey" not in log


def test_user_certificate_logs_in_and_host_certificate_is_trusted(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("alice", [USER], serial=11))
    assert_logged_in(done, log)
    # The client checked the server's host certificate against the CA line (known_hosts has nothing else) ...
    assert f"Host '[127.0.0.1]:{server.port}' is known and matches the ED25519-CERT host certificate." in done.stderr
    # ... and sshd let the user in by the certificate (AuthorizedKeysFile is none).
    certificate = f"ED25519-CERT {fingerprint(pki.user_key)} ID {USER}-11 (serial 11)"
    assert f"{certificate} CA ED25519 {fingerprint(pki.user_ca)}" in log


def test_command_runs_as_the_user(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("alice-id", [USER]), "id -un; echo $HOME")
    assert done.returncode == 0, (done, log)
    assert done.stdout.split() == [USER, f"/home/{USER}"]


def test_certificate_from_another_ca_is_refused(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("alice-other-ca", [USER], ca=pki.other_ca))
    assert_refused(done, log)
    # sshd says why only at debug2 ("CA … is not listed in …"); its failure line names the CA.
    assert f"Failed publickey for {USER} from 127.0.0.1" in log
    assert f"CA ED25519 {fingerprint(pki.other_ca)}" in log


def test_certificate_for_another_principal_is_refused(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("bob", ["hsmca-bob"]))
    assert_refused(done, log)
    assert "Certificate invalid: name is not a listed principal" in log


def test_certificate_without_principals_is_refused(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("alice-any", []))
    assert_refused(done, log)
    assert "Certificate lacks principal list" in log


def test_expired_certificate_is_refused(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("alice-expired", [USER], valid_from=-2 * HOUR))
    assert_refused(done, log)
    assert "Certificate invalid: expired" in log


def test_certificate_not_yet_valid_is_refused(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, pki.user_certificate("alice-future", [USER], valid_from=HOUR))
    assert_refused(done, log)
    assert "Certificate invalid: not yet valid" in log


def test_plain_key_is_refused(server: sshd.Sshd, pki: PKI) -> None:
    done, log = login(server, pki, None)
    assert_refused(done, log)
    assert f"Failed publickey for {USER} from 127.0.0.1 port" in log


def test_host_certificate_from_another_ca_is_refused(pki: PKI, tmp_path: Path) -> None:
    with sshd.start_sshd(
        tmp_path / "sshd",
        host_key=pki.host_key_path,
        host_certificate=pki.host_certificate("host-other-ca", ["127.0.0.1"], ca=pki.other_ca),
        trusted_user_ca_keys=pki.user_ca_keys,
    ) as other:
        done, log = login(other, pki, pki.user_certificate("alice-2", [USER]))
    assert_host_refused(done, log)
    assert f"No ED25519 host key is known for [127.0.0.1]:{other.port}" in done.stderr


@pytest.mark.parametrize(
    ("principals", "accepted"),
    [
        (["localhost"], False),
        (["[127.0.0.1]:PORT"], False),  # the name ssh matches is the host alone, without brackets or port
        (["127.0.0.*"], False),  # no wildcards in host principals
        (["example.org", "127.0.0.1"], True),
        ([], True),  # no principals: valid for every host (ssh does not require a principal list on host certs)
    ],
)
def test_host_certificate_principal(pki: PKI, tmp_path: Path, principals: list[str], accepted: bool) -> None:
    with sshd.start_sshd(
        tmp_path / "sshd",
        host_key=pki.host_key_path,
        host_certificate=pki.host_certificate("host-principal", principals),
        trusted_user_ca_keys=pki.user_ca_keys,
    ) as other:
        done, log = login(other, pki, pki.user_certificate("alice-3", [USER]))
    if accepted:
        assert_logged_in(done, log)
    else:
        assert_host_refused(done, log)
        assert "Certificate invalid: name is not a listed principal" in done.stderr


@pytest.fixture(scope="module")
def revoking(pki: PKI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[sshd.Sshd, Path]]:
    """An sshd with RevokedKeys, and that file (sshd reads it at each authentication, so tests rewrite it)."""
    workdir = tmp_path_factory.mktemp("sshd-revoking")
    revoked = workdir / "revoked_keys"
    revoked.write_text("")
    with sshd.start_sshd(
        workdir,
        host_key=pki.host_key_path,
        host_certificate=pki.host_certificate("host-r", ["127.0.0.1"]),
        trusted_user_ca_keys=pki.user_ca_keys,
        revoked_keys=revoked,
    ) as running:
        yield running, revoked


def write_krl(path: Path, ca: CAKey, spec: str) -> None:
    """A binary KRL (ssh-keygen -k) revoking what `spec` lists for certificates signed by `ca`."""
    ca_file, spec_file = path.with_suffix(".ca.pub"), path.with_suffix(".spec")
    ca_file.write_text(public_line(ca) + "\n")
    spec_file.write_text(spec)
    path.unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-k", "-f", str(path), "-s", str(ca_file), str(spec_file)], check=True)


def test_revoked_keys_empty_file_revokes_nothing(revoking: tuple[sshd.Sshd, Path], pki: PKI) -> None:
    server, revoked = revoking
    revoked.write_text("")
    done, log = login(server, pki, pki.user_certificate("alice-r0", [USER]))
    assert_logged_in(done, log)


@pytest.mark.parametrize(
    "what",
    ["krl serial", "krl key id", "plain key", "plain ca key", "missing file", "garbage"],
)
def test_revoked_keys(revoking: tuple[sshd.Sshd, Path], pki: PKI, what: str) -> None:
    server, revoked = revoking
    cert = pki.user_certificate("alice-r", [USER], serial=7)
    if what == "krl serial":
        write_krl(revoked, pki.user_ca, "serial: 7\n")
    elif what == "krl key id":
        write_krl(revoked, pki.user_ca, f"id: {USER}-7\n")
    elif what == "plain key":  # a plain public key revokes the key and every certificate of it
        revoked.write_text(public_line(pki.user_key) + "\n")
    elif what == "plain ca key":  # a CA key revokes every certificate it signed
        revoked.write_text(public_line(pki.user_ca) + "\n")
    elif what == "missing file":
        revoked.unlink(missing_ok=True)
    else:
        revoked.write_text("not a key\n")
    done, log = login(server, pki, cert)
    assert_refused(done, log)
    if what in ("missing file", "garbage"):  # an unreadable file fails closed
        assert f"in revoked keys file {revoked}" in log
    else:
        assert f"revoked by file {revoked}" in log


def test_revoked_keys_krl_spares_other_serials(revoking: tuple[sshd.Sshd, Path], pki: PKI) -> None:
    server, revoked = revoking
    write_krl(revoked, pki.user_ca, "serial: 7\n")
    done, log = login(server, pki, pki.user_certificate("alice-r8", [USER], serial=8))
    assert_logged_in(done, log)
