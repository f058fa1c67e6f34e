"""Problem documents, identifiers and the policy's say on orders, ARI identifiers: no server needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appliance.acme import ari, identifiers
from appliance.acme.problems import ACME_ERROR, Problem, Subproblem, from_subproblems
from appliance.api.acme import problem_for
from appliance.errors import BadRequest, PolicyDenied, ServiceUnavailable, Unauthorized
from appliance.store import CertificateRecord, CertificateStatus
from policy import Policy

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_problem_document_shape() -> None:
    doc = Problem("badNonce", "stale").document()
    assert doc == {"type": ACME_ERROR + "badNonce", "detail": "stale", "status": 400}
    assert Problem("unauthorized", "x").status == 403 and Problem("orderNotReady", "x").status == 403


def test_one_subproblem_is_the_problem_several_are_compound_unless_alike() -> None:
    a = Subproblem("rejectedIdentifier", "denied", {"type": "dns", "value": "a.test"})
    b = Subproblem("rejectedIdentifier", "denied", {"type": "dns", "value": "b.test"})
    c = Subproblem("unsupportedIdentifier", "no", {"type": "email", "value": "x"})
    assert from_subproblems([a], "s").kind == "rejectedIdentifier"
    both = from_subproblems([a, b], "summary")
    assert both.kind == "rejectedIdentifier" and "a.test" in both.detail and "b.test" in both.detail
    assert [s["identifier"]["value"] for s in both.document()["subproblems"]] == ["a.test", "b.test"]
    assert from_subproblems([a, c], "s").kind == "compound"


@pytest.mark.parametrize(("error", "kind", "status"), [
    (BadRequest("x"), "malformed", 400), (Unauthorized("x"), "unauthorized", 401),
    (PolicyDenied("x"), "rejectedIdentifier", 400), (ServiceUnavailable("db down"), "serverInternal", 503)])
def test_ca_errors_map_to_problems(error: Exception, kind: str, status: int) -> None:
    problem = problem_for(error)  # type: ignore[arg-type]
    assert (problem.kind, problem.status) == (kind, status)


def test_identifiers_are_normalised_and_deduplicated() -> None:
    got = identifiers.parse_identifiers([{"type": "dns", "value": "WWW.Example.TEST."},
                                         {"type": "dns", "value": "www.example.test"},
                                         {"type": "ip", "value": "::ffff:10.0.0.1"},
                                         {"type": "dns", "value": "*.Example.test"}])
    assert [(i.type, i.value) for i in got] == [("dns", "*.example.test"), ("dns", "www.example.test"),
                                                 ("ip", "10.0.0.1")]
    assert got[0].wildcard and got[0].base == "example.test"


@pytest.mark.parametrize(("raw", "kind"), [
    ([{"type": "email", "value": "a@b"}], "unsupportedIdentifier"),
    ([{"type": "dns", "value": "a.*.test"}], "rejectedIdentifier"),
    ([{"type": "dns", "value": "10.0.0.1"}], "rejectedIdentifier"),
    ([{"type": "ip", "value": "not-an-ip"}], "malformed"),
    ([], "malformed"), ("x", "malformed")])
def test_bad_identifiers(raw: object, kind: str) -> None:
    with pytest.raises(Problem) as caught:
        identifiers.parse_identifiers(raw)
    assert caught.value.kind == kind


def test_wildcards_need_dns01_and_ips_never_get_it() -> None:
    wild, ip = identifiers.parse_identifier("dns", "*.x.test"), identifiers.parse_identifier("ip", "10.0.0.1")
    assert identifiers.challenge_types(wild, ["http-01", "dns-01"], "p") == ["dns-01"]
    with pytest.raises(Problem, match="dns-01"):
        identifiers.challenge_types(wild, ["http-01", "tls-alpn-01"], "p")
    assert identifiers.challenge_types(ip, ["http-01", "dns-01", "tls-alpn-01"], "p") == ["http-01", "tls-alpn-01"]


def test_policy_refusals_become_one_subproblem_each() -> None:
    policy = Policy.from_config({"x509": {"deny": {"dns": ["*.bad.test"]}}}, None, "acme",
                                {"keys": {"allow": ["RSA-2048"]}}, None)
    idents = identifiers.parse_identifiers([{"type": "dns", "value": "a.bad.test"},
                                            {"type": "dns", "value": "ok.test"}])
    with pytest.raises(Problem) as caught:
        identifiers.check_order(policy, idents, ["http-01"], "acme", NOW)
    doc = caught.value.document()
    assert doc["type"] == ACME_ERROR + "rejectedIdentifier"
    assert [s["identifier"]["value"] for s in doc["subproblems"]] == ["a.bad.test"]
    # the key rules wait for finalize: an allowed name passes although no EC key would
    assert identifiers.check_order(policy, idents[1:], ["http-01"], "acme", NOW)


def test_ari_cert_id_round_trip_and_windows() -> None:
    cid = ari.parse_cert_id(ari.cert_id(b"\x01\x02", 0x80FF))
    assert cid == ari.CertID(b"\x01\x02", 0x80FF)
    assert ari.cert_id(b"\x01", 0x80).endswith(".AIA")  # DER keeps the leading zero octet
    for bad in ("nodot", "AQ.", ".AQ", "AQ.gA", "AQ=.AQ"):
        with pytest.raises(Problem):
            ari.parse_cert_id(bad)
    rec = CertificateRecord(serial=5, issuer="0102", subject="", sans=(), not_before=NOW,
                            not_after=NOW + timedelta(days=90), provisioner="acme", tbs=b"", der=b"",
                            status=CertificateStatus.ISSUED, reserved_at=NOW, issued_at=NOW, status_reason=None,
                            request_id=None)
    window = ari.window(rec, None, NOW)["suggestedWindow"]
    assert window == {"start": "2027-01-26T12:00:00Z", "end": "2027-02-04T12:00:00Z"}
    with pytest.raises(Problem):
        ari.check(rec, ari.CertID(b"\x09", 5))  # another issuer's key identifier
    assert ari.check(rec, ari.CertID(b"\x01\x02", 5)) is rec
