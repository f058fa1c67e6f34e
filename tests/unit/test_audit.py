"""The audit trail: chained streams, checkpoints signed by a SoftHSM audit key, and what `verify` finds."""

from __future__ import annotations

import base64
import json
import multiprocessing
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.audit import AuditEvent, JsonLinesAudit, read_events, scrub
from appliance.audit.seal import CHECKPOINT, AuditSealer, Statement
from appliance.audit.verify import summary, verify
from kms import KeySpec, create_key
from kms.chained_log import sha256_hex


def test_scrub_removes_tokens_and_pem() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = f"bad token {jwt} and -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY----- end"
    out = scrub(text)
    assert jwt not in out and "MIIB" not in out and out.endswith(" end")


@dataclass(frozen=True)
class Key:
    uri: str
    cert: x509.Certificate
    path: Path

    def sealer(self) -> AuditSealer:
        from kms import open_key
        return AuditSealer(lambda: open_key(self.uri), self.cert)


def _make_key(token: Any, tmp_path: Path, name: str) -> Key:
    uri = token.key_uri(name)
    key = create_key(uri, KeySpec.EC_P256)
    now = datetime.now(timezone.utc)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Test {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    path = tmp_path / f"{name}.crt"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return Key(uri, cert, path)


@pytest.fixture
def audit_key(softhsm_token: Any, tmp_path: Path) -> Key:
    return _make_key(softhsm_token, tmp_path, "audit")


def _event(i: int) -> AuditEvent:
    return AuditEvent(action="x509.sign", decision="allowed", serial=str(i), subject=f"host{i}.example")


def _trail(path: Path, key: Key | None, **kw: Any) -> JsonLinesAudit:
    return JsonLinesAudit(path, sealer=key.sealer() if key else None, interval=3600, **kw)


def _writer(path: Path, n: int, uri: str, cert_pem: bytes) -> None:
    from kms import open_key
    trail = JsonLinesAudit(path, sealer=AuditSealer(lambda: open_key(uri), x509.load_pem_x509_certificate(cert_pem)))
    for i in range(n):
        trail.record(AuditEvent(action="x509.sign", decision="allowed", serial=str(i), subject="s" * 500))
    trail.close()


def test_concurrent_processes_keep_their_own_valid_streams(tmp_path: Path, audit_key: Key) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("spawn")  # fresh PKCS#11 state in each child
    pem = audit_key.cert.public_bytes(Encoding.PEM)
    procs = [ctx.Process(target=_writer, args=(path, 200, audit_key.uri, pem)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    events = read_events(path)
    assert len(events) == 800 and all(e["decision"] == "allowed" for e in events)
    report = verify([path], [audit_key.cert])
    assert report.ok, summary(report)
    assert len(report.streams) == 4 and not report.warnings
    assert all(s.records == 200 and s.checkpoints == 1 for s in report.streams.values())


def test_record_has_no_secret_fields(tmp_path: Path) -> None:
    log = JsonLinesAudit(tmp_path / "a.jsonl")
    log.record(AuditEvent(action="x509.sign", decision="denied",
                          reasons=("token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln was bad",)))
    text = (tmp_path / "a.jsonl").read_text()
    (rec,) = read_events(tmp_path / "a.jsonl")
    assert "eyJ" not in text
    assert rec["time"] and rec["action"] == "x509.sign" and rec["seq"] == 2 and rec["stream"]
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o600


@pytest.fixture
def sealed(tmp_path: Path, audit_key: Key) -> tuple[Path, list[bytes]]:
    """A file with two streams interleaved, each sealed at close (and one mid-way)."""
    path = tmp_path / "audit.jsonl"
    a, b = _trail(path, audit_key, replica="a"), _trail(path, audit_key, replica="b")
    for i in range(10):
        (a if i % 2 else b).record(_event(i))
        if i == 4:
            assert a.checkpoint() is not None
    a.close()
    b.close()
    return path, path.read_bytes().splitlines(keepends=True)


def test_untouched_file_verifies(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, _ = sealed
    report = verify([path], [audit_key.cert])
    assert report.ok and not report.warnings, summary(report)
    text = summary(report)
    assert "VERIFIED" in text and audit_key.cert.subject.rfc4514_string() in text and "Streams:     2" in text


def _rewrite(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(lines))


def _problems(path: Path, key: Key, known: Any = None) -> str:
    report = verify([path], [key.cert], known)
    assert not report.ok
    return "\n".join(report.problems)


def test_an_edited_line_is_named(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, lines = sealed
    obj = json.loads(lines[3])
    obj["subject"] = "evil.example"
    lines[3] = json.dumps(obj, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    _rewrite(path, lines)
    assert f"{path} line 4" in _problems(path, audit_key)


def test_an_edit_that_breaks_the_canonical_form_is_named(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, lines = sealed
    n = next(i for i, raw in enumerate(lines) if b'"allowed"' in raw)
    lines[n] = lines[n].replace(b'"allowed"', b'"allowed" ')
    _rewrite(path, lines)
    assert f"{path} line {n + 1}: is not in the form" in _problems(path, audit_key)


def test_a_deleted_line_is_named(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, lines = sealed
    stream = json.loads(lines[4])["stream"]
    after = next(i for i in range(5, len(lines)) if json.loads(lines[i])["stream"] == stream)
    del lines[4]
    _rewrite(path, lines)
    problems = _problems(path, audit_key)
    assert f"{path} line {after}" in problems and "removed" in problems


def test_two_swapped_lines_are_named(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, lines = sealed
    first = json.loads(lines[2])["stream"]
    j = next(i for i in range(3, len(lines)) if json.loads(lines[i])["stream"] == first)
    lines[2], lines[j] = lines[j], lines[2]
    _rewrite(path, lines)
    assert f"{path} line 3" in _problems(path, audit_key)


def test_an_inserted_line_is_named(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, lines = sealed
    lines.insert(5, lines[3])
    _rewrite(path, lines)
    assert f"{path} line 6" in _problems(path, audit_key)


@dataclass(frozen=True)
class Known:
    stream: str
    seq: int
    head: str
    time: datetime


def _known(path: Path) -> list[Known]:
    found = []
    for raw in path.read_bytes().splitlines():
        obj = json.loads(raw)
        if obj["action"] == CHECKPOINT:
            st = Statement.parse(obj["checkpoint"]["statement"])
            assert st is not None
            found.append(Known(st.stream, st.seq, st.head, datetime.now(timezone.utc)))
    return found


def test_truncation_after_a_checkpoint(sealed: tuple[Path, list[bytes]], audit_key: Key) -> None:
    path, lines = sealed
    known = _known(path)
    _rewrite(path, lines[:-2])  # the last stream's closing checkpoint (and a record) cut off
    report = verify([path], [audit_key.cert])  # without the database: an unsealed tail, not proof of tampering
    assert report.ok and any("not sealed" in w for w in report.warnings), summary(report)
    assert "the file was truncated" in _problems(path, audit_key, known)


def test_a_killed_writer_leaves_an_unsealed_tail(tmp_path: Path, audit_key: Key) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path, audit_key)
    for i in range(3):
        trail.record(_event(i))
    trail.checkpoint()
    for i in range(3, 6):
        trail.record(_event(i))  # never sealed: no close, as after SIGKILL
    report = verify([path], [audit_key.cert])
    assert report.ok
    (warning,) = report.warnings
    assert "3 line(s)" in warning and f"{path} line 6" in warning and f"{path} line 8" in warning


def test_checkpoint_verifies_with_openssl_and_sha256sum(sealed: tuple[Path, list[bytes]], audit_key: Key,
                                                        tmp_path: Path) -> None:
    path, lines = sealed
    number, obj = next((n, json.loads(raw)) for n, raw in enumerate(lines, 1)
                       if json.loads(raw)["action"] == CHECKPOINT)
    cp = obj["checkpoint"]
    st = Statement.parse(cp["statement"])
    assert st is not None
    # The head: the SHA-256 of the stream's line `seq`, as sha256sum computes it (the line without its newline).
    covered = next(n for n, raw in enumerate(lines, 1)
                   if json.loads(raw)["stream"] == st.stream and json.loads(raw)["seq"] == st.seq)
    line = subprocess.run(["sed", "-n", f"{covered}p", str(path)], capture_output=True, check=True).stdout
    digest = subprocess.run(["sha256sum"], input=line.rstrip(b"\n"), capture_output=True, check=True).stdout
    assert digest.split()[0].decode() == st.head
    (tmp_path / "statement.txt").write_text(cp["statement"])
    (tmp_path / "sig.der").write_bytes(base64.b64decode(cp["signatures"][0]["signature"]))
    (tmp_path / "audit.pub").write_bytes(audit_key.cert.public_key().public_bytes(Encoding.PEM,
                                                                                    PublicFormat.SubjectPublicKeyInfo))
    ok = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "audit.pub"), "-signature",
                         str(tmp_path / "sig.der"), str(tmp_path / "statement.txt")], capture_output=True, text=True)
    assert ok.returncode == 0 and "Verified OK" in ok.stdout
    (tmp_path / "statement.txt").write_text(cp["statement"].replace(st.head, "0" * 64))
    bad = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "audit.pub"), "-signature",
                          str(tmp_path / "sig.der"), str(tmp_path / "statement.txt")], capture_output=True)
    assert bad.returncode != 0 and number > covered


def test_a_checkpoint_by_another_key_is_refused(sealed: tuple[Path, list[bytes]], softhsm_token: Any,
                                                tmp_path: Path) -> None:
    path, _ = sealed
    other = _make_key(softhsm_token, tmp_path, "other")
    assert "signed by no given audit key" in _problems(path, other)


def test_rotation_continues_every_chain_into_the_new_file(tmp_path: Path, audit_key: Key) -> None:
    path = tmp_path / "audit.jsonl"
    a, b = _trail(path, audit_key, max_bytes=2000), _trail(path, audit_key, max_bytes=2000)
    for i in range(40):
        (a if i % 3 else b).record(_event(i))
    a.close()
    b.close()
    rotated = sorted(tmp_path.glob("audit-*.jsonl"))
    assert len(rotated) >= 3
    report = verify([*rotated, path], [audit_key.cert])
    assert report.ok and not report.warnings, summary(report)
    assert sum(s.records for s in report.streams.values()) == 40
    alone = verify([path], [audit_key.cert])  # the newest file alone: streams continue from files not given
    assert alone.ok and any("continues from an earlier file" in w for w in alone.warnings), summary(alone)
    missing = verify([*rotated[1:], path], [audit_key.cert])
    assert missing.ok  # a whole older file left out is only visible with the database (test_truncation...)


def test_key_rotation_is_a_checkpoint_signed_by_both(tmp_path: Path, audit_key: Key, softhsm_token: Any) -> None:
    path = tmp_path / "audit.jsonl"
    new = _make_key(softhsm_token, tmp_path, "audit-2")
    old_trail = _trail(path, audit_key)
    old_trail.record(_event(0))
    old_trail.checkpoint()  # signed by the old key alone
    old_trail.record(_event(1))
    cp = old_trail.checkpoint("key-rotation", also=(new.sealer(),))
    assert cp is not None and len(cp.signatures) == 2
    old_trail.close()
    new_trail = _trail(path, new)
    new_trail.record(_event(2))
    new_trail.close()
    report = verify([path], [audit_key.cert])  # the auditor pinned the old key only
    assert report.ok, summary(report)
    assert set(report.keys) == {sha256_hex(audit_key.cert.public_bytes(Encoding.DER)),
                                sha256_hex(new.cert.public_bytes(Encoding.DER))}
    assert not verify([path], [new.cert]).ok  # the old key's checkpoints cannot be checked with the new one only


# -- as an attacker would: every tampering is caught (with the database), and no input crashes the verifier ----

_SEALED: dict[str, Any] = {}


def _sealed_once(tmp_path_factory: pytest.TempPathFactory, token: Any) -> tuple[list[bytes], Key, list[Known]]:
    """Three interleaved streams, each with a mid-way and a closing checkpoint (made once per session)."""
    if not _SEALED:
        base = tmp_path_factory.mktemp("sealed")
        key = _make_key(token, base, "audit")
        path = base / "audit.jsonl"
        trails = [_trail(path, key, replica=r) for r in ("a", "b", "c")]
        for i in range(24):
            trails[i % 3].record(_event(i))
            if i == 11:
                for t in trails:
                    t.checkpoint()
        for t in trails:
            t.close()
        _SEALED.update(lines=_lines_of(path), key=key, known=_known(path))
    return _SEALED["lines"], _SEALED["key"], _SEALED["known"]


def _lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


@pytest.fixture(scope="module")
def sealed_lines(tmp_path_factory: pytest.TempPathFactory,
                 softhsm_token_factory: Any) -> tuple[list[bytes], Key, list[Known]]:
    return _sealed_once(tmp_path_factory, softhsm_token_factory())


@given(data=st.data())
@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_tampering_is_caught(sealed_lines: tuple[list[bytes], Key, list[Known]], tmp_path: Path,
                                   data: st.DataObject) -> None:
    lines, key, known = sealed_lines
    lines = list(lines)
    n = len(lines)
    kind = data.draw(st.sampled_from(["delete", "swap", "duplicate", "byte"]))
    i = data.draw(st.integers(0, n - 1))
    if kind == "delete":
        del lines[i]
    elif kind == "swap":
        j = data.draw(st.integers(0, n - 1).filter(lambda j: j != i))
        lines[i], lines[j] = lines[j], lines[i]
    elif kind == "duplicate":
        lines.insert(data.draw(st.integers(0, n)), lines[i])
    else:
        line = bytearray(lines[i])
        k = data.draw(st.integers(0, len(line) - 2))  # not the newline
        line[k] = data.draw(st.integers(0x20, 0x7E).filter(lambda b: b != line[k]))
        lines[i] = bytes(line)
    path = tmp_path / "tampered.jsonl"
    path.write_bytes(b"".join(lines))
    report = verify([path], [key.cert], known)
    assert not report.ok, (kind, i, summary(report))


@given(blob=st.one_of(
    st.binary(max_size=2000),
    st.lists(st.dictionaries(st.sampled_from(["seq", "prev", "stream", "action", "time", "checkpoint"]),
                             st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=80),
                                          lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=9), c,
                                                                                                max_size=3),
                                          max_leaves=8)), max_size=6).map(
        lambda objs: b"".join(json.dumps(o).encode() + b"\n" for o in objs))))
@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_input_crashes_the_verifier(sealed_lines: tuple[list[bytes], Key, list[Known]], tmp_path: Path,
                                       blob: bytes) -> None:
    _, key, known = sealed_lines
    path = tmp_path / "junk.jsonl"
    path.write_bytes(blob)
    report = verify([path], [key.cert], known)
    assert not report.ok or not blob  # an empty file is only a warning; anything else here is not a trail
    summary(report)


def test_deep_nesting_and_huge_lines_are_refused_plainly(tmp_path: Path, audit_key: Key) -> None:
    path = tmp_path / "evil.jsonl"
    path.write_bytes(b"[" * 200_000 + b"\n" + b'{"a":"' + b"x" * (17 << 20) + b'"}\n' + b"no newline")
    report = verify([path], [audit_key.cert])
    text = "\n".join(report.problems)
    assert "line 1: is not valid JSON (RecursionError)" in text
    assert "line 2: is longer than" in text and "line 3: is incomplete" in text


def _fill(path: str, limit: int) -> str:
    import resource
    import signal as sig

    sig.signal(sig.SIGXFSZ, sig.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    trail = JsonLinesAudit(Path(path))
    try:
        for i in range(1000):
            trail.record(_event(i))
    except OSError as exc:
        return str(exc)
    return "no error"


def test_a_full_disk_leaves_no_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        error = pool.apply(_fill, (str(path), 5000))
    assert "could not be written whole" in error
    data = path.read_bytes()
    assert data.endswith(b"\n") and len(data) <= 5000
    report = verify([path], [])
    assert not any("incomplete" in p for p in report.problems)
    assert all("checkpoint" not in p for p in report.problems)  # only the chain matters here: intact
    assert report.streams and all(not s.broken for s in report.streams.values()), summary(report)


def test_records_are_shipped_to_syslog_with_their_links(tmp_path: Path) -> None:
    import socket

    from appliance.audit.syslog import SyslogShipper

    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    try:
        port = receiver.getsockname()[1]
        trail = JsonLinesAudit(tmp_path / "audit.jsonl", shipper=SyslogShipper(f"udp://127.0.0.1:{port}"))
        trail.record(_event(7))
        trail.close()
        messages = [receiver.recv(65536).decode() for _ in range(2)]  # the stream's first line, then the event
    finally:
        receiver.close()
    (line,) = [raw for raw in (tmp_path / "audit.jsonl").read_bytes().splitlines() if b'"x509.sign"' in raw]
    rec = json.loads(line)
    message = messages[1]
    assert " audit.stream " in messages[0] and message.startswith("<86>1 ")  # authpriv.notice, authpriv.info
    assert f'seq="{rec["seq"]}"' in message and f'prev="{rec["prev"]}"' in message and 'serial="7"' in message
    assert message.endswith(line.decode())  # the MSG is the file's line, so a SIEM can recompute the links


def test_a_lone_surrogate_from_a_client_is_written_and_verifies(tmp_path: Path, audit_key: Key) -> None:
    path = tmp_path / "audit.jsonl"
    trail = _trail(path, audit_key)
    name = json.loads('"bad\\ud800.example"')  # what a client's JSON can carry into a refusal's reason
    trail.record(AuditEvent(action="x509.sign", decision="denied", subject="é.example", reasons=(f"name {name}",)))
    trail.close()
    (rec,) = read_events(path)
    assert rec["reasons"] == [f"name {name}"] and rec["subject"] == "é.example"
    report = verify([path], [audit_key.cert])
    assert report.ok and not report.warnings, summary(report)


def test_read_events_splits_on_newlines_only(tmp_path: Path) -> None:
    """JSON leaves U+2028, U+0085 and the like unescaped; str.splitlines() would cut a record there."""
    trail = JsonLinesAudit(tmp_path / "audit.jsonl")
    odd = "a\u2028b\x85c\u2029d\x1ce\x0bf"
    trail.record(AuditEvent(action="x509.sign", decision="denied", subject=odd, reasons=(f"name {odd}",)))
    trail.close()
    events = read_events(tmp_path / "audit.jsonl")
    assert [e["subject"] for e in events] == [odd]
    assert verify([tmp_path / "audit.jsonl"], keys=[]).ok
