"""The ceremony transcript: hash chain, seals by the root key, and what `verify` says about tampering."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from ceremony.transcript import (
    GENESIS,
    Report,
    Transcript,
    TranscriptError,
    file_digest,
    sha256_hex,
    summary,
    verify,
)

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
T0 = datetime(2024, 5, 1, 10, 0, 0, tzinfo=timezone.utc)
INTERMEDIATE = b"-----BEGIN CERTIFICATE-----\nintermediate stand-in\n-----END CERTIFICATE-----\n"
PLAN = b"name: test ceremony\n"


def certificate(name: str, key: Key, issuer: tuple[str, Key] | None = None) -> x509.Certificate:
    issuer_name, issuer_key = issuer or (name, key)
    algorithm = None if isinstance(issuer_key, ed25519.Ed25519PrivateKey) else hashes.SHA384()
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(T0).not_valid_after(T0 + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(issuer_key, algorithm))


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def root_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


@pytest.fixture(scope="module")
def root(root_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return certificate("Test Root", root_key)


def ticking_clock() -> Callable[[], datetime]:
    """One second per line, so times are deterministic and increasing."""
    ticks = iter(range(10_000))
    return lambda: T0 + timedelta(seconds=next(ticks))


def write_ceremonies(path: Path, key: Key, cert: x509.Certificate) -> None:
    """Root ceremony (lines 1-5) then intermediate ceremony (lines 6-9) in one file."""
    clock = ticking_clock()
    path.parent.mkdir(parents=True, exist_ok=True)
    plan = path.parent / "plan.yaml"
    plan.write_bytes(PLAN)
    t = Transcript.open(path, "root", clock=clock)
    t.record("plan.loaded", "Loaded the plan", inputs={"plan": file_digest(plan)})
    t.record("shares.distributed", "Split the PINs into 5 shares, 3 needed",
             details={"custodians": ["alice", "bob", "carol", "dave", "erin"], "threshold": 3})
    t.record("certificate.sign", "Self-signed the root certificate",
             outputs={"root": {"sha256": sha256_hex(pem(cert))}})
    t.seal(key, cert)
    t = Transcript.open(path, "intermediate", clock=clock)
    t.record("quorum.reconstructed", "3 custodians gave their shares", details={"custodians": ["alice", "bob", "erin"]})
    t.record("certificate.sign", "Signed the intermediate certificate",
             outputs={"intermediate": {"sha256": sha256_hex(INTERMEDIATE), "path": "out/intermediate.crt"}})
    t.seal(key, cert)


@pytest.fixture
def transcript(tmp_path: Path, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> Path:
    path = tmp_path / "out" / "transcript.jsonl"
    write_ceremonies(path, root_key, root)
    return path


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def put(path: Path, raws: list[bytes]) -> None:
    path.write_bytes(b"".join(raw + b"\n" for raw in raws))


def canonical(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def edit(path: Path, number: int, **fields: Any) -> None:
    """Change fields of line `number` and write it back canonically, as a careful forger would."""
    raws = lines(path)
    raws[number - 1] = canonical({**json.loads(raws[number - 1]), **fields})
    put(path, raws)


def unvouched(label: str, content: bytes, report: Report, seq: int, segment: int) -> str:
    """The problem for a file recorded as an output of a segment whose record no longer verifies."""
    return (f"the {label} file (sha256 {sha256_hex(content)}) is recorded as the output of step certificate.sign "
            f"(#{seq}, output {label!r}) of ceremony {report.segments[segment].ceremony_id}, but that ceremony's "
            "record does not verify")


def check(path: Path, ca: x509.Certificate, **files: bytes) -> Report:
    """Verify with the two files an auditor would give: the root certificate and the intermediate."""
    return verify(path, ca, {"root": pem(ca), "intermediate": INTERMEDIATE, **files})


def test_two_ceremonies_verify(transcript: Path, root: x509.Certificate) -> None:
    report = check(transcript, root)
    assert report.problems == []
    assert report.ok
    assert [(s.kind, len(s.steps), s.signature_ok) for s in report.segments] == \
        [("root", 5, True), ("intermediate", 4, True)]
    root_sha = hashlib.sha256(root.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert {s.signer_sha256 for s in report.segments} == {root_sha}
    first, second = report.segments
    assert (first.started, first.sealed_at) == ("2024-05-01T10:00:00Z", "2024-05-01T10:00:04Z")
    assert report.matched == {
        "root": f"step certificate.sign (#4, output 'root') of ceremony {first.ceremony_id}",
        "intermediate": f"step certificate.sign (#8, output 'intermediate') of ceremony {second.ceremony_id}"}


def test_lines_are_canonical_and_chained(transcript: Path) -> None:
    raws = lines(transcript)
    objs = [json.loads(raw) for raw in raws]
    assert [o["seq"] for o in objs] == list(range(1, 10))
    assert [o["step"] for o in objs] == ["ceremony.start", "plan.loaded", "shares.distributed", "certificate.sign",
                                         "seal", "ceremony.start", "quorum.reconstructed", "certificate.sign", "seal"]
    assert objs[0]["prev"] == GENESIS
    assert all(objs[i]["prev"] == hashlib.sha256(raws[i - 1]).hexdigest() for i in range(1, 9))
    assert all(canonical(o) == raw for o, raw in zip(objs, raws, strict=True))
    assert objs[0]["details"] == {"kind": "root"} and objs[5]["details"] == {"kind": "intermediate"}
    assert len({o["ceremony"] for o in objs[:5]}) == 1 and objs[5]["ceremony"] != objs[0]["ceremony"]
    assert objs[1]["inputs"]["plan"]["sha256"] == hashlib.sha256(PLAN).hexdigest()
    assert objs[4]["algorithm"] == "ECDSA-SHA384" and objs[4]["signer"]["subject"] == "CN=Test Root"
    assert stat.S_IMODE(transcript.stat().st_mode) == 0o644


@pytest.mark.parametrize(("make", "algorithm"), [
    (lambda: rsa.generate_private_key(65537, 2048), "RSA-PKCS1v15-SHA256"),
    (ed25519.Ed25519PrivateKey.generate, "Ed25519"),
    (lambda: ec.generate_private_key(ec.SECP256R1()), "ECDSA-SHA256"),
])
def test_other_key_types_seal_and_verify(tmp_path: Path, make: Callable[[], Key], algorithm: str) -> None:
    key = make()
    cert = certificate("Other Root", key)
    path = tmp_path / "t.jsonl"
    write_ceremonies(path, key, cert)
    report = check(path, cert)
    assert report.problems == []
    assert json.loads(lines(path)[-1])["algorithm"] == algorithm


def test_edited_middle_line(transcript: Path, root: x509.Certificate) -> None:
    edit(transcript, 3, details={"custodians": ["alice", "bob", "mallory"], "threshold": 3})
    report = check(transcript, root)
    assert report.problems == [
        "line 4: its prev does not match the SHA-256 of line 3 (a line was changed, removed or moved)",
        # the first seal still verifies, but it no longer vouches for the lines before the break
        unvouched("root", pem(root), report, 4, 0)]
    assert [(s.signature_ok, s.intact) for s in report.segments] == [(True, False), (True, True)]
    assert report.matched == {"intermediate": f"step certificate.sign (#8, output 'intermediate') of ceremony "
                                              f"{report.segments[1].ceremony_id}"}


def test_edited_seal_lines(transcript: Path, root: x509.Certificate) -> None:
    edit(transcript, 5, time="2024-05-02T00:00:00Z")
    report = check(transcript, root)
    assert report.problems == [
        "line 5: the seal does not verify with the root certificate's key: the signature does not verify",
        "line 6: its prev does not match the SHA-256 of line 5 (a line was changed, removed or moved)",
        unvouched("root", pem(root), report, 4, 0)]


def test_edited_last_seal(transcript: Path, root: x509.Certificate) -> None:
    edit(transcript, 9, action="Transcript sealed by someone else")
    report = check(transcript, root)
    assert report.problems == [
        "line 9: the seal does not verify with the root certificate's key: the signature does not verify",
        unvouched("intermediate", INTERMEDIATE, report, 8, 1)]


def test_removed_line(transcript: Path, root: x509.Certificate) -> None:
    raws = lines(transcript)
    put(transcript, raws[:2] + raws[3:])
    report = check(transcript, root)
    assert report.problems == [
        "line 3: its prev does not match the SHA-256 of line 2 (a line was changed, removed or moved)",
        "line 3: seq is 4, expected 3 (a line was removed, added or moved)",
        unvouched("root", pem(root), report, 4, 0)]


def test_swapped_lines(transcript: Path, root: x509.Certificate) -> None:
    raws = lines(transcript)
    raws[6], raws[7] = raws[7], raws[6]
    put(transcript, raws)
    problems = check(transcript, root).problems
    assert problems[:2] == [
        "line 7: its prev does not match the SHA-256 of line 6 (a line was changed, removed or moved)",
        "line 7: seq is 8, expected 7 (a line was removed, added or moved)"]
    assert "line 8: its prev does not match the SHA-256 of line 7 (a line was changed, removed or moved)" in problems
    assert "line 9: its prev does not match the SHA-256 of line 8 (a line was changed, removed or moved)" in problems


def test_truncated_last_line(transcript: Path, root: x509.Certificate) -> None:
    transcript.write_bytes(transcript.read_bytes()[:-40])
    report = check(transcript, root)
    second = report.segments[1].ceremony_id
    assert report.problems[:2] == [
        "line 9 is incomplete (no newline at its end): the file was truncated or a write was interrupted",
        f"ceremony {second} (from line 6) has no seal at its end: the ceremony was interrupted "
        "or the transcript was cut short"]
    assert report.problems[2] == unvouched("intermediate", INTERMEDIATE, report, 8, 1)
    assert report.segments[1].sealed_at is None


def test_not_json(transcript: Path, root: x509.Certificate) -> None:
    raws = lines(transcript)
    raws[1] = b"{not json"
    put(transcript, raws)
    problems = check(transcript, root).problems
    assert problems[0].startswith("line 2 is not valid JSON: ")
    assert problems[1] == "line 3: its prev does not match the SHA-256 of line 2 (a line was changed, removed or moved)"


def test_file_that_is_not_an_output(transcript: Path, root: x509.Certificate) -> None:
    other = b"another certificate"
    report = check(transcript, root, intermediate=other)
    assert report.problems == [f"the intermediate file (sha256 {sha256_hex(other)}) is not an output of any "
                               "ceremony in this transcript"]
    assert "intermediate" not in report.matched


def test_seal_missing_between_ceremonies(transcript: Path, root: x509.Certificate) -> None:
    """Drop the first seal and re-chain everything, as a forger without the root key would have to."""
    objs = [json.loads(raw) for raw in lines(transcript)]
    del objs[4]
    prev, raws = GENESIS, []
    for seq, obj in enumerate(objs, start=1):
        raws.append(canonical({**obj, "seq": seq, "prev": prev}))
        prev = hashlib.sha256(raws[-1]).hexdigest()
    put(transcript, raws)
    report = check(transcript, root)
    first = report.segments[0].ceremony_id
    assert f"line 5 starts ceremony {report.segments[1].ceremony_id} but ceremony {first} (from line 1) " \
           "was not sealed before it" in report.problems
    assert "line 8: the seal does not verify with the root certificate's key: the signature does not verify" \
        in report.problems


def test_transcript_signed_by_another_key(tmp_path: Path, root: x509.Certificate) -> None:
    other_key = ec.generate_private_key(ec.SECP384R1())
    other = certificate("Test Root", other_key)  # same name, different key
    path = tmp_path / "t.jsonl"
    write_ceremonies(path, other_key, other)
    root_sha = sha256_hex(root.public_bytes(serialization.Encoding.DER))
    other_sha = sha256_hex(other.public_bytes(serialization.Encoding.DER))
    report = verify(path, root, {})
    assert report.problems == [
        f"line 5: the seal names the signer certificate sha256 {other_sha}, not the root certificate "
        f"(sha256 {root_sha})",
        "line 5: the seal does not verify with the root certificate's key: the signature does not verify",
        f"line 9: the seal names the signer certificate sha256 {other_sha}, not the root certificate "
        f"(sha256 {root_sha})",
        "line 9: the seal does not verify with the root certificate's key: the signature does not verify"]
    assert [s.signature_ok for s in report.segments] == [False, False]


def test_seal_refuses_a_key_that_does_not_match_the_certificate(tmp_path: Path, root: x509.Certificate) -> None:
    path = tmp_path / "t.jsonl"
    t = Transcript.open(path, "root")
    before = path.read_bytes()
    with pytest.raises(TranscriptError, match=r"not sealed: the key does not match the certificate of CN=Test Root"):
        t.seal(ec.generate_private_key(ec.SECP384R1()), root)
    assert path.read_bytes() == before


def test_root_that_is_not_self_signed(tmp_path: Path, root_key: ec.EllipticCurvePrivateKey) -> None:
    """The root key, but in a certificate another CA issued: the seal verifies, the root does not."""
    issued = certificate("Not A Root", root_key, ("Other CA", ec.generate_private_key(ec.SECP384R1())))
    path = tmp_path / "t.jsonl"
    Transcript.open(path, "root").seal(root_key, issued)
    problems = verify(path, issued, {}).problems
    assert len(problems) == 1
    assert problems[0].startswith("the root certificate CN=Not A Root is not self-signed: ")


def test_open_refuses_an_unsealed_transcript(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    t = Transcript.open(path, "root")
    t.record("hsm.token-init", "Initialised the token")
    before = path.read_bytes()
    with pytest.raises(TranscriptError) as caught:
        Transcript.open(path, "intermediate")
    message = str(caught.value)
    assert message.startswith(f"the transcript {path} cannot be continued: ceremony {t.ceremony_id} (from line 1) "
                              "has no seal at its end")
    assert message.endswith("write this ceremony to a new file.")
    assert path.read_bytes() == before


def test_open_refuses_a_partial_last_line(transcript: Path) -> None:
    transcript.write_bytes(transcript.read_bytes()[:-1])
    with pytest.raises(TranscriptError, match=r"line 9 is incomplete"):
        Transcript.open(transcript, "intermediate")


def test_open_continues_a_sealed_transcript(transcript: Path, root_key: ec.EllipticCurvePrivateKey,
                                            root: x509.Certificate) -> None:
    t = Transcript.open(transcript, "intermediate", clock=lambda: datetime(2025, 1, 1, 12, 0, 0, 999_999))
    assert t.path == transcript
    line = t.record("certificate.sign", "Signed another intermediate")
    assert (line["seq"], line["time"], line["ceremony"]) == (11, "2025-01-01T12:00:00Z", t.ceremony_id)
    t.seal(root_key, root)
    report = check(transcript, root)
    assert report.problems == []
    assert [s.kind for s in report.segments] == ["root", "intermediate", "intermediate"]


def test_nothing_after_the_seal(tmp_path: Path, root_key: ec.EllipticCurvePrivateKey, root: x509.Certificate) -> None:
    t = Transcript.open(tmp_path / "t.jsonl", "root")
    t.seal(root_key, root)
    with pytest.raises(TranscriptError, match=r"is sealed; nothing more can be recorded"):
        t.record("key.generate", "Too late")


@pytest.mark.parametrize("details", [{"pin": "1234"}, {"token": {"so_pin": "x"}}, {"shares": [{"mnemonic": "w"}]}])
def test_record_refuses_secret_fields(tmp_path: Path, details: dict[str, Any]) -> None:
    t = Transcript.open(tmp_path / "t.jsonl", "root")
    with pytest.raises(TranscriptError, match=r"PINs, shares and secrets never go in a transcript"):
        t.record("hsm.token-init", "Initialised the token", details=details)


def test_record_refuses_outputs_without_a_hash(tmp_path: Path) -> None:
    t = Transcript.open(tmp_path / "t.jsonl", "root")
    with pytest.raises(TranscriptError, match=r"outputs root lack a SHA-256"):
        t.record("certificate.sign", "Signed", outputs={"root": {"path": "root.crt"}})


def test_summary(transcript: Path, root: x509.Certificate) -> None:
    report = check(transcript, root)
    text = summary(report)
    assert text.endswith("VERIFIED\n")
    assert "Ceremony 1: root" in text and "Ceremony 2: intermediate" in text
    assert "signature verified, signer sha256 " in text
    assert "      threshold: 3" in text
    assert "  #3 2024-05-01T10:00:02Z shares.distributed: Split the PINs into 5 shares, 3 needed" in text
    assert "      custodians: alice, bob, carol, dave, erin" in text
    assert "      custodians: alice, bob, erin" in text
    short = sha256_hex(INTERMEDIATE)[:16]
    assert f"      output intermediate: sha256 {short}… (out/intermediate.crt)" in text
    assert f"File intermediate: step certificate.sign (#8, output 'intermediate') of ceremony " \
           f"{report.segments[1].ceremony_id}" in text

    edit(transcript, 3, action="Split the PINs into 5 shares, 2 needed")
    report = check(transcript, root)
    failed = summary(report)
    assert "VERIFIED" not in failed
    assert "  #3 2024-05-01T10:00:02Z shares.distributed: Split the PINs into 5 shares, 2 needed" in failed
    root_problem = unvouched("root", pem(root), report, 4, 0)
    assert failed.endswith("FAILED\n  - line 4: its prev does not match the SHA-256 of line 3 "
                           f"(a line was changed, removed or moved)\n  - {root_problem}\n")


def test_signature_is_over_the_seal_without_its_signature(transcript: Path, root: x509.Certificate) -> None:
    seal = json.loads(lines(transcript)[4])
    signature = base64.b64decode(seal.pop("signature"))
    public_key = root.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(signature, canonical(seal), ec.ECDSA(hashes.SHA384()))


def test_forged_output_is_not_vouched_for(transcript: Path, root: x509.Certificate) -> None:
    """A forger swaps in the hash of their own intermediate: the chain breaks, and the file is not matched."""
    forged = b"the forger's intermediate"
    objs = json.loads(lines(transcript)[7])
    edit(transcript, 8, outputs={"intermediate": {**objs["outputs"]["intermediate"], "sha256": sha256_hex(forged)}})
    report = check(transcript, root, intermediate=forged)
    assert report.problems[0] == \
        "line 9: its prev does not match the SHA-256 of line 8 (a line was changed, removed or moved)"
    assert report.problems[1] == unvouched("intermediate", forged, report, 8, 1)
    assert "intermediate" not in report.matched


def test_line_that_is_json_but_not_a_line(transcript: Path, root: x509.Certificate) -> None:
    raws = lines(transcript)
    raws[2] = b'["not", "an", "object"]'
    put(transcript, raws)
    problems = check(transcript, root).problems
    assert problems[0] == "line 3 lacks or mistypes the field(s) seq, time, ceremony, step, action, prev"
    assert problems[1] == "line 4: its prev does not match the SHA-256 of line 3 (a line was changed, removed or moved)"
