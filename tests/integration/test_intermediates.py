"""`hsmca intermediate csr|install|list|activate|retire` through the real console script, on dev CAs whose
root key sits in their own SoftHSM token; `hsmca serve` choosing the active intermediate per request;
`hsmca init --root` (the production layout, no intermediate until the ceremony signs one).
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

import kms
import softhsm
from appliance.ca.active import ActiveIssuer
from appliance.ca.intermediates import install, listing, make_csr
from appliance.certutil import load_certificates
from appliance.store import IntermediateRecord, Store
from tests.integration.conftest import PASSWORD, DevCA, Server, hsmca, make_ca, start_server
from tests.integration.signing import issue_in_process, software_root

Expected = str | re.Pattern[str]  # an exact error message, or a pattern when part of it is not ours to fix
NO_ACTIVE = "no active intermediate: install one and activate it (hsmca intermediate install CERT --activate-at now)"


# -- helpers -----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _z(when: datetime) -> str:
    """An RFC 3339 time as an operator types it."""
    return when.isoformat().replace("+00:00", "Z")


def _ski(public_key: Any) -> str:
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()


def _spki(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))


def _store(ca: DevCA) -> Store:
    config = ca.config
    return Store.from_config(config.db.model_dump(), config.base_dir)


def _records(ca: DevCA) -> list[IntermediateRecord]:
    """The rows themselves (not `intermediate list`, which would record ca.json's intermediate if none)."""
    with _store(ca) as store:
        return store.intermediates.list()


def _listed(ca: DevCA) -> dict[str, dict[str, Any]]:
    rows = json.loads(hsmca(ca, "intermediate", "list", "--json").stdout)
    return {r["name"]: r for r in rows}


def _run_all(ca: DevCA, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Independent commands side by side (each is a new process): refusals need not wait for each other."""
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: hsmca(ca, *args, check=False), commands))


def _refused(done: subprocess.CompletedProcess[str], message: Expected) -> None:
    """Exit 1, the message (or a line matching it) alone on stderr, nothing on stdout."""
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    if isinstance(message, str):
        assert done.stderr == f"error: {message}\n"
    else:
        assert message.fullmatch(done.stderr.removeprefix("error: ").removesuffix("\n")), done.stderr


def _root_key(ca: DevCA) -> kms.CAKey:
    """The dev root's key inside the CA's token: it signs test intermediates as the ceremony would."""
    config = ca.config
    config.apply_kms_environment()
    return kms.open_key(config.key_uri("pkcs11:object=root_ca"))


def _root(ca: DevCA) -> x509.Certificate:
    return load_certificates(ca.root)[0]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hsmca tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _sign_intermediate(ca: DevCA, public_key: Any, cn: str, *, not_before: datetime | None = None,
                       lifetime: timedelta = timedelta(days=30)) -> x509.Certificate:
    start = not_before or (_now() - timedelta(minutes=1)).replace(microsecond=0)
    return kms.intermediate_certificate(_root_key(ca), _root(ca), public_key, _name(cn), start, start + lifetime)


def _write(path: Path, cert: x509.Certificate) -> Path:
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path


def _new_csr(ca: DevCA, name: str) -> x509.CertificateSigningRequest:
    """A key made in the CA's token and recorded awaiting its certificate (what `intermediate csr` does)."""
    with _store(ca) as store:
        pem, _rec = make_csr(ca.config, store, f"pkcs11:object={name}", f"CN={name},O=hsmca tests")
    return x509.load_pem_x509_csr(pem)


def _installed(ca: DevCA, name: str) -> x509.Certificate:
    """A recorded key with its certificate installed but not activated (pending)."""
    cert = _sign_intermediate(ca, _new_csr(ca, name).public_key(), name)
    with _store(ca) as store:
        install(ca.config, store, cert.public_bytes(Encoding.PEM), activate_at=None)
    return cert


def _issue_in_process(ca: DevCA, count: int) -> None:
    """Leaves signed by the active intermediate through its HSM key and recorded, as the server does."""
    issue_in_process(ca, [f"leaf{i}.internal" for i in range(count)])


def _certificate(server: Server, name: str) -> subprocess.CompletedProcess[str]:
    ca = server.ca
    return hsmca(ca, "certificate", name, f"{name}.crt", f"{name}.key", "--ca-url", server.url,
                 "--root", str(ca.root), "--provisioner", "admin", "--password-file", str(ca.password_file),
                 check=False)


def _chain(ca: DevCA, name: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates((ca.base / f"{name}.crt").read_bytes())


# -- init records the dev CA's intermediate ----------------------------------------------------


def test_init_records_the_dev_intermediate_as_active(tmp_path_factory: pytest.TempPathFactory) -> None:
    ca = make_ca(tmp_path_factory.mktemp("dev"))
    inter = load_certificates(ca.intermediate)[0]
    # Recorded by init itself (every `hsmca intermediate` command would record it too, were it missing).
    assert [(r.name, r.id) for r in _records(ca)] == [("intermediate_ca", _ski(inter.public_key()))]
    rows = json.loads(hsmca(ca, "intermediate", "list", "--json").stdout)
    assert len(rows) == 1
    row = rows[0]
    assert row["id"] == _ski(inter.public_key())
    assert {k: row[k] for k in ("name", "state", "subject", "notAfter", "retiredAt", "issued", "key")} == {
        "name": "intermediate_ca", "state": "active", "subject": "CN=hsmca Intermediate CA,O=hsmca",
        "notAfter": inter.not_valid_after_utc.isoformat(), "retiredAt": None, "issued": 1,  # the audit key's
        "key": "pkcs11:object=intermediate_ca"}
    assert _now() - timedelta(minutes=5) < datetime.fromisoformat(row["activateAt"]) <= _now()


# -- csr ---------------------------------------------------------------------------------------


def test_csr_makes_the_key_in_the_token_and_records_it_awaiting(tmp_path_factory: pytest.TempPathFactory) -> None:
    ca = make_ca(tmp_path_factory.mktemp("csr"))
    subject = "CN=Issuing CA 2,O=hsmca tests"
    done = hsmca(ca, "intermediate", "csr", "--key", "pkcs11:object=int-2", "--subject", subject,
                 "--kty", "EC-P384")
    csr = x509.load_pem_x509_csr(done.stdout.encode())
    assert done.stdout.startswith("-----BEGIN CERTIFICATE REQUEST-----\n")
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == subject
    public = csr.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1"
    ident = _ski(public)
    assert done.stderr == f"recorded intermediate 'int-2' (id {ident}), awaiting its certificate\n"

    # The key is in the CA's token (the CSR was signed there), not in a file.
    config = ca.config
    config.apply_kms_environment()
    assert _spki(kms.open_key(config.key_uri("pkcs11:object=int-2")).public_key()) == _spki(public)

    listed = _listed(ca)
    assert list(listed) == ["intermediate_ca", "int-2"]
    assert listed["intermediate_ca"]["state"] == "active"
    assert listed["int-2"] == {"name": "int-2", "id": ident, "state": "awaiting-certificate", "subject": subject,
                               "notAfter": None, "activateAt": None, "retiredAt": None, "issued": 0,
                               "key": "pkcs11:object=int-2"}

    before = _records(ca)
    again = ["intermediate", "csr", "--key"]
    same, pin, bad, empty = _run_all(ca, [*again, "pkcs11:object=int-2", "--subject", subject],
                                     [*again, "pkcs11:object=int-3?pin-value=s3cret", "--subject", subject],
                                     [*again, "pkcs11:object=int-3", "--subject", "not a DN"],
                                     [*again, "pkcs11:object=int-3", "--subject", ""])
    _refused(same, "an intermediate named 'int-2' is already recorded; choose another name (--name)")
    _refused(pin, "the key URI carries pin-value; use pin-source=file:... or the kms.uri of ca.json")
    _refused(bad, "--subject 'not a DN' is not an RFC 4514 name (expected NAME=value pairs such as "
                  "CN=Corp Issuing CA)")  # cryptography gives no reason of its own
    _refused(empty, "--subject cannot be empty")
    assert _records(ca) == before
    with pytest.raises(kms.KeyNotFound):  # no refusal left a key behind in the token
        kms.open_key(config.key_uri("pkcs11:object=int-3"))


# -- install refusals ------------------------------------------------------------------------


@dataclass
class Awaiting:
    ca: DevCA
    csr: x509.CertificateSigningRequest

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        key = self.csr.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        return key


def _foreign_root_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    """Same issuer name as this CA's root, for the recorded key, but signed by a software root key."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now().replace(microsecond=0)
    root = kms.root_certificate(key, _root(a.ca).subject, now - timedelta(hours=1), now + timedelta(days=365))
    cert = kms.intermediate_certificate(key, root, a.public_key, _name("int-2"), now - timedelta(minutes=1),
                                        now + timedelta(days=30))
    return [str(_write(tmp / "foreign.crt", cert))], re.compile(
        rf"the certificate does not lead to this CA's root \({re.escape(a.ca.config.root)}\); "
        r"clients trusting the root would reject its chains \(after a root rollover, give the cross-certificate "
        r"with --chain\)")


def _chain_elsewhere_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    """Signed by another root, with that root given as --chain: the path does not end at this CA's root."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now().replace(microsecond=0)
    root = kms.root_certificate(key, _name("Other Root"), now - timedelta(hours=1), now + timedelta(days=365))
    cert = kms.intermediate_certificate(key, root, a.public_key, _name("int-2"), now - timedelta(minutes=1),
                                        now + timedelta(days=30))
    return [str(_write(tmp / "int.crt", cert)), "--chain", str(_write(tmp / "other-root.crt", root))], (
        f"the certificate and its --chain do not lead to this CA's root ({a.ca.config.root}); "
        "clients trusting the root would reject its chains (after a root rollover, give the cross-certificate "
        "with --chain)")


def _not_a_ca_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    """Signed by this CA's root key for the recorded key, but a leaf (cA false)."""
    now = _now().replace(microsecond=0)
    key = _root_key(a.ca)
    cert = (x509.CertificateBuilder().subject_name(_name("int-2")).issuer_name(_root(a.ca).subject)
            .public_key(a.public_key).serial_number(kms.new_serial())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, kms.default_hash(key)))
    return [str(_write(tmp / "leaf.crt", cert))], \
        "the certificate is not a CA certificate (BasicConstraints CA:TRUE is missing)"


def _unknown_key_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    """A proper intermediate from this CA's root, for a key no `intermediate csr` recorded."""
    other = ec.generate_private_key(ec.SECP256R1())
    cert = _sign_intermediate(a.ca, other.public_key(), "int-x")
    return [str(_write(tmp / "other.crt", cert))], ("no recorded intermediate key matches this certificate: make its "
                                                    "CSR with `hsmca intermediate csr` on this CA first")


def _before_valid_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    start = (_now() + timedelta(days=1)).replace(microsecond=0)
    cert = _sign_intermediate(a.ca, a.public_key, "int-2", not_before=start)
    at = start - timedelta(hours=1)
    return [str(_write(tmp / "later.crt", cert)), "--activate-at", _z(at)], \
        f"--activate-at {at} is before the certificate is valid ({start})"


def _good(a: Awaiting, tmp: Path) -> str:
    return str(_write(tmp / "good.crt", _sign_intermediate(a.ca, a.public_key, "int-2")))


def _malformed_time_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    return [_good(a, tmp), "--activate-at", "tomorrow"], \
        "--activate-at 'tomorrow': give 'now' or an RFC 3339 time such as 2026-12-01T00:00:00Z"


def _no_zone_case(a: Awaiting, tmp: Path) -> tuple[list[str], Expected]:
    return [_good(a, tmp), "--activate-at", "2030-01-01T00:00:00"], \
        "--activate-at '2030-01-01T00:00:00' has no time zone; add Z for UTC"


INSTALL_REFUSALS = {"foreign-root": _foreign_root_case, "chain-elsewhere": _chain_elsewhere_case,
                    "not-a-ca": _not_a_ca_case, "unknown-key": _unknown_key_case,
                    "activate-before-valid": _before_valid_case, "malformed-time": _malformed_time_case,
                    "time-without-zone": _no_zone_case}


@dataclass
class Refusals:
    before: list[IntermediateRecord]
    after: list[IntermediateRecord]
    results: dict[str, tuple[subprocess.CompletedProcess[str], Expected]]  # case -> (what install did, expected)


@pytest.fixture(scope="module")
def install_refusals(tmp_path_factory: pytest.TempPathFactory) -> Refusals:
    """A dev CA with one more key recorded, awaiting its certificate, and every refused install tried on it."""
    ca = make_ca(tmp_path_factory.mktemp("install"))
    awaiting = Awaiting(ca, _new_csr(ca, "int-2"))
    cases = {name: build(awaiting, tmp_path_factory.mktemp(name)) for name, build in INSTALL_REFUSALS.items()}
    before = _records(ca)
    assert [r.name for r in before] == ["intermediate_ca", "int-2"] and before[1].certificate is None
    done = _run_all(ca, *(["intermediate", "install", *args] for args, _message in cases.values()))
    return Refusals(before, _records(ca), {name: (d, cases[name][1]) for name, d in zip(cases, done, strict=True)})


@pytest.mark.parametrize("case", list(INSTALL_REFUSALS))
def test_install_refusals_change_nothing(install_refusals: Refusals, case: str) -> None:
    done, message = install_refusals.results[case]
    _refused(done, message)
    assert install_refusals.after == install_refusals.before  # still awaiting its certificate, nothing installed


def test_install_refused_for_an_activation_after_expiry_installs_nothing(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    csr = _new_csr(ca, "int-2")
    cert = _sign_intermediate(ca, csr.public_key(), "int-2", lifetime=timedelta(days=30))
    at = (_now() + timedelta(days=60)).replace(microsecond=0)
    before = _records(ca)
    done = hsmca(ca, "intermediate", "install", str(_write(tmp_path / "int2.crt", cert)), "--activate-at", _z(at),
                 check=False)
    assert done.returncode == 1
    assert f"--activate-at {at} is not before the certificate expires ({cert.not_valid_after_utc})" in done.stderr
    assert _records(ca) == before  # refused before anything was stored


# -- rotation ----------------------------------------------------------------------------------


def test_install_pending_then_scheduled_then_active_retires_the_old_one(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    old_id = _ski(load_certificates(ca.intermediate)[0].public_key())
    _issue_in_process(ca, 2)  # the old intermediate has issued something, which stays counted
    csr = _new_csr(ca, "int-2")
    cert = _sign_intermediate(ca, csr.public_key(), "int-2")
    new_id = _ski(csr.public_key())

    done = hsmca(ca, "intermediate", "install", str(_write(tmp_path / "int2.crt", cert)))
    assert done.stdout == (f"installed 'int-2' (id {new_id}): CN=int-2,O=hsmca tests, valid to "
                           f"{cert.not_valid_after_utc}\npending: activate it with `hsmca intermediate activate "
                           "int-2`\n")
    with _store(ca) as store:  # what `intermediate list` shows (the command itself is run below)
        states = {i.record.name: (i.state.value, i.record.retired_at) for i in listing(store)}
    assert states == {"intermediate_ca": ("active", None), "int-2": ("pending", None)}

    later = (_now() + timedelta(days=1)).replace(microsecond=0)
    done = hsmca(ca, "intermediate", "activate", "int-2", "--at", _z(later))
    assert done.stdout == f"'int-2' activates at {later}\n"
    listed = _listed(ca)
    assert (listed["intermediate_ca"]["state"], listed["int-2"]["state"]) == ("active", "pending")
    # The switch is recorded on both sides at the same instant: no gap, no overlap.
    assert listed["int-2"]["activateAt"] == listed["intermediate_ca"]["retiredAt"] == later.isoformat()

    start = _now()
    done = hsmca(ca, "intermediate", "activate", "int-2")
    assert re.fullmatch(r"'int-2' activates at \S+ \S+\n", done.stdout), done.stdout
    end = _now()
    listed = _listed(ca)
    old, new = listed["intermediate_ca"], listed["int-2"]
    assert (old["state"], old["id"], old["issued"]) == ("retired", old_id, 3)  # and init's audit key certificate
    assert (new["state"], new["id"], new["issued"]) == ("active", new_id, 0)
    retired, activated = datetime.fromisoformat(old["retiredAt"]), datetime.fromisoformat(new["activateAt"])
    assert start <= retired <= activated <= end

    config = ca.config
    config.apply_kms_environment()
    with _store(ca) as store:  # what the server's workers ask for on their next request
        assert ActiveIssuer(config, store).current().certificate == cert


def test_postponing_a_scheduled_activation_leaves_no_gap(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    _installed(ca, "int-2")
    first = (_now() + timedelta(days=1)).replace(microsecond=0)
    second = first + timedelta(days=1)
    hsmca(ca, "intermediate", "activate", "int-2", "--at", _z(first))
    hsmca(ca, "intermediate", "activate", "int-2", "--at", _z(second))  # postponed by a day
    with _store(ca) as store:
        between = store.intermediates.active(first + timedelta(hours=12))
        assert between is not None and between.name == "intermediate_ca"
        assert store.intermediates.active(second + timedelta(seconds=1)).name == "int-2"  # type: ignore[union-attr]


def test_retiring_a_pending_one_cancels_its_hand_over(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    _installed(ca, "int-2")
    at = (_now() + timedelta(days=1)).replace(microsecond=0)
    hsmca(ca, "intermediate", "activate", "int-2", "--at", _z(at))
    hsmca(ca, "intermediate", "retire", "int-2")  # changed our minds before the hand-over
    with _store(ca) as store:
        later = store.intermediates.active(at + timedelta(hours=1))
        assert later is not None and later.name == "intermediate_ca" and later.retired_at is None
    refused = hsmca(ca, "intermediate", "activate", "int-2", check=False)
    assert refused.returncode == 1 and "retired intermediates are not re-activated" in refused.stderr


# -- retire, and issuance with no active intermediate ------------------------------------------


def test_retiring_the_only_active_one_stops_issuance_until_another_is_activated(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    int2 = _installed(ca, "int-2")  # installed, pending: it does not count as a successor
    server = start_server(ca, workers=1)
    try:
        before = _records(ca)
        done = hsmca(ca, "intermediate", "retire", "intermediate_ca", check=False)
        assert (done.returncode, done.stdout) == (1, "")
        assert re.fullmatch(r"error: 'intermediate_ca' is the only active intermediate at \S+ \S+: activate another "
                            r"first, or pass --force to stop issuance\n", done.stderr), done.stderr
        assert _records(ca) == before

        done = hsmca(ca, "intermediate", "retire", "intermediate_ca", "--force")
        assert re.fullmatch(r"'intermediate_ca' retired at \S+ \S+\n", done.stdout), done.stdout

        done = _certificate(server, "refused.internal")
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == f"error: the CA refused POST /sign (503): {NO_ACTIVE}\n"
        assert not (ca.base / "refused.internal.crt").exists()

        hsmca(ca, "intermediate", "activate", "int-2")  # no restart, no signal to the server
        done = _certificate(server, "after.internal")
        assert done.returncode == 0, done.stderr
        leaf, inter = _chain(ca, "after.internal")
        assert inter == int2
        leaf.verify_directly_issued_by(int2)
        with _store(ca) as store:
            states = {i.record.name: (i.state.value, i.issued) for i in listing(store)}
        # the old one: init's audit key certificate and the server's TLS certificate; the new one: after.internal
        assert states == {"intermediate_ca": ("retired", 2), "int-2": ("active", 1)}
    finally:
        assert server.stop() == 0


# -- a CA made before intermediates were recorded ----------------------------------------------


def test_serve_records_the_ca_json_intermediate_of_an_older_ca(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    inter = load_certificates(ca.intermediate)[0]
    engine = sa.create_engine(f"sqlite:///{ca.config.db.dataSource}")
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("DELETE FROM intermediates")).rowcount == 1
    finally:
        engine.dispose()
    assert _records(ca) == []

    server = start_server(ca, workers=1)
    try:
        rows = _records(ca)  # read before any `hsmca intermediate` command, which would record it too
        assert [(r.name, r.id, r.key_uri, r.certificate) for r in rows] == [
            ("intermediate_ca", _ski(inter.public_key()), "pkcs11:object=intermediate_ca",
             inter.public_bytes(Encoding.DER))]
        with _store(ca) as store:
            active = store.intermediates.active()
        assert active is not None and active.id == rows[0].id
        assert "recorded the intermediate of ca.json (CN=hsmca Intermediate CA,O=hsmca) as active" in server.log()
        done = _certificate(server, "leaf.internal")
        assert done.returncode == 0, done.stderr
        assert _chain(ca, "leaf.internal")[1] == inter
    finally:
        assert server.stop() == 0


# -- hsmca init --root: the production layout --------------------------------------------------


def _bare_ca(tmp_path: Path) -> DevCA:
    """A DevCA handle for a directory `hsmca init` has not run in yet."""
    base = tmp_path / "appliance"
    base.mkdir()
    (base / "password.txt").write_bytes(PASSWORD + b"\n")
    return DevCA(base, base / "config" / "ca.json", base / "password.txt", f"prod-{secrets.token_hex(4)}")


def test_init_with_a_ceremony_root_has_no_intermediate_and_serve_refuses(tmp_path: Path, softhsm_conf: Path) -> None:
    ca = _bare_ca(tmp_path)
    root = software_root("Ceremony Root CA")[0]
    root_file = _write(tmp_path / "root.crt", root)
    done = hsmca(ca, "init", "--root", str(root_file), "--password-file", str(ca.password_file),
                 "--token-label", ca.token_label)
    assert "Intermediate:             none yet; next: hsmca intermediate csr --key " \
           f"'pkcs11:token={ca.token_label};object=intermediate-1' --subject 'CN=...' > int.csr\n" in done.stdout
    assert softhsm.token_exists(ca.token_label, softhsm_conf)
    assert ca.root.read_bytes() == root.public_bytes(Encoding.PEM)
    assert not ca.intermediate.exists()
    data = json.loads(ca.config_path.read_text())
    assert "crt" not in data and "key" not in data
    assert data["root"] == str(ca.root)
    assert json.loads(hsmca(ca, "intermediate", "list", "--json").stdout) == []
    assert _records(ca) == []

    with pytest.raises(AssertionError) as refused:
        server = start_server(ca, workers=1, timeout=60)
        server.stop()  # it should not have started; do not leave it running
    message = str(refused.value)
    assert message.startswith("hsmca serve exited with 1:\n"), message
    assert f"error: cannot start: {NO_ACTIVE}\n" in message


@pytest.mark.parametrize(("kind", "message"), [
    ("not-a-ca", "--root is not a CA certificate"),
    ("not-self-signed", "--root must be a self-signed CA certificate (the root ceremony's output)"),
], ids=["not-a-ca", "not-self-signed"])
def test_init_refuses_a_root_that_is_not_a_self_signed_ca(tmp_path: Path, softhsm_conf: Path, kind: str,
                                                          message: str) -> None:
    ca = _bare_ca(tmp_path)
    root = software_root("Not A Root", ca=kind != "not-a-ca", self_signed=kind != "not-self-signed")[0]
    root_file = _write(tmp_path / "root.crt", root)
    done = hsmca(ca, "init", "--root", str(root_file), "--password-file", str(ca.password_file),
                 "--token-label", ca.token_label, check=False)
    _refused(done, message)
    assert not ca.config_path.exists() and not ca.root.exists()
    assert not softhsm.token_exists(ca.token_label, softhsm_conf)
