"""A worker SIGKILLed in the middle of issuing leaves no signed certificate unrecorded.

The server runs with a fault-injection point that holds the worker between two steps of an
issuance (before the HSM signs / after it signed but before the database says "issued"); the
test kills the worker with SIGKILL from outside at that moment, then checks:
- the client received no certificate, and the database holds the reservation with its TBS;
- the server keeps serving (the supervisor replaces the worker) and what it issues is recorded;
- the housekeeping sweep marks the interrupted reservation abandoned; its serial is never reused.
"""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.client.keys import build_csr
from appliance.provisioners import jose
from appliance.store import CertificateStatus, Store
from tests.integration.conftest import DevCA, Server, make_ca, start_server


def _body(key: jose.PublicKey, subject: str) -> dict[str, str]:
    now = int(time.time())
    ott = jose.sign_token(key, {"iss": "admin", "sub": subject, "sans": [subject], "aud": "https://localhost/1.0/sign",
                                "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(32)})
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), subject, [subject])
    return {"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "ott": ott}


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def crash_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    ca = make_ca(tmp_path_factory.mktemp("crash"))

    def fast_sweeps(cfg: dict[str, Any]) -> None:
        cfg.setdefault("server", {}).update({"reservationTimeout": "2s", "housekeepingInterval": "500ms"})

    ca.edit_config(fast_sweeps)
    return ca


@pytest.mark.parametrize("point", ["issuer.before-sign", "issuer.after-sign"])
def test_sigkill_mid_issuance_leaves_nothing_unrecorded(crash_ca: DevCA, point: str, tmp_path: Path):
    hold = tmp_path / "hold"
    server: Server = start_server(crash_ca, workers=1, env={"HSMCA_FAILPOINTS": f"{point}=pause-while:{hold}"})
    config = crash_ca.config
    store = Store.from_config(config.db.model_dump(), config.base_dir)
    key = crash_ca.provisioner_key()
    try:
        reserved_before = {r.serial for r in store.certificates.list(CertificateStatus.RESERVED, limit=1000)}
        hold.touch()
        outcome: dict[str, Any] = {}

        def request() -> None:
            try:
                outcome["response"] = server.post("/1.0/sign", json=_body(key, "victim.internal"))
            except requests.RequestException as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=request)
        thread.start()
        rec = _wait(lambda: [r for r in store.certificates.list(CertificateStatus.RESERVED, limit=1000)
                             if r.serial not in reserved_before], 20, "the reservation")[0]
        (worker,) = server.workers()
        os.kill(worker, signal.SIGKILL)
        thread.join(30)
        hold.unlink()

        # The client got no certificate; the CA knows exactly what it might have signed.
        response = outcome.get("response")
        assert response is None or response.status_code >= 500, response.text if response else ""
        assert "victim.internal" in x509.Name.from_rfc4514_string(rec.subject).rfc4514_string()
        assert rec.tbs and rec.der is None
        assert store.certificates.get(rec.serial).status == CertificateStatus.RESERVED \
            or store.certificates.get(rec.serial).status == CertificateStatus.ABANDONED

        # The server keeps serving, and what it hands out is recorded.
        ok = _wait(lambda: _try_sign(server, key), 30, "a replacement worker")
        cert = x509.load_pem_x509_certificate(ok.json()["crt"].encode())
        issued = store.certificates.get(cert.serial_number)
        assert issued is not None and issued.status == CertificateStatus.ISSUED
        assert issued.der == cert.public_bytes(serialization.Encoding.DER)
        assert worker not in server.workers()

        # Housekeeping resolves the interrupted reservation; the row (and serial) stays.
        final = _wait(lambda: (r := store.certificates.get(rec.serial)) and
                      r.status == CertificateStatus.ABANDONED and r, 20, "the sweep")
        assert "interrupted" in (final.status_reason or "")
        assert final.tbs == rec.tbs
        assert "was left by an interrupted issuance" in server.log()
    finally:
        hold.unlink(missing_ok=True)
        store.close()
        assert server.stop() == 0


def _try_sign(server: Server, key: jose.PublicKey) -> requests.Response | None:
    try:
        resp = server.post("/1.0/sign", json=_body(key, "after.internal"))
    except requests.RequestException:
        return None
    return resp if resp.status_code == 201 else None
