"""`GET /metrics` of a running `hsmca serve` with 2 HTTPS workers: samples of every process, merged.

To make "summed across workers" deterministic rather than up to the kernel's choice of worker,
the test issues a batch, stops every worker (SIGTERM; the supervisor starts replacements), and issues
another batch: the scrape must add the counters of the exited workers to those of the new ones, while
the exited workers' live gauge (`hsmca_kms_backend_up`) is dropped by the supervisor.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from prometheus_client import CONTENT_TYPE_LATEST

from appliance.client.keys import build_csr
from appliance.provisioners import jose
from tests.integration.conftest import DevCA, Server, start_server
from tests.unit.test_metrics import parse, value

pytestmark = pytest.mark.slow

FIRST, SECOND = 3, 2


@pytest.fixture(scope="module")
def server(dev_ca: DevCA) -> Iterator[Server]:
    s = start_server(dev_ca, workers=2)
    yield s
    s.stop()


def issue(server: Server, name: str, prov_key: jose.PublicKey) -> None:
    now = int(time.time())
    ott = jose.sign_token(prov_key, {
        "iss": "admin", "sub": name, "aud": f"{server.url}/1.0/sign", "sans": [name],
        "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(32)})
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [name])
    resp = server.post("/1.0/sign", data=json.dumps({"csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                                                     "ott": ott}),
                       headers={"Content-Type": "application/json"})
    assert resp.status_code == 201, resp.text


def replace_workers(server: Server) -> set[int]:
    """Stop every worker; the supervisor starts new ones: wait until only new ones run."""
    old = set(server.workers())
    for pid in old:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = set(server.workers())
        if len(now) == 2 and not now & old:
            return old
        time.sleep(0.1)
    raise AssertionError(f"the supervisor did not replace the workers:\n{server.log()}")


def live_gauge_pids(directory: Path) -> set[int]:
    return {int(m.group(1)) for f in directory.iterdir() if (m := re.match(r"gauge_live\w+_(\d+)\.db$", f.name))}


def test_scrape_merges_every_worker(server: Server, dev_ca: DevCA):
    directory = dev_ca.base / "run" / "metrics"
    assert directory.is_dir() and (directory.stat().st_mode & 0o777) == 0o700
    prov_key = dev_ca.provisioner_key()
    for i in range(FIRST):
        issue(server, f"first-{i}.metrics.internal", prov_key)
    old = replace_workers(server)
    for i in range(SECOND):
        issue(server, f"second-{i}.metrics.internal", prov_key)
    deadline = time.monotonic() + 10  # the supervisor reaps each old worker's files when it restarts it
    while live_gauge_pids(directory) & old and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not live_gauge_pids(directory) & old, "the exited workers' gauges were not dropped"

    resp = server.get("/metrics")
    assert resp.status_code == 200 and resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    scrape = parse(resp.text)
    issued = FIRST + SECOND
    assert value(scrape, "hsmca_certificates_issued_total", provisioner="admin") == issued
    assert value(scrape, "hsmca_kms_sign_seconds_count", backend="pkcs11") >= issued
    assert value(scrape, "hsmca_kms_sign_failures_total") == 0
    assert value(scrape, "hsmca_kms_backend_up", backend="pkcs11") == 1
    assert value(scrape, "hsmca_requests_total", route="/1.0/sign", method="POST", status="201") == issued
    assert value(scrape, "hsmca_request_seconds_count", route="/1.0/sign") == issued
    # Counters of the exited workers are still in the sum: files of more than two processes.
    counter_pids = {f.name for f in directory.iterdir() if f.name.startswith("counter_")}
    assert len(counter_pids) > 2, counter_pids

    # The same merged view at /1.0/metrics and on the plain-HTTP listener (which never signs).
    for text in (server.get("/1.0/metrics").text, requests.get(f"{server.http_url}/metrics", timeout=10).text):
        assert value(parse(text), "hsmca_certificates_issued_total", provisioner="admin") == issued
