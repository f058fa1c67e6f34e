"""A served CA whose intermediate has name constraints (signed by the root in SoftHSM, as a ceremony would):
every path that would produce a certificate relying parties reject is refused before the KMS is asked."""

from __future__ import annotations

import ipaddress
import signal
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests
from acme import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

import kms
from appliance.ca.lint import NAME_CONSTRAINTS
from appliance.certutil import load_certificates
from appliance.ra.pipeline import STEPS
from appliance.store import Store
from tests.integration.acme_client import ChallengeServer, answer_http01, deadline, new_client
from tests.integration.conftest import DevCA, Server, hsmca, make_ca, start_server
from tests.unit.test_metrics import parse, value

CONSTRAINTS = x509.NameConstraints(
    permitted_subtrees=[x509.DNSName("internal"), x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))],
    excluded_subtrees=None)
TEMPLATE = '{"sans": [{"type": "dns", "value": "{{ subject.commonName }}"}, {"type": "dns", "value": "x.example.net"}]}'


def constrained_intermediate(ca: DevCA) -> Path:
    """`hsmca intermediate csr`, the root in the token signs it with name constraints, `install --activate-at now`."""
    csr_path = ca.base / "nc.csr"
    hsmca(ca, "intermediate", "csr", "--key", "pkcs11:object=int-nc", "--subject", "CN=Constrained Issuing CA",
          "--out", str(csr_path))
    csr = x509.load_pem_x509_csr(csr_path.read_bytes())
    config = ca.config
    config.apply_kms_environment()
    root_key = kms.open_key(config.key_uri("pkcs11:object=root_ca"))
    root = load_certificates(ca.root)[0]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(csr.subject).issuer_name(root.subject)
            .public_key(csr.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(CONSTRAINTS, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(csr.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root.public_key()), critical=False)
            .sign(root_key, hashes.SHA256()))  # type: ignore[arg-type]
    path = ca.base / "nc.crt"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    done = hsmca(ca, "intermediate", "install", str(path), "--activate-at", "now")
    assert "warning" not in done.stderr  # the CA's own name (localhost) is permitted
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, http01: ChallengeServer) -> Iterator[Server]:
    ca = make_ca(tmp_path_factory.mktemp("constrained"))
    hsmca(ca, "provisioner", "add", "acme", "--type", "ACME", "--http01-port", str(http01.port),
          "--challenge", "http-01")

    def templated(cfg: dict[str, Any]) -> None:
        # Housekeeping's OCSP pre-signing once an hour only: the tests count the KMS's signatures.
        cfg.setdefault("server", {})["housekeepingInterval"] = "1h"
        admin = cfg["authority"]["provisioners"][0]
        cfg["authority"]["provisioners"].append({**admin, "name": "templated",
                                                 "options": {"x509": {"template": TEMPLATE}}})
    ca.edit_config(templated)
    server = start_server(ca)
    # A leaf from the unconstrained intermediate, before the constrained one takes over (at once, on every worker).
    certificate(server, "legacy.example.com", check=True)
    constrained_intermediate(ca)
    yield server
    server.stop()


def kms_signatures(server: Server) -> float:
    return value(parse(requests.get(f"{server.http_url}/metrics", timeout=10).text), "hsmca_kms_sign_seconds_count")


def settled_signatures(server: Server) -> float:
    """The signature count once housekeeping is done signing (a new intermediate's first CRL, say)."""
    last, stable_since = kms_signatures(server), time.monotonic()
    deadline_at = time.monotonic() + 60
    while time.monotonic() - stable_since < 3:
        assert time.monotonic() < deadline_at, "the KMS never stopped signing"
        time.sleep(0.5)
        now = kms_signatures(server)
        if now != last:
            last, stable_since = now, time.monotonic()
    return last


def counts(ca: DevCA) -> dict[str, int]:
    with Store.from_config(ca.config.db.model_dump(), ca.base) as store:
        return store.certificates.count_by_status()


def certificate(server: Server, name: str, *extra: str, check: bool = False) -> Any:
    ca = server.ca
    return hsmca(ca, "certificate", name, str(ca.base / f"{name}.crt"), str(ca.base / f"{name}.key"),
                 "--ca-url", server.url, "--root", str(ca.root), "--password-file", str(ca.password_file),
                 "--force", *extra, check=check)


def assert_refused_before_signing(server: Server, action: str, run: Any) -> dict[str, Any]:
    """Run `run()`; nothing recorded, no KMS signature, one audit record that names the constraint."""
    before_counts, before_signatures = counts(server.ca), settled_signatures(server)
    before_events = len(server.ca.audit_events())
    run()
    assert counts(server.ca) == before_counts
    assert kms_signatures(server) == before_signatures
    events = [e for e in server.ca.audit_events()[before_events:] if e["action"] == action]
    assert len(events) == 1, events
    [event] = events
    assert event["decision"] == "denied" and event["status"] == 403
    assert event["details"]["steps"] == list(STEPS[:STEPS.index("lint") + 1])
    assert any(f"lint {NAME_CONSTRAINTS}" in r for r in event["reasons"]), event["reasons"]
    return event


def test_a_name_outside_the_constraints_is_refused_with_the_reason(served: Server) -> None:
    def run() -> None:
        done = certificate(served, "svc.example.com")
        assert done.returncode != 0 and "(403)" in done.stderr and "would not validate" in done.stderr, done.stderr
        assert "DNS:svc.example.com is outside the permitted subtrees (DNS:internal, DNS:localhost" \
            in done.stderr, done.stderr
    assert_refused_before_signing(served, "x509.sign", run)
    inside = certificate(served, "svc.internal", check=True)
    assert inside.returncode == 0


def test_renewal_of_a_leaf_the_constraints_now_refuse(served: Server) -> None:
    """A leaf issued before the constrained intermediate took over cannot be renewed under it."""
    ca = served.ca
    crt, key = ca.base / "legacy.example.com.crt", ca.base / "legacy.example.com.key"

    def run() -> None:
        done = hsmca(ca, "renew", str(crt), str(key), "--ca-url", served.url, "--root", str(ca.root), "--force",
                     check=False)
        assert done.returncode != 0 and "legacy.example.com is outside" in done.stderr, done.stderr
    assert_refused_before_signing(served, "x509.renew", run)


def test_a_template_adding_a_name_outside_the_constraints(served: Server) -> None:
    def run() -> None:
        done = certificate(served, "tpl.internal", "--provisioner", "templated")
        assert done.returncode != 0 and "x.example.net is outside" in done.stderr, done.stderr
    assert_refused_before_signing(served, "x509.sign", run)


def test_acme_finalize_is_rejected_identifier(served: Server, http01: ChallengeServer) -> None:
    acme = new_client(served)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
           .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
               "127.0.0.1"))]), critical=False).sign(key, hashes.SHA256()))
    orderr = acme.new_order(csr.public_bytes(Encoding.PEM))
    answer_http01(acme, orderr, http01)
    orderr = acme.poll_authorizations(orderr, deadline())

    def run() -> None:
        with pytest.raises(messages.Error) as caught:
            acme.finalize_order(orderr, deadline())
        assert caught.value.typ == "urn:ietf:params:acme:error:rejectedIdentifier", caught.value
        assert "IP:127.0.0.1 is outside the permitted subtrees (IP:10.0.0.0/8)" in str(caught.value.detail)
    event = assert_refused_before_signing(served, "acme.finalize", run)
    assert event["details"]["order"] == orderr.uri.rsplit("/", 1)[-1] and event["details"]["account"]


def test_a_sighup_with_a_broken_template_keeps_the_running_workers(served: Server) -> None:
    """A step-ca Go template written into ca.json: the supervisor refuses the reload, names the field, and the
    API keeps serving with the configuration it has; a fixed file is passed on to the HTTPS workers."""
    ca = served.ca
    workers = served.workers()
    original = ca.config_path.read_text()

    def go_template(cfg: dict[str, Any]) -> None:
        cfg["authority"]["provisioners"][-1]["options"]["x509"]["template"] = '{"sans": {{ toJson .SANs }}}'
    ca.edit_config(go_template)
    try:
        served.proc.send_signal(signal.SIGHUP)
        deadline_at = time.monotonic() + 30
        while "SIGHUP ignored" not in served.log():
            assert time.monotonic() < deadline_at, served.log()[-2000:]
            time.sleep(0.2)
        assert "authority.provisioners[templated].options.x509.template" in served.log()
        assert served.workers() == workers and served.get("/health").ok
        assert certificate(served, "still.internal").returncode == 0
    finally:
        ca.config_path.write_text(original)
    served.proc.send_signal(signal.SIGHUP)
    deadline_at = time.monotonic() + 30
    while "SIGHUP: ca.json reloaded" not in served.log():
        assert time.monotonic() < deadline_at, served.log()[-2000:]
        time.sleep(0.2)
