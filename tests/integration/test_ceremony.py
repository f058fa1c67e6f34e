"""The offline ceremony for real: SoftHSM, `hsmca ceremony` in a network namespace with no network,
3-of-5 SLIP-39 shares, the appliance's CSR, the auditor's verify, and what tampering it catches;
then the appliance rotating intermediates while serving, checked with openssl against the root only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding

import softhsm
from appliance.cli.devca import InitOptions, init_ca
from appliance.store import Store
from tests.integration.conftest import (
    HSMCA,
    PASSWORD,
    REPO,
    DevCA,
    Server,
    hsmca,
    openssl_verify_chain,
    start_server,
)

CUSTODIANS = ["alice", "bob", "carol", "dave", "erin"]


def _can_unshare() -> str | None:
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if done.returncode == 0 else done.stderr.strip()


_UNSHARE_PROBLEM = _can_unshare()
pytestmark = pytest.mark.skipif(_UNSHARE_PROBLEM is not None,
                                reason=f"cannot make a network namespace here: {_UNSHARE_PROBLEM}")


def root_plan(token: str, key_type: str = "EC-P384", n: str = "", out: str = "out") -> str:
    return f"""\
ceremony: root
name: Test root ceremony
hsm:
  module: {softhsm.DEFAULT_MODULE}
  token: {token}
custodians: [{", ".join(CUSTODIANS)}]
quorum: {{threshold: 3, shares: 5}}
key: {{label: root-key{n}, type: {key_type}}}
certificate:
  subject: "CN=Test Root CA{n},O=hsmca tests"
  lifetime_days: 3650
outputs: {{directory: {out}, certificate: root_ca.crt, transcript: transcript.jsonl}}
"""


def intermediate_plan(token: str, n: int, root: str = "", out: str = "out") -> str:
    return f"""\
ceremony: intermediate
name: Test intermediate {n}
hsm:
  module: {softhsm.DEFAULT_MODULE}
  token: {token}
custodians: [{", ".join(CUSTODIANS)}]
quorum: {{threshold: 3, shares: 5}}
root: {{key_label: root-key{root}, certificate: {out}/root_ca.crt}}
certificate:
  subject: "CN=Test Issuing CA {n},O=hsmca tests"
  lifetime_days: 365
  name_constraints:
    permitted: {{dns: [localhost, internal], ip: [127.0.0.0/8, 10.0.0.0/8]}}
  crl_urls: [http://pki.internal/root.crl]
  ca_issuers_urls: [http://pki.internal/root.crt]
outputs: {{directory: {out}, certificate: int{n}.crt, transcript: transcript.jsonl}}
"""


def cross_plan(token: str) -> str:
    """The old root (on `token`) cross-signs the new one; recorded in the old root's transcript."""
    return f"""\
ceremony: cross-sign
name: Root rollover, cross-certificate
hsm:
  module: {softhsm.DEFAULT_MODULE}
  token: {token}
custodians: [{", ".join(CUSTODIANS)}]
quorum: {{threshold: 3, shares: 5}}
root: {{key_label: root-key, certificate: out/root_ca.crt}}
certificate:
  lifetime_days: 1000
outputs: {{directory: out, certificate: cross.crt, transcript: transcript.jsonl}}
"""


@dataclass
class Offline:
    """The air-gapped machine: its own SoftHSM token store, plans, shares and outputs."""

    dir: Path
    conf: Path
    token: str

    @property
    def out(self) -> Path:
        return self.dir / "out"

    @property
    def shares(self) -> Path:
        return self.dir / "shares"

    def run(self, *args: str, network: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`hsmca ceremony ...` inside `unshare -n` (a namespace with only a loopback, which is down)."""
        prefix = [] if network else ["unshare", "-n"]
        return subprocess.run([*prefix, HSMCA, "ceremony", *args], cwd=self.dir, capture_output=True, text=True,
                              env={**os.environ, "SOFTHSM2_CONF": str(self.conf)}, input=input, timeout=300)

    def token_state(self) -> str:
        """A digest of every file of every token: a changed object, PIN or counter changes it."""
        h = hashlib.sha256()
        for path in sorted((self.conf.parent / "tokens").rglob("*")):
            if path.is_file():
                h.update(str(path).encode() + path.read_bytes())
        return h.hexdigest()


@dataclass
class PKI:
    offline: Offline
    ca: DevCA


def _ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def offline(tmp_path_factory: pytest.TempPathFactory) -> Offline:
    d = tmp_path_factory.mktemp("offline")
    conf = softhsm.write_config(d / "hsm")
    o = Offline(d, conf, "corp-root")
    (d / "root.yaml").write_text(root_plan(o.token))
    (d / "int1.yaml").write_text(intermediate_plan(o.token, 1))
    (d / "int2.yaml").write_text(intermediate_plan(o.token, 2))
    return o


@pytest.fixture(scope="module")
def pki(offline: Offline, tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """The root ceremony offline, then an appliance that trusts its root and has its first CSR."""
    done = _ok(offline.run("root", "--plan", "root.yaml", "--share-output", "shares"))
    assert "Transcript:" in done.stdout and "(sealed)" in done.stdout
    base = tmp_path_factory.mktemp("appliance")
    (base / "password.txt").write_bytes(PASSWORD + b"\n")
    label = f"app-{os.urandom(3).hex()}"
    result = init_ca(InitOptions(base=base, password=PASSWORD, token_label=label,
                                 root_certificate=(offline.out / "root_ca.crt").read_bytes()))
    ca = DevCA(base, result.config_path, base / "password.txt", label)
    hsmca(ca, "intermediate", "csr", "--key", f"pkcs11:token={label};object=intermediate-1",
          "--subject", "CN=Test Issuing CA 1,O=hsmca tests", "--out", str(offline.dir / "int1.csr"))
    return PKI(offline, ca)


def test_plan_check_validates_without_an_hsm(offline: Offline) -> None:
    done = _ok(offline.run("plan", "--check", "root.yaml"))
    assert "quorum 3 of 5" in done.stdout and "plan OK" in done.stdout
    bad = offline.dir / "bad.yaml"
    bad.write_text(root_plan("x").replace("EC-P384", "DSA-1024").replace("lifetime_days: 3650", "lifetime_days: -1"))
    done = offline.run("plan", "--check", "bad.yaml")
    assert done.returncode == 1 and "has 2 problem(s)" in done.stderr
    assert "key.type: Input should be 'EC-P256', 'EC-P384', 'RSA-3072' or 'RSA-4096'" in done.stderr
    assert "certificate.lifetime_days: Input should be greater than or equal to 1" in done.stderr
    bad.write_text(root_plan("x").replace("threshold: 3, shares: 5", "threshold: 3, shares: 4"))
    done = offline.run("plan", "--check", "bad.yaml")
    assert done.returncode == 1 and "quorum.shares is 4 but 5 custodians are listed" in done.stderr


def test_refuses_to_run_with_the_network_up(offline: Offline) -> None:
    from ceremony.network import interfaces_up

    if not interfaces_up():
        pytest.skip("this machine has no interface up but loopback: nothing to refuse")
    before = offline.token_state()
    done = offline.run("root", "--plan", "root.yaml", "--share-output", "net-shares", network=True)
    assert done.returncode == 1 and "network interface(s) up" in done.stderr and "--allow-network" in done.stderr
    assert not (offline.dir / "net-shares").exists() and offline.token_state() == before


def test_root_ceremony_outputs(pki: PKI) -> None:
    o = pki.offline
    root = x509.load_pem_x509_certificate((o.out / "root_ca.crt").read_bytes())
    root.verify_directly_issued_by(root)
    assert isinstance(root.public_key(), ec.EllipticCurvePublicKey) and root.public_key().curve.name == "secp384r1"
    # No pathLenConstraint on a root (CA/B BR), so a later rollover can put a cross-certificate under it.
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.path_length is None
    assert sorted(p.name for p in o.shares.iterdir()) == sorted(
        f"{c}.{k}.txt" for c in CUSTODIANS for k in ("so-pin", "user-pin"))
    assert all(p.stat().st_mode & 0o777 == 0o600 for p in o.shares.iterdir())
    lines = [json.loads(line) for line in (o.out / "transcript.jsonl").read_text().splitlines()]
    steps = [line["step"] for line in lines]
    assert steps == ["ceremony.start", "plan.loaded", "shares.distributed", "hsm.token-init", "key.generate",
                     "certificate.sign", "seal"]
    assert lines[1]["details"]["networkInterfacesUp"] == [] and lines[1]["details"]["allowNetwork"] is False
    assert lines[4]["details"]["protection"] == {"sensitive": True, "alwaysSensitive": True, "extractable": False,
                                                 "neverExtractable": True, "generatedOnToken": True}
    text = (o.out / "transcript.jsonl").read_text()
    for share in o.shares.iterdir():  # no share, not even one word sequence of it, is in the transcript
        words = share.read_text().split()
        assert " ".join(words[:3]) not in text


@pytest.mark.parametrize("case", ["two-shares", "corrupted", "repeated", "foreign"])
def test_quorum_refusals_change_nothing(pki: PKI, case: str, tmp_path: Path) -> None:
    o = pki.offline
    shares = tmp_path / "shares"
    shutil.copytree(o.shares, shares)
    present = ["alice", "bob", "carol"]
    if case == "two-shares":
        present, expected = ["alice", "bob"], "2 shares given; this quorum needs 3 of 5"
    elif case == "corrupted":
        words = (shares / "bob.user-pin.txt").read_text().split()
        words[5] = "academic" if words[5] != "academic" else "acid"  # a real word: only the checksum catches it
        (shares / "bob.user-pin.txt").write_text(" ".join(words))
        expected = "the share given by bob is not valid"
    elif case == "repeated":
        shutil.copy(shares / "alice.user-pin.txt", shares / "carol.user-pin.txt")
        expected = "alice and carol gave the same share"
    else:  # a share of the SO PIN's split, offered for the user PIN
        shutil.copy(shares / "bob.so-pin.txt", shares / "bob.user-pin.txt")
        expected = "different"
    transcript = (o.out / "transcript.jsonl").read_bytes()
    before = o.token_state()
    args = [a for c in present for a in ("--custodian", c)]
    done = o.run("sign-intermediate", "--plan", "int1.yaml", "--csr", "int1.csr", "--shares-from", str(shares),
                 *args)
    assert done.returncode == 1, done.stdout
    assert "quorum refused" in done.stderr and expected in done.stderr, done.stderr
    assert "Nothing was done on the HSM" in done.stderr
    assert o.token_state() == before
    assert (o.out / "transcript.jsonl").read_bytes() == transcript
    assert not (o.out / "int1.crt").exists()


@pytest.fixture(scope="module")
def signed(pki: PKI) -> PKI:
    """The intermediate ceremony: three custodians' shares, the appliance's CSR, in the namespace."""
    done = _ok(pki.offline.run("sign-intermediate", "--plan", "int1.yaml", "--csr", "int1.csr",
                               "--shares-from", "shares", "--custodian", "alice", "--custodian", "carol",
                               "--custodian", "erin"))
    assert "Shares given by:          alice, carol, erin" in done.stdout
    return pki


def test_intermediate_carries_the_plan(signed: PKI) -> None:
    o = signed.offline
    root = x509.load_pem_x509_certificate((o.out / "root_ca.crt").read_bytes())
    inter = x509.load_pem_x509_certificate((o.out / "int1.crt").read_bytes())
    inter.verify_directly_issued_by(root)
    ext = inter.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value.path_length == 0
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and not ku.digital_signature
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and x509.DNSName("internal") in (nc.value.permitted_subtrees or [])
    assert ext.get_extension_for_class(x509.CRLDistributionPoints)
    csr = x509.load_pem_x509_csr((o.dir / "int1.csr").read_bytes())
    assert inter.public_key() == csr.public_key()


def test_verify_passes_then_fails_on_each_tamper(signed: PKI, tmp_path: Path) -> None:
    o = signed.offline
    args = ["--root", str(o.out / "root_ca.crt"), "--intermediate", str(o.out / "int1.crt")]
    done = _ok(o.run("verify", str(o.out / "transcript.jsonl"), *args))
    assert "VERIFIED" in done.stdout and "quorum.reconstructed" in done.stdout
    lines = (o.out / "transcript.jsonl").read_bytes().splitlines(keepends=True)

    def check(name: str, data: list[bytes], expected: str, extra: list[str] | None = None) -> None:
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(data))
        done = o.run("verify", str(path), *(extra or args))
        assert done.returncode == 1, f"{name}: verify passed\n{done.stdout}"
        assert "FAILED" in done.stdout and expected in done.stdout, f"{name}:\n{done.stdout}"

    edited = list(lines)
    edited[9] = edited[9].replace(b'"custodians":["alice","carol","erin"]', b'"custodians":["alice","bob","erin"]')
    assert edited[9] != lines[9]
    check("edited", edited, "line 11")
    check("removed", lines[:4] + lines[5:], "line 5")
    check("swapped", lines[:3] + [lines[4], lines[3]] + lines[5:], "line 4")
    # Another intermediate for the same key, signed by a different (software) root: not the ceremony's output.
    other_root_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    inter = x509.load_pem_x509_certificate((o.out / "int1.crt").read_bytes())
    fake = (x509.CertificateBuilder().subject_name(inter.subject).issuer_name(inter.issuer)
            .public_key(inter.public_key()).serial_number(inter.serial_number)
            .not_valid_before(inter.not_valid_before_utc).not_valid_after(inter.not_valid_after_utc)
            .sign(other_root_key, hashes.SHA256()))
    (tmp_path / "fake.crt").write_bytes(fake.public_bytes(Encoding.PEM))
    check("replaced-intermediate", lines, "is not an output of any ceremony",
          ["--root", str(o.out / "root_ca.crt"), "--intermediate", str(tmp_path / "fake.crt")])


def _chain_ok(root: Path, chain: Path) -> bool:
    return ": OK" in openssl_verify_chain(root, chain)


def _issue(server: Server, name: str) -> Path:
    ca = server.ca
    hsmca(ca, "certificate", name, f"{name}.crt", f"{name}.key", "--ca-url", server.url, "--root", str(ca.root),
          "--provisioner", "admin", "--password-file", str(ca.password_file), "--force")
    return ca.base / f"{name}.crt"


@pytest.fixture(scope="module")
def serving(signed: PKI) -> Iterator[Server]:
    ca = signed.ca
    done = hsmca(ca, "intermediate", "install", str(signed.offline.out / "int1.crt"), "--activate-at", "now")
    assert "installed 'intermediate-1'" in done.stdout
    server = start_server(ca, workers=2)
    yield server
    server.stop()


def test_rotation_keeps_the_root_and_every_chain_valid(signed: PKI, serving: Server) -> None:
    ca, o = signed.ca, signed.offline
    root_file = o.out / "root_ca.crt"
    roots_before = requests.get(f"{serving.http_url}/roots.pem", timeout=10).content
    roots_json_before = serving.get("/roots").content
    before = _issue(serving, "before.internal")
    assert _chain_ok(root_file, before)

    # Rotate while serving: a new key in the appliance's KMS, signed at a second ceremony (same transcript).
    hsmca(ca, "intermediate", "csr", "--key", f"pkcs11:token={ca.token_label};object=intermediate-2",
          "--subject", "CN=Test Issuing CA 2,O=hsmca tests", "--kty", "EC-P384", "--out", str(o.dir / "int2.csr"))
    _ok(o.run("sign-intermediate", "--plan", "int2.yaml", "--csr", "int2.csr", "--shares-from", "shares",
              "--custodian", "bob", "--custodian", "dave", "--custodian", "erin"))
    hsmca(ca, "intermediate", "install", str(o.out / "int2.crt"), "--activate-at", "now")

    int2 = x509.load_pem_x509_certificate((o.out / "int2.crt").read_bytes())
    afters = [_issue(serving, f"after{i}.internal") for i in range(6)]  # both workers, no restart
    for path in afters:
        chain = x509.load_pem_x509_certificates(path.read_bytes())
        assert chain[0].issuer == int2.subject and chain[1] == int2
        assert _chain_ok(root_file, path)
    assert _chain_ok(root_file, before)  # the old chain still validates against the same root
    assert x509.load_pem_x509_certificates(before.read_bytes())[1].subject.rfc4514_string() \
        == "CN=Test Issuing CA 1,O=hsmca tests"
    assert requests.get(f"{serving.http_url}/roots.pem", timeout=10).content == roots_before
    assert serving.get("/roots").content == roots_json_before
    assert (ca.base / "certs" / "root_ca.crt").read_bytes() == root_file.read_bytes()

    installs = [e for e in ca.audit_events() if e["action"] == "intermediate.install"]
    assert [e["details"]["intermediate"] for e in installs] == ["intermediate-1", "intermediate-2"]
    listed = {r["name"]: r for r in json.loads(hsmca(ca, "intermediate", "list", "--json").stdout)}
    assert listed["intermediate-1"]["state"] == "retired" and listed["intermediate-2"]["state"] == "active"
    assert listed["intermediate-2"]["issued"] == 6
    old_serial = x509.load_pem_x509_certificates(before.read_bytes())[0].serial_number
    with Store.from_config(ca.config.db.model_dump(), ca.base) as store:
        rec = store.certificates.get(old_serial)
        assert rec is not None and rec.status == "issued" and rec.issuer == listed["intermediate-1"]["id"]

    done = _ok(o.run("verify", "out/transcript.jsonl", "--root", str(root_file), "--intermediate",
                     str(o.out / "int1.crt"), "--intermediate", str(o.out / "int2.crt")))
    assert done.stdout.count("seal:") == 3 and "VERIFIED" in done.stdout


def test_dry_run_rehearses_rsa4096_without_touching_the_hsm(offline: Offline, tmp_path: Path) -> None:
    plan = tmp_path / "rsa.yaml"
    plan.write_text(root_plan("rehearsal", "RSA-4096"))
    before = offline.token_state()
    done = subprocess.run(["unshare", "-n", HSMCA, "ceremony", "root", "--plan", str(plan), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "SOFTHSM2_CONF": str(offline.conf)})
    assert done.returncode == 0, done.stderr
    assert "DRY RUN" in done.stdout and "generate the root key 'root-key' (RSA-4096)" in done.stdout
    rehearsal = Path(done.stdout.split("Rehearsal files:")[1].split("(")[0].strip())
    try:
        root = x509.load_pem_x509_certificate((rehearsal / "outputs" / "root_ca.crt").read_bytes())
        assert isinstance(root.public_key(), rsa.RSAPublicKey) and root.public_key().key_size == 4096
        lines = [json.loads(x) for x in (rehearsal / "outputs" / "transcript.jsonl").read_text().splitlines()]
        assert lines[1]["details"]["dryRun"] is True
        assert not (tmp_path / "out").exists() and offline.token_state() == before
    finally:
        shutil.rmtree(rehearsal, ignore_errors=True)


def test_root_rollover_cross_signed_chains_validate_under_either_root(signed: PKI, serving: Server) -> None:
    """Stretch: a new root from its own ceremony, cross-signed by the old; clients of either root validate."""
    ca, o = signed.ca, signed.offline
    old_root, new_root = o.out / "root_ca.crt", o.dir / "out2" / "root_ca.crt"
    (o.dir / "root2.yaml").write_text(root_plan("corp-root-2", n="-2", out="out2"))
    (o.dir / "cross.yaml").write_text(cross_plan(o.token))
    (o.dir / "int3.yaml").write_text(intermediate_plan("corp-root-2", 3, root="-2", out="out2"))
    roots_before = requests.get(f"{serving.http_url}/roots.pem", timeout=10).content

    _ok(o.run("root", "--plan", "root2.yaml", "--share-output", "shares2"))
    done = _ok(o.run("cross-sign", "--plan", "cross.yaml", "--new-root", str(new_root), "--shares-from", "shares",
                     "--custodian", "alice", "--custodian", "bob", "--custodian", "carol"))
    assert "Cross-certificate:" in done.stdout
    cross = x509.load_pem_x509_certificate((o.out / "cross.crt").read_bytes())
    new = x509.load_pem_x509_certificate(new_root.read_bytes())
    assert cross.subject == new.subject and cross.public_key() == new.public_key()
    assert cross.issuer == x509.load_pem_x509_certificate(old_root.read_bytes()).subject

    hsmca(ca, "intermediate", "csr", "--key", f"pkcs11:token={ca.token_label};object=intermediate-3",
          "--subject", "CN=Test Issuing CA 3,O=hsmca tests", "--out", str(o.dir / "int3.csr"))
    _ok(o.run("sign-intermediate", "--plan", "int3.yaml", "--csr", "int3.csr", "--shares-from", "shares2",
              "--custodian", "carol", "--custodian", "dave", "--custodian", "erin"))
    refused = hsmca(ca, "intermediate", "install", str(o.dir / "out2" / "int3.crt"), check=False)
    assert refused.returncode == 1 and "does not lead to this CA's root" in refused.stderr  # no cross-cert
    hsmca(ca, "intermediate", "install", str(o.dir / "out2" / "int3.crt"), "--chain", str(o.out / "cross.crt"),
          "--activate-at", "now")

    leaf = _issue(serving, "rolled.internal")
    chain = x509.load_pem_x509_certificates(leaf.read_bytes())
    assert [c.subject.rfc4514_string() for c in chain[1:]] == ["CN=Test Issuing CA 3,O=hsmca tests",
                                                               "CN=Test Root CA-2,O=hsmca tests"]
    assert _chain_ok(old_root, leaf) and _chain_ok(new_root, leaf)
    assert requests.get(f"{serving.http_url}/roots.pem", timeout=10).content == roots_before
    _ok(o.run("verify", "out/transcript.jsonl", "--root", str(old_root), "--intermediate", str(o.out / "cross.crt")))
    _ok(o.run("verify", "out2/transcript.jsonl", "--root", str(new_root), "--intermediate",
              str(o.dir / "out2" / "int3.crt")))


def test_shares_typed_on_stdin_in_a_rehearsal(signed: PKI, tmp_path: Path) -> None:
    """Custodians' words arrive one line each on stdin; a dry run checks them without the real token."""
    o = signed.offline
    lines = "\n".join((o.shares / f"{c}.user-pin.txt").read_text().strip() for c in ("bob", "carol", "dave"))
    before = o.token_state()
    done = o.run("sign-intermediate", "--plan", "int1.yaml", "--csr", "int1.csr", "--dry-run",
                 "--custodian", "bob", "--custodian", "carol", "--custodian", "dave", input=lines + "\n")
    assert done.returncode == 0, done.stderr
    assert "bob: type your user pin share" in done.stderr
    assert "Shares given by:          bob, carol, dave" in done.stdout
    rehearsal = Path(done.stdout.split("Rehearsal files:")[1].split("(")[0].strip())
    try:
        assert (rehearsal / "outputs" / "int1.crt").exists() and o.token_state() == before
    finally:
        shutil.rmtree(rehearsal, ignore_errors=True)
    bad = o.run("sign-intermediate", "--plan", "int1.yaml", "--csr", "int1.csr", "--dry-run",
                "--custodian", "bob", "--custodian", "carol", input=lines.split("\n")[0] + "\n\n")
    assert bad.returncode == 1 and "1 share given; this quorum needs 3 of 5" in bad.stderr, bad.stderr


class Terminal:
    """A command on a pseudo-terminal of its own, read and typed at like a person would."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        import pty

        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     env={**env, "TERM": "dumb"})
        os.close(slave)
        self.seen = b""

    def read_until(self, marker: str, timeout: float = 60) -> str:
        """Everything read up to and including `marker`, from where the last call stopped."""
        import select
        import time

        start, want = len(self.seen), marker.encode()
        deadline = time.monotonic() + timeout
        while want not in self.seen[start:]:
            assert time.monotonic() < deadline, f"no {marker!r} in:\n{self.seen.decode(errors='replace')}"
            if select.select([self.master], [], [], 0.5)[0]:
                try:
                    self.seen += os.read(self.master, 4096)
                except OSError:  # the child closed the terminal
                    break
        end = self.seen.index(want, start) + len(want)
        return self.seen[start:end].decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode() + b"\n")

    def close(self) -> int:
        try:
            return self.proc.wait(timeout=60)
        finally:
            self.proc.kill()
            os.close(self.master)


def test_shares_typed_at_a_hidden_prompt_on_a_terminal(signed: PKI) -> None:
    """On a real pseudo-terminal: the prompt asks each custodian in turn and never echoes the words."""
    o = signed.offline
    shares = {c: (o.shares / f"{c}.user-pin.txt").read_text().strip() for c in ("alice", "bob", "dave")}
    term = Terminal([HSMCA, "ceremony", "sign-intermediate", "--plan", "int1.yaml", "--csr", "int1.csr",
                     "--dry-run", "--allow-network", "--custodian", "alice", "--custodian", "bob", "--custodian",
                     "dave"], o.dir, {**os.environ, "SOFTHSM2_CONF": str(o.conf)})
    try:
        for custodian, words in shares.items():
            term.read_until(f"{custodian}: type your user pin share")
            term.type(words)
        term.read_until("Rehearsal files:")
    finally:
        code = term.close()
    text = term.seen.decode(errors="replace")
    assert code == 0, text
    assert "Shares given by:          alice, bob, dave" in text
    for words in shares.values():  # a pty echoes what is typed unless the prompt turns echo off
        assert " ".join(words.split()[2:6]) not in text, "a share was echoed to the terminal"
    shutil.rmtree(text.split("Rehearsal files:")[1].split("(")[0].strip(), ignore_errors=True)


def test_root_ceremony_shows_each_custodian_their_words_on_the_terminal(offline: Offline) -> None:
    """The day itself: no share files; each custodian presses Enter, reads their words, the screen clears.
    The words shown, typed back by three custodians, unlock the token."""
    import re

    from ceremony.quorum import combine, pin_from_secret

    (offline.dir / "pty-root.yaml").write_text(root_plan("pty-root", out="out-pty"))
    term = Terminal(["unshare", "-n", HSMCA, "ceremony", "root", "--plan", "pty-root.yaml"], offline.dir,
                    {**os.environ, "SOFTHSM2_CONF": str(offline.conf)})
    user_shares: dict[str, str] = {}
    try:
        for custodian in CUSTODIANS:
            term.read_until(f"Custodian {custodian}: come to the screen alone")
            term.type("")
            shown = term.read_until("press Enter to clear the screen")
            user_part = shown.split(f"{custodian}'s USER PIN share")[1]
            user_shares[custodian] = " ".join(re.findall(r"\d+\. ([a-z]+)", user_part))
            assert "SO PIN share" in shown and len(user_shares[custodian].split()) == 20
            term.type("")
        term.read_until("Transcript:")
    finally:
        code = term.close()
    assert code == 0, term.seen.decode(errors="replace")
    assert not (offline.dir / "out-pty" / "shares").exists()
    lines = [json.loads(x) for x in (offline.dir / "out-pty" / "transcript.jsonl").read_text().splitlines()]
    assert lines[2]["details"]["method"] == "displayed to each custodian alone"
    pin = pin_from_secret(combine({c: user_shares[c] for c in ("bob", "carol", "erin")}, CUSTODIANS, 3))
    listed = subprocess.run(["pkcs11-tool", "--module", softhsm.DEFAULT_MODULE, "--token-label", "pty-root",
                             "--login", "--pin", "env:HSMCA_TEST_PIN", "--list-objects", "--type", "privkey"],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "SOFTHSM2_CONF": str(offline.conf), "HSMCA_TEST_PIN": pin})
    assert listed.returncode == 0 and "root-key" in listed.stdout, listed.stdout + listed.stderr
