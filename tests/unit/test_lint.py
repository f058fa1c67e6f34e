"""Lint before sign: what a verifier would refuse is refused before any signature (software keys, in process)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.ca import tbs
from appliance.ca.lint import NAME_CONSTRAINTS, name_findings, parse_tbs, uri_host_problem
from appliance.errors import LintRefused
from appliance.names import RequestedNames
from appliance.provisioners.acme import OrderCredential
from appliance.ra.pipeline import STEPS, RequestContext
from tests.unit.pipeline_ca import InProcessCA, make_ca

CTX = RequestContext(request_id="lint-1")
CONSTRAINTS = x509.NameConstraints(
    permitted_subtrees=[x509.DNSName("internal"), x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_network("10.0.0.0/8")), x509.RFC822Name("corp.internal"),
                        x509.UniformResourceIdentifier(".internal")],
    excluded_subtrees=[x509.DNSName("secret.internal")])


@pytest.fixture
def ca() -> Iterator[InProcessCA]:
    with make_ca(policy={"x509": {"allowWildcardNames": True}}, intermediate_extensions=[CONSTRAINTS]) as made:
        yield made


def counted_signatures(ca: InProcessCA) -> list[bytes]:
    """Every signature the intermediate's key makes from now on."""
    made: list[bytes] = []

    def count(data: bytes, sign):  # type: ignore[no-untyped-def]
        made.append(data)
        return sign()

    ca.authority.issuer.key = tbs.proxy(ca.authority.issuer.key, count)
    return made


def sign(ca: InProcessCA, name: str, sans: list[str] | None = None, **kw: str) -> x509.Certificate:
    return ca.authority.sign(ca.csr(name, sans), ca.token(name, sans), kw.get("not_before"), kw.get("not_after"),
                             CTX).certificate


@pytest.mark.parametrize("names, why", [
    (["svc.example.com"], "DNS:svc.example.com is outside the permitted subtrees (DNS:internal, DNS:localhost)"),
    (["db.secret.internal"], "DNS:db.secret.internal is in the excluded subtree DNS:secret.internal"),
    (["svc.internal", "192.168.1.1"], "IP:192.168.1.1 is outside the permitted subtrees (IP:10.0.0.0/8)"),
    (["svc.internal", "ops@example.org"], "email:ops@example.org is outside"),
    (["svc.internal", "https://app.example.org/x"], "URI:https://app.example.org/x is outside"),
    (["*.example.com"], "DNS:*.example.com is outside"),
])
def test_names_outside_the_constraints_are_refused_before_any_signature(ca: InProcessCA, names: list[str],
                                                                        why: str) -> None:
    signatures = counted_signatures(ca)
    before = ca.store.certificates.count_by_status()
    with pytest.raises(LintRefused) as refused:
        sign(ca, names[0], names)
    assert refused.value.status == 403 and refused.value.rule == NAME_CONSTRAINTS and why in refused.value.message
    assert signatures == [] and ca.store.certificates.count_by_status() == before
    last = ca.events()[-1]
    assert last["decision"] == "denied" and last["details"]["steps"] == list(STEPS[:STEPS.index("lint") + 1])
    assert any(why in reason for reason in last["reasons"])


def test_names_inside_pass_and_are_signed_once(ca: InProcessCA) -> None:
    signatures = counted_signatures(ca)
    cert = sign(ca, "svc.internal", ["svc.internal", "a.b.localhost", "10.1.2.3", "ops@corp.internal",
                                     "https://app.internal/x", "*.apps.internal"])
    assert len(signatures) == 1 and signatures[0] == cert.tbs_certificate_bytes


def test_an_acme_order_outside_the_constraints_is_refused_for_its_names(ca: InProcessCA) -> None:
    csr = ca.csr("www.example.com")
    with pytest.raises(LintRefused) as refused:
        ca.authority.issue(OrderCredential(provisioner="acme", order_id="o1", account_id="a1",
                                           names=RequestedNames(("www.example.com",)), common_name="www.example.com",
                                           csr=csr), CTX, action="acme.finalize")
    assert refused.value.rule == NAME_CONSTRAINTS


def test_a_renewal_under_a_constrained_successor_is_refused(ca: InProcessCA) -> None:
    with make_ca() as free:
        leaf = sign(free, "svc.example.com")
        free.rotate([CONSTRAINTS])
        with pytest.raises(LintRefused, match="svc.example.com is outside"):
            free.authority.renew(leaf, None, CTX)
        assert free.events()[-1]["action"] == "x509.renew"


def test_ekus_must_be_allowed_by_the_intermediate() -> None:
    server_only = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH])
    with make_ca(intermediate_extensions=[server_only]) as ca:
        with pytest.raises(LintRefused, match="clientAuth is not allowed") as refused:
            sign(ca, "svc.internal")
        assert refused.value.rule == "extKeyUsage"
        server = ca.authority.issue_server_certificate(["ca.internal"], ec.generate_private_key(
            ec.SECP256R1()).public_key(), timedelta(hours=1)).certificate  # serverAuth only: allowed
        assert list(server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
            ExtendedKeyUsageOID.SERVER_AUTH]


def test_an_explicit_end_past_the_intermediate_is_refused_a_defaulted_one_clamped() -> None:
    with make_ca(intermediate_days=1, claims={"maxTLSCertDuration": "72h"}) as ca:
        end = ca.authority.issuer.certificate.not_valid_after_utc
        later = (end + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        with pytest.raises(LintRefused, match="after the intermediate's") as refused:
            sign(ca, "svc.internal", not_after=later)
        assert refused.value.rule == "validity"


def test_uri_hosts_must_be_dotted_names_or_addresses() -> None:
    assert uri_host_problem("http://ca.example:9080/crl") is None
    assert uri_host_problem("http://10.0.0.1/ocsp") is None and uri_host_problem("http://[::1]:80/x") is None
    assert "neither a dotted DNS name" in (uri_host_problem("http://localhost:9080/ocsp") or "")
    assert uri_host_problem("urn:x") == "the URL has no host"


def test_the_cas_own_names_can_be_checked_against_an_intermediate() -> None:
    with make_ca(intermediate_extensions=[CONSTRAINTS]) as ca:
        issuer = ca.authority.issuer.certificate
        assert name_findings([x509.DNSName("ca.internal")], None, issuer) == []
        [finding] = name_findings([x509.DNSName("ca.example.com")], None, issuer)
        assert finding.rule == NAME_CONSTRAINTS and "ca.example.com" in finding.message


def test_parse_tbs_reads_what_will_be_signed() -> None:
    with make_ca() as ca:
        cert = sign(ca, "svc.internal")
        parsed = parse_tbs(cert.tbs_certificate_bytes)
        assert parsed.serial_number == cert.serial_number and list(parsed.extensions) == list(cert.extensions)
        assert parsed.not_valid_after_utc == cert.not_valid_after_utc < datetime.now(timezone.utc) + timedelta(days=2)
