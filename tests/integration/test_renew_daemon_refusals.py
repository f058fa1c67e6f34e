"""`hsmca renew --daemon` with a certificate the CA will not renew: it must stop asking, not hammer the CA.

Against a real `hsmca serve`: a revoked certificate (revoked by itself over mTLS, `hsmca revoke --cert`)
gets one attempt, an error that says why and what to do, and a wait of a minute or more; a new
certificate put in the file is picked up without a restart. An expired certificate the CA refuses
ends the daemon with status 3 (EXIT_UNRENEWABLE) after one attempt.
"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from appliance.client.renewal import EXIT_UNRENEWABLE, FILE_POLL
from tests.integration.conftest import HSMCA, DevCA, Server, hsmca, wait_for


@pytest.fixture(scope="module")
def ca(short_lived_ca: DevCA) -> DevCA:
    return short_lived_ca


@pytest.fixture(scope="module")
def served(short_lived_server: Server) -> Server:
    return short_lived_server


def issue(server: Server, crt: Path, key: Path, *validity: str) -> x509.Certificate:
    hsmca(server.ca, "certificate", "svc.corp", str(crt), str(key), "--ca-url", server.url,
          "--root", str(server.ca.root), "--password-file", str(server.ca.password_file), "--force", *validity)
    return x509.load_pem_x509_certificates(crt.read_bytes())[0]


def daemon(server: Server, crt: Path, key: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([HSMCA, "renew", str(crt), str(key), "--daemon", "--ca-url", server.url,
                             "--root", str(server.ca.root)],
                            env=server.ca.env(), stdout=log.open("ab"), stderr=subprocess.STDOUT)


def attempts(server: Server, serial: int) -> list[dict[str, Any]]:
    return [e for e in server.ca.audit_events()
            if e["action"] == "x509.renew" and e.get("details", {}).get("renewed") == str(serial)]


def test_a_revoked_certificate_is_not_hammered_and_a_replacement_is_picked_up(served: Server, tmp_path: Path):
    crt, key = tmp_path / "svc.crt", tmp_path / "svc.key"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # An hour's certificate 50 minutes old: past 2/3 of its lifetime, so the daemon renews at once.
    revoked = issue(served, crt, key, "--not-before", (now - timedelta(minutes=50)).isoformat(),
                    "--not-after", (now + timedelta(minutes=10)).isoformat())
    hsmca(served.ca, "revoke", "--cert", str(crt), "--key", str(key), "--reason-code", "1",
          "--ca-url", served.url, "--root", str(served.ca.root))
    log = tmp_path / "daemon.log"
    proc = daemon(served, crt, key, log)
    try:
        wait_for(lambda: "refuses to renew" in log.read_text(), 30, "the refusal to be logged")
        time.sleep(8)  # the old behaviour retried after 1, 2 and 4 s
        assert proc.poll() is None, log.read_text()
        text = log.read_text()
        assert text.count("renewing ") == 1 and len(attempts(served, revoked.serial_number)) == 1, text
        refusal = next(line for line in text.splitlines() if "refuses to renew" in line)
        assert " ERROR " in refusal and "was revoked" in refusal and "(401)" in refusal
        assert "hsmca certificate" in refusal and "Asking again in 60 s (backing off up to 1 h)" in refusal

        fresh = issue(served, crt, key)  # what the operator is told to do; default lifetime, not due yet
        wait_for(lambda: "was replaced" in log.read_text(), FILE_POLL + 15, "the new certificate to be noticed")
        assert f"was replaced (serial {fresh.serial_number})" in log.read_text()
        assert proc.poll() is None and log.read_text().count("renewing ") == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()


def test_an_expired_certificate_the_ca_refuses_ends_the_daemon(served: Server, tmp_path: Path):
    crt, key = tmp_path / "svc.crt", tmp_path / "svc.key"
    expired = issue(served, crt, key, "--not-after", "2s")
    time.sleep(3)
    log = tmp_path / "daemon.log"
    proc = daemon(served, crt, key, log)
    try:
        assert proc.wait(timeout=30) == EXIT_UNRENEWABLE, log.read_text()
    finally:
        proc.kill()
    text = log.read_text()
    assert text.count("renewing ") == 1 and len(attempts(served, expired.serial_number)) == 1, text
    assert f"error: {crt} (serial {expired.serial_number}) expired at" in text and "(401)" in text
    assert "Nothing can renew an expired certificate" in text and "start the renewal daemon again" in text
