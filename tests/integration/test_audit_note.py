"""`hsmca audit note`: an operator event in the CA's audit trail (the appliance's break-glass logins), chained and
sealed like the CA's own records, and unable to pose as one of them."""

from __future__ import annotations

from pathlib import Path

from tests.integration.conftest import hsmca, make_ca


def test_a_note_is_recorded_sealed_and_verifiable_and_bad_input_is_refused_plainly(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    done = hsmca(ca, "audit", "note", "break-glass.login", "--detail", "user=breakglass", "--detail", "tty=/dev/ttyS0")
    assert done.stdout == "recorded operator.break-glass.login\n"
    events = [e for e in ca.audit_events() if e.get("action") == "operator.break-glass.login"]
    assert len(events) == 1 and events[0]["details"] == {"user": "breakglass", "tty": "/dev/ttyS0"}
    assert events[0]["decision"] == "allowed" and events[0]["request_id"] == "cli"
    verified = hsmca(ca, "audit", "verify", str(ca.audit_path), "--config", str(ca.config_path))
    assert "Traceback" not in verified.stderr

    for args, message in [
        (["x509.sign"], None),  # fine as a name, but recorded as operator.x509.sign: it cannot pose as the CA's
        (["Break Glass"], "lower-case words joined by dots"),
        (["a..b"], "lower-case words joined by dots"),
        (["note", "--detail", "novalue"], "KEY=VALUE"),
        (["note", "--detail", "k=" + "v" * 257], "KEY=VALUE"),
        (["note", "--detail", "k=1", "--detail", "k=2"], "--detail k given twice"),
        (["note", *[f"--detail=k{i}=v" for i in range(17)]], "at most 16"),
    ]:
        result = hsmca(ca, "audit", "note", *args, check=False)
        assert "Traceback" not in result.stderr
        if message is None:
            assert result.returncode == 0 and result.stdout == "recorded operator.x509.sign\n"
        else:
            assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    assert not [e for e in ca.audit_events() if e.get("action") == "x509.sign" and e.get("request_id") == "cli"]
