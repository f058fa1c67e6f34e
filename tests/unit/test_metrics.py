"""Metrics in one process (the default registry), over the Falcon app with a real dev CA and SoftHSM.

Counters are process-wide and other tests issue too, so every assertion is on a difference
between two scrapes. Multi-process mode is exercised with real child interpreters.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from falcon import testing
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from appliance import metrics
from appliance.api import create_app, create_http_app
from appliance.ca import tbs
from appliance.client.keys import build_csr
from appliance.provisioners import jose
from appliance.ra.authority import Authority
from appliance.serving.supervisor import fresh_metrics_dir
from kms import KeySpec, create_key
from kms.errors import BackendUnavailable, KMSError
from kms.registry import backend_for
from tests.conftest import SoftHSMToken
from tests.integration.conftest import DevCA, make_ca

Scrape = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Scrape:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: Scrape, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in scrape.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def dev_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    assert metrics.MULTIPROC_ENV not in os.environ, "these tests expect single-process metrics"
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def client(dev_ca: DevCA) -> testing.TestClient:
    return testing.TestClient(create_app(Authority.from_config(dev_ca.config)))


def scrape(client: testing.TestClient, path: str = "/metrics") -> Scrape:
    resp = client.simulate_get(path)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    return parse(resp.text)


def sign_body(ca: DevCA, name: str) -> str:
    now = int(time.time())
    ott = jose.sign_token(ca.provisioner_key(), {
        "iss": "admin", "sub": name, "aud": "https://localhost/1.0/sign", "sans": [name],
        "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(32)})
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [name])
    return json.dumps({"csr": csr.public_bytes(serialization.Encoding.PEM).decode(), "ott": ott})


def test_an_issuance_is_counted_timed_and_marks_the_backend_up(client: testing.TestClient, dev_ca: DevCA):
    before = scrape(client)
    resp = client.simulate_post("/1.0/sign", body=sign_body(dev_ca, "metrics.internal"),
                                headers={"Content-Type": "application/json"})
    assert resp.status_code == 201, resp.text
    after = scrape(client, "/1.0/metrics")

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("hsmca_certificates_issued_total", provisioner="admin") == 1
    assert delta("hsmca_kms_sign_seconds_count", backend="pkcs11") == 1
    assert delta("hsmca_kms_sign_seconds_bucket", backend="pkcs11", le="+Inf") == 1
    assert value(after, "hsmca_kms_backend_up", backend="pkcs11") == 1
    assert delta("hsmca_requests_total", route="/1.0/sign", method="POST", status="201") == 1
    assert delta("hsmca_request_seconds_count", route="/1.0/sign") == 1
    # The scrape before was itself counted, under its route template.
    assert delta("hsmca_requests_total", route="/metrics", method="GET", status="200") == 1


@pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")
def test_refusals_and_unknown_paths_have_bounded_labels(client: testing.TestClient, dev_ca: DevCA):
    before = scrape(client)
    assert client.simulate_post("/sign", body="{", headers={"Content-Type": "application/json"}).status_code == 400
    assert client.simulate_get(f"/no/such/{secrets.token_hex(8)}").status_code == 404
    assert client.simulate_request("BREW", "/health").status_code == 400  # falcon refuses unknown methods
    after = scrape(client)

    def delta(**labels: str) -> float:
        return value(after, "hsmca_requests_total", **labels) - value(before, "hsmca_requests_total", **labels)

    assert delta(route="/sign", method="POST", status="400") == 1
    assert delta(route="unmatched", method="GET", status="404") == 1
    assert delta(method="other") == 1
    routes = {dict(ls)["route"] for (n, ls) in after if n == "hsmca_requests_total"}
    assert not any("/no/such" in r for r in routes)
    # A refused request signs nothing.
    assert value(after, "hsmca_certificates_issued_total") == value(before, "hsmca_certificates_issued_total")


def test_health_sets_the_backend_gauge(client: testing.TestClient, dev_ca: DevCA):
    """An idle CA still reports its backend: /health sets the gauge from the backend's own check."""
    metrics.KMS_BACKEND_UP.labels("pkcs11").set(0)
    resp = client.simulate_get("/health")
    assert resp.status_code == 200, resp.text
    assert any(r["backend"] == "pkcs11" for r in resp.json["detail"]["kmsBackends"])
    assert value(scrape(client), "hsmca_kms_backend_up", backend="pkcs11") == 1


def test_plain_http_listener_serves_metrics(dev_ca: DevCA):
    http = testing.TestClient(create_http_app(Authority.from_config(dev_ca.config)))
    assert "hsmca_requests_total" in {f.name + "_total" for f in text_string_to_metric_families(
        http.simulate_get("/metrics").text)}


def _sample(name: str, **labels: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_signature_failures_by_reason_on_a_real_token(softhsm_token: SoftHSMToken):
    """A refused signature (unsupported hash) and an unavailable backend (closed session), both real."""
    uri = softhsm_token.key_uri("metrics-probe")
    key = create_key(uri, KeySpec.EC_P256)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert metrics.backend_of(key) == "pkcs11"
    assert metrics.backend_of(ec.generate_private_key(ec.SECP256R1())) == metrics.SOFTWARE

    def sign(algorithm: hashes.HashAlgorithm) -> Callable[[], bytes]:
        return lambda: key.sign(b"tbs", ec.ECDSA(algorithm))

    ok, refused, down = (_sample("hsmca_kms_sign_seconds_count", backend="pkcs11"),
                         _sample("hsmca_kms_sign_failures_total", backend="pkcs11", reason="refused"),
                         _sample("hsmca_kms_sign_failures_total", backend="pkcs11", reason="unavailable"))
    metrics.timed_signature("pkcs11", sign(hashes.SHA256()))
    assert _sample("hsmca_kms_sign_seconds_count", backend="pkcs11") == ok + 1
    with pytest.raises(KMSError) as refusal:
        metrics.timed_signature("pkcs11", sign(hashes.SHA1()))
    assert not isinstance(refusal.value, BackendUnavailable)
    assert _sample("hsmca_kms_sign_failures_total", backend="pkcs11", reason="refused") == refused + 1
    assert _sample("hsmca_kms_backend_up", backend="pkcs11") == 1

    backend_for(uri).close()  # only this token's backend: the other tests' keys keep working
    with pytest.raises(BackendUnavailable):
        metrics.timed_signature("pkcs11", sign(hashes.SHA256()))
    assert _sample("hsmca_kms_sign_failures_total", backend="pkcs11", reason="unavailable") == down + 1
    assert _sample("hsmca_kms_backend_up", backend="pkcs11") == 0
    assert _sample("hsmca_kms_sign_seconds_count", backend="pkcs11") == ok + 1  # failures are not timed
    metrics.KMS_BACKEND_UP.labels("pkcs11").set(1)


def test_a_refused_record_is_not_a_backend_failure():
    key = ec.generate_private_key(ec.SECP256R1())
    before = _sample("hsmca_kms_sign_failures_total", backend="software", reason="refused")

    def refuse(data: bytes, real: object) -> bytes:
        raise RuntimeError("not recorded")

    with pytest.raises(RuntimeError):
        tbs.proxy(key, refuse).sign(b"other", ec.ECDSA(hashes.SHA256()))
    assert _sample("hsmca_kms_sign_failures_total", backend="software", reason="refused") == before


# --- multi-process mode, with real child interpreters ------------------------------------------

WRITER = """
import os, sys
from appliance import metrics
metrics.certificate_issued("admin")
metrics.KMS_BACKEND_UP.labels("pkcs11").set(float(sys.argv[1]))
"""
READER = """
import sys
from appliance import metrics
sys.stdout.write(metrics.exposition()[0].decode())
"""


def _python(code: str, directory: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, metrics.MULTIPROC_ENV: str(directory)})
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_multiprocess_files_are_merged_and_dead_processes_reaped(tmp_path: Path):
    directory = tmp_path / "run" / "metrics"
    directory.mkdir(parents=True)
    (directory / "counter_1.db").write_bytes(b"left by a previous run")
    assert fresh_metrics_dir(directory) == directory
    assert list(directory.iterdir()) == [] and (directory.stat().st_mode & 0o777) == 0o700

    _python(WRITER, directory, "0")
    _python(WRITER, directory, "1")
    merged = parse(_python(READER, directory))
    assert value(merged, "hsmca_certificates_issued_total", provisioner="admin") == 2
    # Both writers have exited, but nothing told the directory yet: the worst (0) still shows.
    assert value(merged, "hsmca_kms_backend_up", backend="pkcs11") == 0

    reaped = metrics.reap_dead_processes(directory)
    assert len(reaped) == 2
    merged = parse(_python(READER, directory))
    assert value(merged, "hsmca_certificates_issued_total", provisioner="admin") == 2  # counters stay
    assert ("hsmca_kms_backend_up", frozenset({("backend", "pkcs11")})) not in merged  # live gauges go
    assert metrics.reap_dead_processes(tmp_path / "missing") == []
