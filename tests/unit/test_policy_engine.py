"""`Policy.evaluate` on keys and validity, and the properties of the engine as a whole."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from policy import Decision, KeyInfo, Policy, Request, key_info

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
EC_P256 = KeyInfo("EC", 256, "P-256")


def rsa_key(bits: int) -> rsa.RSAPublicKey:
    """A public key of exactly `bits` bits, without the cost of generating primes."""
    return rsa.RSAPublicNumbers(65537, (1 << (bits - 1)) | 1).public_key()


def judge(
    authority: dict[str, Any] | None = None,
    authority_claims: dict[str, Any] | None = None,
    provisioner: dict[str, Any] | None = None,
    provisioner_claims: dict[str, Any] | None = None,
    **request: Any,
) -> Decision:
    request.setdefault("key", EC_P256)
    request.setdefault("now", NOW)
    policy = Policy.from_config(authority, authority_claims, "admin", provisioner, provisioner_claims)
    return policy.evaluate(Request(**request))


class TestKeyInfo:
    @pytest.mark.parametrize(
        ("curve", "expected"),
        [
            (ec.SECP256R1(), KeyInfo("EC", 256, "P-256")),
            (ec.SECP384R1(), KeyInfo("EC", 384, "P-384")),
            (ec.SECP521R1(), KeyInfo("EC", 521, "P-521")),
            (ec.SECP256K1(), KeyInfo("EC", 256, "secp256k1")),
        ],
    )
    def test_ec(self, curve: ec.EllipticCurve, expected: KeyInfo) -> None:
        assert key_info(ec.generate_private_key(curve).public_key()) == expected

    def test_rsa_ed25519_and_others(self) -> None:
        assert key_info(rsa_key(3072)) == KeyInfo("RSA", 3072)
        assert key_info(ed25519.Ed25519PrivateKey.generate().public_key()) == KeyInfo("Ed25519", 256)
        assert key_info(ed448.Ed448PrivateKey.generate().public_key()).kind == "Ed448"
        params = dsa.DSAParameterNumbers((1 << 2047) | 1, (1 << 223) | 1, 3)
        assert key_info(dsa.DSAPublicNumbers(5, params).public_key()) == KeyInfo("DSA", 2048)
        assert key_info(object()) == KeyInfo("object", 0)


class TestKeys:
    @pytest.mark.parametrize(
        "key",
        [
            KeyInfo("EC", 256, "P-256"),
            KeyInfo("EC", 384, "P-384"),
            KeyInfo("RSA", 2048),
            KeyInfo("RSA", 8192),
            KeyInfo("Ed25519", 256),
        ],
    )
    def test_default_allows_the_usual_keys(self, key: KeyInfo) -> None:
        assert judge(key=key).allowed

    @pytest.mark.parametrize(
        ("key", "reason"),
        [
            (KeyInfo("RSA", 1024), "authority policy: key RSA-1024 is too weak (minimum RSA size 2048)"),
            (KeyInfo("RSA", 2047), "authority policy: key RSA-2047 is too weak (minimum RSA size 2048)"),
            (KeyInfo("RSA", 16384), "authority policy: key RSA-16384 is too large (maximum RSA size 8192)"),
            (
                KeyInfo("EC", 521, "P-521"),
                "authority policy: key EC-P521 is not allowed (keys.allow: EC-P256, EC-P384, RSA, Ed25519)",
            ),
            (KeyInfo("EC", 256, "secp256k1"), "authority policy: key EC-secp256k1 is not allowed"),
            (KeyInfo("DSA", 2048), "authority policy: key DSA is not allowed"),
            (KeyInfo("Ed448", 456), "authority policy: key Ed448 is not allowed"),
        ],
    )
    def test_default_denies(self, key: KeyInfo, reason: str) -> None:
        decision = judge(key=key)
        assert not decision.allowed
        assert decision.reasons[0].startswith(reason)

    def test_real_keys_through_key_info(self) -> None:
        assert judge(key=key_info(rsa_key(2048))).allowed
        assert judge(key=key_info(rsa_key(1024))).reasons == (
            "authority policy: key RSA-1024 is too weak (minimum RSA size 2048)",
        )

    def test_a_provisioner_restricts_keys_further(self) -> None:
        provisioner = {"keys": {"allow": ["EC-P256"]}}
        assert judge(provisioner=provisioner, key=EC_P256).allowed
        assert judge(provisioner=provisioner, key=KeyInfo("RSA", 2048)).reasons == (
            'provisioner "admin" policy: key RSA-2048 is not allowed (keys.allow: EC-P256)',
        )
        # Both levels are enforced: the provisioner cannot allow what the authority denies.
        decision = judge(provisioner={"keys": {"allow": ["EC-P521"]}}, key=KeyInfo("EC", 521, "P-521"))
        assert [r.split(":")[0] for r in decision.reasons] == ["authority policy"]

    def test_both_levels_report_a_weak_key(self) -> None:
        decision = judge(provisioner={"keys": {"allow": ["RSA"]}}, key=KeyInfo("RSA", 1024))
        assert decision.reasons == (
            "authority policy: key RSA-1024 is too weak (minimum RSA size 2048)",
            'provisioner "admin" policy: key RSA-1024 is too weak (minimum RSA size 2048)',
        )

    def test_sized_rsa_entries(self) -> None:
        keys = {"keys": {"allow": ["RSA-3072", "RSA-4096"]}}
        assert judge(keys, key=KeyInfo("RSA", 3072)).allowed
        assert judge(keys, key=KeyInfo("RSA", 4096)).allowed
        assert not judge(keys, key=KeyInfo("RSA", 2048)).allowed
        assert not judge(keys, key=KeyInfo("RSA", 8192)).allowed

    def test_rsa_size_bounds(self) -> None:
        keys = {"keys": {"allow": ["RSA"], "minRSASize": 3072, "maxRSASize": 4096}}
        assert judge(keys, key=KeyInfo("RSA", 3072)).allowed
        assert judge(keys, key=KeyInfo("RSA", 2048)).reasons == (
            "authority policy: key RSA-2048 is too weak (minimum RSA size 3072)",
        )
        assert judge(keys, key=KeyInfo("RSA", 8192)).reasons == (
            "authority policy: key RSA-8192 is too large (maximum RSA size 4096)",
        )


class TestValidity:
    def test_defaults_backdate_one_minute_and_last_the_default_duration(self) -> None:
        decision = judge()
        assert decision.allowed
        assert decision.not_before == NOW - timedelta(minutes=1)
        assert decision.not_after == NOW + timedelta(hours=24)

    def test_requested_times_are_used_as_given(self) -> None:
        nb, na = NOW + timedelta(hours=1), NOW + timedelta(hours=3)
        decision = judge(not_before=nb, not_after=na)
        assert (decision.not_before, decision.not_after) == (nb, na)

    def test_a_requested_not_before_starts_the_default_duration(self) -> None:
        nb = NOW + timedelta(hours=2)
        decision = judge(authority_claims={"defaultTLSCertDuration": "1h"}, not_before=nb)
        assert (decision.not_before, decision.not_after) == (nb, nb + timedelta(hours=1))

    def test_the_reason_names_the_claim_and_its_level(self) -> None:
        claims = {"minTLSCertDuration": "5m", "maxTLSCertDuration": "24h", "defaultTLSCertDuration": "24h"}
        decision = judge(authority_claims=claims, not_after=NOW + timedelta(hours=48))
        assert decision.reasons == (
            "requested validity 48h0m exceeds the maximum 24h0m (authority claims.maxTLSCertDuration)",
        )
        decision = judge(not_after=NOW + timedelta(minutes=1))
        assert decision.reasons == (
            "requested validity 1m is below the minimum 5m (built-in default minTLSCertDuration)",
        )
        decision = judge(
            provisioner_claims={"maxTLSCertDuration": "1h", "defaultTLSCertDuration": "1h"},
            not_after=NOW + timedelta(hours=2),
        )
        assert decision.reasons == (
            'requested validity 2h0m exceeds the maximum 1h0m (provisioner "admin" claims.maxTLSCertDuration)',
        )

    def test_the_backdate_does_not_count_against_the_maximum(self) -> None:
        assert judge(not_after=NOW + timedelta(hours=24)).allowed
        assert not judge(not_after=NOW + timedelta(hours=24, seconds=1)).allowed
        # A requested notBefore is not backdated, so the whole span counts.
        assert not judge(not_before=NOW - timedelta(minutes=1), not_after=NOW + timedelta(hours=24)).allowed

    def test_minimum_boundary(self) -> None:
        assert judge(not_after=NOW + timedelta(minutes=5)).allowed
        assert not judge(not_after=NOW + timedelta(minutes=4, seconds=59)).allowed

    def test_not_after_must_follow_not_before(self) -> None:
        decision = judge(not_before=NOW + timedelta(hours=2), not_after=NOW + timedelta(hours=1))
        assert decision.reasons == (
            "requested notAfter 2030-01-01T13:00:00+00:00 is not after notBefore 2030-01-01T14:00:00+00:00",
        )

    def test_not_after_in_the_past(self) -> None:
        decision = judge(not_before=NOW - timedelta(hours=2), not_after=NOW - timedelta(hours=1))
        assert decision.reasons == (
            "requested notAfter 2030-01-01T11:00:00+00:00 is in the past (now is 2030-01-01T12:00:00+00:00)",
        )

    def test_times_are_whole_seconds_in_utc(self) -> None:
        plus_two = timezone(timedelta(hours=2))
        now = datetime(2030, 1, 1, 14, 0, 0, 999_999, tzinfo=plus_two)
        decision = judge(now=now, not_after=datetime(2030, 1, 1, 13, 0, 0, 500_000, tzinfo=UTC))
        assert decision.not_before == datetime(2030, 1, 1, 11, 59, 0, tzinfo=UTC)
        assert decision.not_after == datetime(2030, 1, 1, 13, 0, 0, tzinfo=UTC)
        assert decision.not_after.utcoffset() == timedelta(0)

    def test_claims_override_defaults_field_by_field(self) -> None:
        authority = {"maxTLSCertDuration": "720h", "defaultTLSCertDuration": "168h"}
        assert judge(authority_claims=authority).not_after == NOW + timedelta(hours=168)
        assert judge(authority_claims=authority, not_after=NOW + timedelta(hours=700)).allowed
        provisioner = {"defaultTLSCertDuration": "1h"}
        decision = judge(authority_claims=authority, provisioner_claims=provisioner)
        assert decision.not_after == NOW + timedelta(hours=1)
        assert judge(
            authority_claims=authority, provisioner_claims=provisioner, not_after=NOW + timedelta(hours=700)
        ).allowed  # max still the authority's


class TestEngine:
    def test_everything_is_evaluated_and_every_reason_returned(self) -> None:
        decision = judge(
            {"x509": {"deny": {"dns": ["*.evil.corp"]}}},
            None,
            {"keys": {"allow": ["EC-P384"]}},
            dns_names=("a.evil.corp", "bad..name"),
            key=KeyInfo("RSA", 1024),
            not_after=NOW + timedelta(hours=48),
        )
        assert decision.reasons == (
            'DNS name "bad..name" is invalid: empty label',
            'authority policy x509.deny.dns "*.evil.corp" denies DNS name "a.evil.corp"',
            "authority policy: key RSA-1024 is too weak (minimum RSA size 2048)",
            'provisioner "admin" policy: key RSA-1024 is too weak (minimum RSA size 2048)',
            "requested validity 48h0m exceeds the maximum 24h0m (built-in default maxTLSCertDuration)",
        )

    def test_deterministic(self) -> None:
        policy = Policy.from_config({"x509": {"allow": {"dns": ["*.corp"], "ips": ["10.0.0.0/8"]}}}, None)
        request = Request(
            dns_names=("b.example", "a.example", "*.corp"),
            ip_addresses=(ipaddress.ip_address("192.0.2.2"), ipaddress.ip_address("192.0.2.1")),
            key=KeyInfo("RSA", 1024),
            now=NOW,
        )
        first = policy.evaluate(request)
        rebuilt = Policy.from_config({"x509": {"allow": {"dns": ["*.corp"], "ips": ["10.0.0.0/8"]}}}, None)
        assert all(rebuilt.evaluate(request) == first for _ in range(3))
        assert [r.split('"')[1] for r in first.reasons[:4]] == ["b.example", "a.example", "*.corp", "192.0.2.2"]

    def test_duplicate_names_give_one_reason(self) -> None:
        decision = judge({"x509": {"deny": {"dns": ["bad.corp"]}}}, dns_names=("bad.corp", "bad.corp"))
        assert len(decision.reasons) == 1

    def test_an_empty_request_is_judged_on_key_and_validity(self) -> None:
        assert judge({"x509": {"allow": {"dns": ["*.corp"]}}}).allowed

    def test_request_rejects_naive_times_and_string_ips(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            Request(key=EC_P256, now=datetime(2030, 1, 1))
        with pytest.raises(ValueError, match="not_after must be a timezone-aware"):
            Request(key=EC_P256, now=NOW, not_after=datetime(2030, 1, 2))
        with pytest.raises(TypeError, match="ipaddress objects"):
            Request(key=EC_P256, now=NOW, ip_addresses=("10.0.0.1",))  # type: ignore[arg-type]

    def test_request_coerces_lists_to_tuples(self) -> None:
        request = Request(key=EC_P256, now=NOW, dns_names=["a.corp"])  # type: ignore[arg-type]
        assert request.dns_names == ("a.corp",)
        hash(request)
