"""The ceremony plan (every refusal names its place in the file), the offline check, and the custodians' shares."""

from __future__ import annotations

import copy
import ipaddress
import os
import shutil
import socket
import stat
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ceremony.custodians import (
    SO_PIN,
    USER_PIN,
    check_share_files_absent,
    display_shares,
    prompt_shares,
    read_share_files,
    share_file,
    write_share_files,
)
from ceremony.network import NetworkUp, interfaces_up, require_offline
from ceremony.plan import MAX_PLAN_BYTES, Plan, PlanError, describe, load_plan, resolve
from ceremony.quorum import QuorumError, ShareSet, split_secret
from kms import KeySpec, intermediate_certificate, root_certificate

MODULE = "/usr/lib/softhsm/libsofthsm2.so"

ROOT_PLAN = f"""\
# reviewed 2026-11-01
ceremony: root
name: Corp root 2026
hsm:
  module: {MODULE}
  token: corp-root
custodians: [alice, bob, carol, dave, erin]
quorum: {{threshold: 3, shares: 5}}
key: {{label: root-2026, type: EC-P384}}
certificate:
  subject: "CN=Corp Root CA 2026,O=Corp"
  not_before: 2026-12-01T00:00:00Z
  not_after: 2046-12-01T00:00:00Z
outputs: {{directory: ceremony-2026, certificate: root_ca.crt}}
"""

INTERMEDIATE_PLAN = f"""\
ceremony: intermediate
name: Corp issuing CA 2026
hsm: {{module: {MODULE}, token: corp-root}}
custodians: [alice, bob, carol, dave, erin]
quorum: {{threshold: 3, shares: 5, share_set: 10972}}
root: {{key_label: root-2026, certificate: ceremony-2026/root_ca.crt}}
certificate:
  lifetime_days: 1825
  key_usage: [keyCertSign, cRLSign, digitalSignature]
  ext_key_usage: [serverAuth, clientAuth]
  name_constraints:
    permitted: {{dns: [corp.example, internal], ip: [10.0.0.0/8, "fd00::/8"]}}
    excluded: {{dns: [public.corp.example], email: [corp.example]}}
  crl_urls: [http://pki.corp.example/root.crl]
  ocsp_urls: [http://ocsp.corp.example/]
  ca_issuers_urls: [http://pki.corp.example/root.crt, "ldap://ldap.corp.example/cn=root"]
"""


def _write(tmp_path: Path, text: str | bytes, name: str = "plan.yaml") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _root_data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(ROOT_PLAN))


def _intermediate_data() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(INTERMEDIATE_PLAN))


def _refusal(tmp_path: Path, data: Any) -> str:
    path = _write(tmp_path, yaml.safe_dump(data))
    with pytest.raises(PlanError) as refused:
        load_plan(path)
    return str(refused.value).replace(str(path), "PLAN")


# -- valid plans -------------------------------------------------------------------------------


def test_a_root_plan_loads_with_its_exact_bytes(tmp_path: Path) -> None:
    path = _write(tmp_path, ROOT_PLAN)
    plan, raw = load_plan(path)
    assert raw == ROOT_PLAN.encode()  # comments and all: their hash goes into the transcript
    assert isinstance(plan, Plan) and plan.ceremony == "root" and plan.name == "Corp root 2026"
    assert (plan.hsm.module, plan.hsm.token, plan.hsm.slot) == (MODULE, "corp-root", None)
    assert plan.custodians == ["alice", "bob", "carol", "dave", "erin"]
    assert (plan.quorum.threshold, plan.quorum.shares, plan.quorum.share_set) == (3, 5, None)
    assert plan.key is not None and plan.key.label == "root-2026" and plan.key.spec is KeySpec.EC_P384
    assert plan.root is None
    c = plan.certificate
    assert c.name() == x509.Name.from_rfc4514_string("CN=Corp Root CA 2026,O=Corp")
    start, end = datetime(2026, 12, 1, tzinfo=UTC), datetime(2046, 12, 1, tzinfo=UTC)
    assert c.validity(datetime(2030, 1, 1, tzinfo=UTC)) == (start, end)
    assert (plan.outputs.directory, plan.outputs.certificate, plan.outputs.transcript) == \
        ("ceremony-2026", "root_ca.crt", "transcript.jsonl")
    profile = plan.profile()
    assert tuple(profile.key_usage) == ("keyCertSign", "cRLSign")
    assert profile.name_constraints is None and not profile.crl_urls and not profile.ca_issuers_urls


def test_an_intermediate_plan_loads(tmp_path: Path) -> None:
    plan, _ = load_plan(_write(tmp_path, INTERMEDIATE_PLAN))
    assert plan.ceremony == "intermediate" and plan.key is None
    assert plan.root is not None and (plan.root.key_label, plan.root.certificate) == \
        ("root-2026", "ceremony-2026/root_ca.crt")
    assert plan.quorum.share_set == 10972
    assert plan.certificate.subject is None and plan.certificate.name() is None  # the CSR's subject is used
    now = datetime(2027, 3, 4, 5, 6, 7, 890, tzinfo=UTC)
    start = datetime(2027, 3, 4, 5, 5, 7, tzinfo=UTC)  # a minute ago, whole seconds
    assert plan.certificate.validity(now) == (start, start + timedelta(days=1825))


def test_path_length_defaults_and_explicit_values(tmp_path: Path) -> None:
    root, _ = load_plan(_write(tmp_path, ROOT_PLAN, "root.yaml"))
    inter, _ = load_plan(_write(tmp_path, INTERMEDIATE_PLAN, "int.yaml"))
    # A root carries no pathLenConstraint unless its plan asks; an intermediate issues leaves only.
    assert (root.default_path_length, root.profile().path_length) == (None, None)
    assert (inter.default_path_length, inter.profile().path_length) == (0, 0)
    data = _root_data()
    data["certificate"]["path_length"] = 2
    assert load_plan(_write(tmp_path, yaml.safe_dump(data)))[0].profile().path_length == 2
    data = _intermediate_data()
    data["certificate"]["path_length"] = "none"
    assert load_plan(_write(tmp_path, yaml.safe_dump(data)))[0].profile().path_length is None
    data["certificate"]["path_length"] = 9
    assert _refusal(tmp_path, data) == ("PLAN has 1 problem(s):\n  certificate.path_length: Value error, "
                                        "path_length is 0 to 8, or 'none' for no constraint")


def test_the_intermediate_profile_makes_those_extensions(tmp_path: Path) -> None:
    plan, _ = load_plan(_write(tmp_path, INTERMEDIATE_PLAN))
    profile = plan.profile()
    assert tuple(profile.crl_urls) == ("http://pki.corp.example/root.crl",)
    assert tuple(profile.ocsp_urls) == ("http://ocsp.corp.example/",)
    assert tuple(profile.ca_issuers_urls) == ("http://pki.corp.example/root.crt", "ldap://ldap.corp.example/cn=root")
    assert tuple(profile.ext_key_usage) == (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH)
    assert profile.name_constraints == x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("corp.example"), x509.DNSName("internal"),
                            x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")),
                            x509.IPAddress(ipaddress.ip_network("fd00::/8"))],
        excluded_subtrees=[x509.DNSName("public.corp.example"), x509.RFC822Name("corp.example")])
    assert profile.name_constraints_critical is True

    # What the ceremony signs with that profile (software keys here; the ceremony's are in the HSM).
    root_key, int_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC).replace(microsecond=0)
    root = root_certificate(root_key, x509.Name.from_rfc4514_string("CN=Root"), now - timedelta(days=1),
                            now + timedelta(days=3650), path_length=None)
    start, end = plan.certificate.validity(now)
    cert = intermediate_certificate(root_key, root, int_key.public_key(), x509.Name.from_rfc4514_string("CN=Int"),
                                    start, end, profile=profile)
    ext = cert.extensions
    assert ext.get_extension_for_class(x509.BasicConstraints).value == x509.BasicConstraints(ca=True, path_length=0)
    ku = ext.get_extension_for_class(x509.KeyUsage).value
    assert (ku.key_cert_sign, ku.crl_sign, ku.digital_signature) == (True, True, True)
    nc = ext.get_extension_for_class(x509.NameConstraints)
    assert nc.critical and nc.value == profile.name_constraints
    crl = ext.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [p.full_name for p in crl] == [[x509.UniformResourceIdentifier("http://pki.corp.example/root.crl")]]
    aia = ext.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(a.access_method, a.access_location.value) for a in aia] == [
        (AuthorityInformationAccessOID.OCSP, "http://ocsp.corp.example/"),
        (AuthorityInformationAccessOID.CA_ISSUERS, "http://pki.corp.example/root.crt"),
        (AuthorityInformationAccessOID.CA_ISSUERS, "ldap://ldap.corp.example/cn=root")]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_name_constraints_may_be_non_critical_or_only_excluded(tmp_path: Path) -> None:
    data = _intermediate_data()
    data["certificate"]["name_constraints"] = {"excluded": {"uri": ["public.corp.example"]}, "critical": False}
    profile = load_plan(_write(tmp_path, yaml.safe_dump(data)))[0].profile()
    assert profile.name_constraints == x509.NameConstraints(
        permitted_subtrees=None, excluded_subtrees=[x509.UniformResourceIdentifier("public.corp.example")])
    assert profile.name_constraints_critical is False
    data["certificate"]["name_constraints"] = {}  # nothing permitted or excluded: no extension at all
    assert load_plan(_write(tmp_path, yaml.safe_dump(data)))[0].profile().name_constraints is None


# -- refusals: each names the place in the plan ------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[last] = value
    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for p in parents:
            node = node[p]
        del node[last]
    return change


ROOT_REFUSALS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown-field": (_set("colour", "red"), "colour: Extra inputs are not permitted"),
    "unknown-nested-field": (_set("hsm.pin", "1234"), "hsm.pin: Extra inputs are not permitted"),
    "custodians-duplicate": (_set("custodians", ["alice", "bob", "carol", "dave", " alice "]),
                             "custodians: Value error, custodian names must be unique"),
    "custodian-name-unfit-for-a-file": (_set("custodians", ["alice", "bob", "carol", "dave", "../erin"]),
                                        "custodians: Value error, custodian names are letters, digits, '-', '_' "
                                        "or '.' (they name share files)"),
    "shares-not-custodians": (_set("quorum.shares", 4),
                              "(plan): Value error, quorum.shares is 4 but 5 custodians are listed"),
    "threshold-above-shares": (_set("quorum.threshold", 6),
                               "(plan): Value error, quorum.threshold cannot exceed quorum.shares"),
    "root-without-key": (_drop("key"),
                         "(plan): Value error, a root ceremony needs 'key' (label and type of the root key)"),
    "root-with-root": (_set("root", {"key_label": "old", "certificate": "old.crt"}),
                       "(plan): Value error, 'root' belongs in an intermediate ceremony's plan"),
    "root-without-subject": (_drop("certificate.subject"),
                             "(plan): Value error, a root ceremony needs certificate.subject"),
    "unknown-key-type": (_set("key.type", "DSA-1024"),
                         "key.type: Input should be 'EC-P256', 'EC-P384', 'RSA-3072' or 'RSA-4096'"),
    "empty-subject": (_set("certificate.subject", ""), "certificate.subject: Value error, the subject cannot be empty"),
    "naive-datetime": (_set("certificate.not_before", datetime(2026, 12, 1)),
                       "certificate.not_before: Value error, give times in UTC with a zone, e.g. 2026-12-01T00:00:00Z"),
    "not-after-and-lifetime": (_set("certificate.lifetime_days", 3650),
                               "certificate: Value error, give not_after or lifetime_days, not both"),
    "neither-not-after-nor-lifetime": (_drop("certificate.not_after"),
                                       "certificate: Value error, give not_after or lifetime_days"),
    "ends-before-it-starts": (_set("certificate.not_after", datetime(2026, 11, 1, tzinfo=UTC)),
                              "certificate: Value error, not_after must be later than not_before"),
    "unknown-key-usage": (_set("certificate.key_usage", ["keyCertSign", "nonRepudiation"]),
                          "certificate.key_usage: Value error, unknown key usage ['nonRepudiation']; choose from "
                          "digitalSignature, keyCertSign, cRLSign"),
    "key-usage-without-keyCertSign": (_set("certificate.key_usage", ["cRLSign", "digitalSignature"]),
                                      "certificate.key_usage: Value error, a CA certificate needs keyCertSign"),
    "unknown-ext-key-usage": (_set("certificate.ext_key_usage", ["anyPurpose"]),
                              "certificate.ext_key_usage: Value error, unknown extended key usage ['anyPurpose']; "
                              "choose from serverAuth, clientAuth, codeSigning, emailProtection, OCSPSigning"),
    "ip-network-with-host-bits": (
        _set("certificate.name_constraints", {"permitted": {"ip": ["10.0.0.0/8", "192.168.1.1/16"]}}),
        "certificate.name_constraints.permitted.ip: Value error, 192.168.1.1/16 has host bits set"),
    "not-an-ip-network": (_set("certificate.name_constraints", {"excluded": {"ip": ["intranet"]}}),
                          "certificate.name_constraints.excluded.ip: Value error, 'intranet' does not appear to be "
                          "an IPv4 or IPv6 network"),
    "non-http-crl-url": (_set("certificate.crl_urls", ["http://ok.example/a.crl", "ftp://pki.example/root.crl"]),
                         "certificate.crl_urls: Value error, not an http(s) or ldap URL: ftp://pki.example/root.crl"),
    "non-http-ocsp-url": (_set("certificate.ocsp_urls", ["ocsp.example"]),
                          "certificate.ocsp_urls: Value error, not an http(s) or ldap URL: ocsp.example"),
    "lifetime-zero": (_set("certificate.lifetime_days", 0),
                      "certificate.lifetime_days: Input should be greater than or equal to 1"),
}


@pytest.mark.parametrize("case", list(ROOT_REFUSALS))
def test_a_root_plan_refusal_names_the_field(tmp_path: Path, case: str) -> None:
    change, line = ROOT_REFUSALS[case]
    data = _root_data()
    change(data)
    assert _refusal(tmp_path, data) == f"PLAN has 1 problem(s):\n  {line}"


def test_a_malformed_subject_is_refused_at_its_field(tmp_path: Path) -> None:
    data = _root_data()
    data["certificate"]["subject"] = "Corp Root CA"  # not RFC 4514: no attribute type
    message = _refusal(tmp_path, data)
    assert message == ("PLAN has 1 problem(s):\n  certificate.subject: Value error, not an RFC 4514 name "
                       "(expected NAME=value pairs, e.g. CN=Corp Root CA)"), message


def test_intermediate_plan_refusals(tmp_path: Path) -> None:
    data = _intermediate_data()
    data["key"] = {"label": "int-key"}
    assert _refusal(tmp_path, data) == (
        "PLAN has 1 problem(s):\n  (plan): Value error, 'key' belongs in a root ceremony's plan (the key signed here "
        "is the CSR's or the new root's)")
    data = _intermediate_data()
    del data["root"]
    message = _refusal(tmp_path, data)
    assert message == ("PLAN has 1 problem(s):\n  (plan): Value error, an intermediate ceremony needs 'root' "
                       "(key_label and certificate of the signing root)"), message
    data = _intermediate_data()
    data["ceremony"] = "subordinate"
    assert _refusal(tmp_path, data).startswith("PLAN has 1 problem(s):\n  ceremony: Input should be 'root', ")


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    data = _root_data()
    data["hsm"]["token"] = ""
    data["quorum"]["threshold"] = 0
    data["key"]["label"] = "x" * 65
    assert _refusal(tmp_path, data) == (
        "PLAN has 3 problem(s):\n"
        "  hsm.token: String should have at least 1 character\n"
        "  quorum.threshold: Input should be greater than or equal to 1\n"
        "  key.label: String should have at most 64 characters")


@pytest.mark.parametrize(("text", "expected"), [
    ("- root\n- intermediate\n", "PLAN: a plan is a YAML mapping (ceremony:, name:, hsm:, ...)"),
    ("just words\n", "PLAN: a plan is a YAML mapping (ceremony:, name:, hsm:, ...)"),
    ("", "PLAN: a plan is a YAML mapping (ceremony:, name:, hsm:, ...)"),
], ids=["list", "scalar", "empty"])
def test_a_plan_is_a_mapping(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(PlanError) as refused:
        load_plan(path)
    assert str(refused.value).replace(str(path), "PLAN") == expected


def test_invalid_yaml_is_refused_with_the_parser_position(tmp_path: Path) -> None:
    path = _write(tmp_path, "ceremony: root\nname: [unclosed\nhsm: {}\n")
    with pytest.raises(PlanError) as refused:
        load_plan(path)
    message = str(refused.value)
    assert message.startswith(f"{path} is not valid YAML: "), message
    assert "line 3" in message  # where the parser stopped, for the reviewer to look


def test_plans_are_limited_to_256_kib(tmp_path: Path) -> None:
    padding = MAX_PLAN_BYTES - len(ROOT_PLAN.encode()) - 1
    at_limit = ROOT_PLAN + "#" * padding + "\n"
    assert len(at_limit.encode()) == MAX_PLAN_BYTES == 256 * 1024
    assert load_plan(_write(tmp_path, at_limit))[0].name == "Corp root 2026"
    path = _write(tmp_path, at_limit + "\n", "big.yaml")
    with pytest.raises(PlanError) as refused:
        load_plan(path)
    assert str(refused.value) == f"{path} is larger than 256 KiB: not a ceremony plan"


def test_a_missing_plan_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "plan.yaml"
    with pytest.raises(PlanError) as refused:
        load_plan(path)
    assert str(refused.value) == f"cannot read the plan {path}: No such file or directory"
    with pytest.raises(PlanError) as refused:
        load_plan(tmp_path)  # a directory
    assert str(refused.value) == f"cannot read the plan {tmp_path}: Is a directory"


# -- resolve and describe --------------------------------------------------------------------


def test_plan_paths_are_relative_to_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan_path = tmp_path / "plans" / "root.yaml"
    assert resolve(plan_path, "out/root_ca.crt") == tmp_path / "plans" / "out" / "root_ca.crt"
    assert resolve(plan_path, "../shared/root_ca.crt") == tmp_path / "plans" / ".." / "shared" / "root_ca.crt"
    assert resolve(plan_path, "/srv/ceremony/root_ca.crt") == Path("/srv/ceremony/root_ca.crt")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve(plan_path, "~/root_ca.crt") == tmp_path / "home" / "root_ca.crt"


def test_describe_a_root_ceremony(tmp_path: Path) -> None:
    data = _root_data()
    data["hsm"]["slot"] = 3
    lines = describe(load_plan(_write(tmp_path, yaml.safe_dump(data)))[0])
    assert lines[:6] == [
        "root ceremony: Corp root 2026",
        "custodians (5): alice, bob, carol, dave, erin; quorum 3 of 5",
        f"1. initialise token 'corp-root' in {MODULE} (slot 3)",
        "2. split a new SO PIN and a new user PIN into 5 shares each, 3 needed",
        "3. generate the root key 'root-2026' (EC-P384) inside the token",
        "4. self-sign the root certificate 'CN=Corp Root CA 2026,O=Corp'"]
    assert lines[6].startswith("   validity: 2026-12-01 00:00:00+00:00 to 2046-12-01 00:00:00+00:00; path length ")
    assert lines[6].endswith("; key usage keyCertSign, cRLSign")
    assert lines[-1] == "last: seal the transcript transcript.jsonl with the root key"
    assert len(lines) == 8  # no name constraints, CRL, OCSP or AIA lines for a plan without them
    assert " (first free slot)" in describe(load_plan(_write(tmp_path, ROOT_PLAN))[0])[2]


def test_describe_an_intermediate_ceremony(tmp_path: Path) -> None:
    lines = describe(load_plan(_write(tmp_path, INTERMEDIATE_PLAN))[0])
    assert lines[:5] == [
        "intermediate ceremony: Corp issuing CA 2026",
        "custodians (5): alice, bob, carol, dave, erin; quorum 3 of 5",
        "1. collect 3 custodians' user-PIN shares and rebuild the PIN in memory",
        "2. log in to token 'corp-root' and open the root key 'root-2026'",
        "3. sign the intermediate certificate for the CSR's key, subject (the CSR subject)"]
    assert lines[5] == ("   validity: now to +1825 days; path length 0; key usage keyCertSign, cRLSign, "
                        "digitalSignature")
    assert lines[6].startswith("   name constraints: <NameConstraints(permitted_subtrees=[<DNSName(value='corp.")
    assert lines[7:] == ["   CRL: http://pki.corp.example/root.crl", "   OCSP: http://ocsp.corp.example/",
                         "   CA issuers: http://pki.corp.example/root.crt, ldap://ldap.corp.example/cn=root",
                         "last: seal the transcript transcript.jsonl with the root key"]


# -- the machine is offline --------------------------------------------------------------------


def _sysfs_flags(name: str) -> int | None:
    try:
        return int(Path(f"/sys/class/net/{name}/flags").read_text(), 16)
    except (OSError, ValueError):
        return None


def test_interfaces_up_are_sorted_and_never_loopback() -> None:
    up = interfaces_up()
    names = [n for _, n in socket.if_nameindex()]
    assert up == sorted(up) and set(up) <= set(names)
    assert "lo" not in up
    if sorted(os.listdir("/sys/class/net")) == sorted(names):  # sysfs shows this namespace: cross-check
        expected = [n for n in names if (f := _sysfs_flags(n)) is not None and f & 0x1 and not f & 0x8]
        assert up == sorted(expected)
    if up:
        with pytest.raises(NetworkUp) as refused:
            require_offline(False)
        assert str(refused.value).startswith(f"network interface(s) up: {', '.join(up)}. A ceremony runs on ")
        assert "--allow-network" in str(refused.value)
        assert require_offline(True) == up
    else:
        assert require_offline(False) == []


_PROBE = "from ceremony.network import interfaces_up; print(','.join(interfaces_up()))"


def _in_new_netns(setup: str) -> subprocess.CompletedProcess[str]:
    script = f"{setup}\nexec {sys.executable} -c \"{_PROBE}\""
    return subprocess.run(["unshare", "-n", "sh", "-ec", script], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[2])


@pytest.mark.skipif(shutil.which("unshare") is None or shutil.which("ip") is None, reason="needs unshare and ip")
def test_interfaces_up_in_a_namespace_of_our_own() -> None:
    done = _in_new_netns("")
    if done.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {done.stderr.strip()}")
    assert done.stdout == "\n"  # only lo, and it is down
    done = _in_new_netns("ip link set lo up")
    assert (done.returncode, done.stdout) == (0, "\n"), done.stderr  # loopback is excluded by its flag, even up
    done = _in_new_netns("ip link set lo up\n"
                         "ip link add zz0 type veth peer name yy0\n"
                         "ip link add aa0 type veth peer name ab0\n"
                         "ip link add mm0 type veth peer name mm1\n"
                         "for dev in zz0 yy0 aa0 ab0; do ip link set $dev up; done")
    if done.returncode != 0:
        pytest.skip(f"cannot make veth interfaces here: {done.stderr.strip()}")
    assert done.stdout == "aa0,ab0,yy0,zz0\n"  # sorted, not in creation order; mm0/mm1 are down


# -- custodians' shares ----------------------------------------------------------------------

CUSTODIANS = ["alice", "bob", "carol"]


@pytest.fixture(scope="module")
def share_sets() -> dict[str, ShareSet]:
    return {SO_PIN: split_secret(bytes(range(16)), CUSTODIANS, 2),
            USER_PIN: split_secret(bytes(range(16, 32)), CUSTODIANS, 2)}


def test_share_files_are_private_and_never_overwritten(tmp_path: Path, share_sets: dict[str, ShareSet]) -> None:
    directory = tmp_path / "shares"
    check_share_files_absent(directory, CUSTODIANS, [SO_PIN, USER_PIN])
    written = write_share_files(directory, share_sets)
    assert written == [directory / f"{c}.{k}.txt" for k in (SO_PIN, USER_PIN) for c in CUSTODIANS]
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert (directory / "bob.user-pin.txt").read_text() == share_sets[USER_PIN].shares["bob"] + "\n"
    assert share_file(directory, "carol", SO_PIN) == directory / "carol.so-pin.txt"

    before = {p: p.read_bytes() for p in written}
    with pytest.raises(QuorumError) as refused:
        check_share_files_absent(directory, ["carol", "dave"], [USER_PIN])
    assert str(refused.value) == (f"share files already exist ({directory / 'carol.user-pin.txt'}); "
                                  "move them away first")
    other = {USER_PIN: split_secret(bytes(range(32, 48)), CUSTODIANS, 2)}
    with pytest.raises(FileExistsError):
        write_share_files(directory, other)  # O_EXCL: a second split never replaces the first
    assert {p: p.read_bytes() for p in written} == before


def test_read_share_files_names_the_missing_custodian(tmp_path: Path, share_sets: dict[str, ShareSet]) -> None:
    directory = tmp_path / "shares"
    write_share_files(directory, share_sets)
    (directory / "alice.user-pin.txt").write_text("  " + share_sets[USER_PIN].shares["alice"] + "\n\n")
    assert read_share_files(directory, ["alice", "carol"], USER_PIN) == {
        "alice": share_sets[USER_PIN].shares["alice"], "carol": share_sets[USER_PIN].shares["carol"]}
    (directory / "bob.user-pin.txt").unlink()
    with pytest.raises(QuorumError) as refused:
        read_share_files(directory, ["alice", "bob", "carol"], USER_PIN)
    assert str(refused.value) == (f"no user-pin share for custodian bob: {directory / 'bob.user-pin.txt'} "
                                  "does not exist")
    (directory / "bob.user-pin.txt").mkdir()
    with pytest.raises(QuorumError) as refused:
        read_share_files(directory, ["bob"], USER_PIN)
    assert str(refused.value).startswith(f"cannot read bob's share from {directory / 'bob.user-pin.txt'}: ")


class FakeTerminal:
    """The Prompter protocol over a script of answers, recording what the custodians were shown."""

    def __init__(self, answers: list[str], *, interactive: bool = True) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []
        self.events: list[tuple[str, str]] = []
        self._interactive = interactive

    def say(self, text: str) -> None:
        self.events.append(("say", text))

    def ask_hidden(self, prompt: str) -> str:
        self.asked.append(prompt)
        return self.answers.pop(0)

    def pause(self, prompt: str) -> None:
        self.events.append(("pause", prompt))

    def clear(self) -> None:
        self.events.append(("clear", ""))

    @property
    def interactive(self) -> bool:
        return self._interactive


def test_prompt_shares_stops_at_the_threshold_and_skips_absent_custodians() -> None:
    io = FakeTerminal(["", "  bob words  ", "\n", "dave words", "erin words"])
    shares = prompt_shares(["alice", "bob", "carol", "dave", "erin"], 2, USER_PIN, io)
    assert shares == {"bob": "bob words", "dave": "dave words"}
    assert io.asked == [f"{c}: type your user pin share (Enter if absent)" for c in ("alice", "bob", "carol", "dave")]
    assert io.answers == ["erin words"]  # erin was never asked: the quorum was already there


def test_prompt_shares_returns_what_it_got_when_too_few_are_present() -> None:
    io = FakeTerminal(["", "bob words", ""])
    assert prompt_shares(["alice", "bob", "carol"], 2, SO_PIN, io) == {"bob": "bob words"}
    assert io.asked[-1] == "carol: type your so pin share (Enter if absent)" and io.answers == []


def test_shares_are_shown_one_custodian_at_a_time(share_sets: dict[str, ShareSet]) -> None:
    with pytest.raises(QuorumError) as refused:
        display_shares(share_sets, CUSTODIANS, FakeTerminal([], interactive=False))
    assert str(refused.value).startswith("shares are shown on a terminal, one custodian at a time")
    io = FakeTerminal([])
    display_shares(share_sets, CUSTODIANS, io)
    kinds = [kind for kind, _ in io.events]
    assert kinds[0] == "clear" and kinds[-1] == "clear"
    # Each custodian: screen cleared, called alone, their words, then cleared before the next one comes.
    starts = [i for i, (kind, text) in enumerate(io.events) if kind == "pause" and text.startswith("Custodian ")]
    assert [io.events[i][1].split(":")[0] for i in starts] == [f"Custodian {c}" for c in CUSTODIANS]
    for custodian, start in zip(CUSTODIANS, starts, strict=True):
        assert io.events[start - 1] == ("clear", "")
        shown = " ".join(text for kind, text in io.events[start:start + 12] if kind == "say")
        words = share_sets[USER_PIN].shares[custodian].split()
        assert f"{custodian}'s USER PIN share (set {share_sets[USER_PIN].identifier}, 2 of 3 needed)" in shown
        assert f" 1. {words[0]}" in shown and f"{len(words):2d}. {words[-1]}" in shown
        others = [c for c in CUSTODIANS if c != custodian]
        assert not any(f"{o}'s" in shown for o in others)
