import json
import multiprocessing

from appliance.audit import AuditEvent, JsonLinesAudit, read_events, scrub


def test_scrub_removes_tokens_and_pem():
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"
    text = f"bad token {jwt} and -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY----- end"
    out = scrub(text)
    assert jwt not in out and "MIIB" not in out and out.endswith(" end")


def _writer(path, n):
    log = JsonLinesAudit(path)
    for i in range(n):
        log.record(AuditEvent(action="x509.sign", decision="allowed", serial=str(i), subject="s" * 500))


def test_concurrent_processes_never_interleave_lines(tmp_path):
    path = tmp_path / "audit.jsonl"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, 200)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    events = read_events(path)
    assert len(events) == 800
    assert all(e["decision"] == "allowed" for e in events)


def test_record_has_no_secret_fields(tmp_path):
    log = JsonLinesAudit(tmp_path / "a.jsonl")
    log.record(AuditEvent(action="x509.sign", decision="denied",
                          reasons=("token eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln was bad",)))
    line = (tmp_path / "a.jsonl").read_text()
    rec = json.loads(line)
    assert "eyJ" not in line
    assert rec["time"] and rec["action"] == "x509.sign"
    assert (tmp_path / "a.jsonl").stat().st_mode & 0o777 == 0o600
