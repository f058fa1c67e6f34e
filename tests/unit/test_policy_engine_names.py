"""`Policy.evaluate` on names: allow/deny, spelling tricks, wildcards, IPs, emails, URIs, two levels."""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

import pytest

from policy import Decision, KeyInfo, Policy, Request

NOW = datetime(2030, 1, 1, 12, 0, 0, tzinfo=UTC)
EC_P256 = KeyInfo("EC", 256, "P-256")

AUTHORITY: dict[str, Any] = {
    "x509": {
        "allow": {
            "dns": ["*.corp", "localhost"],
            "ips": ["10.0.0.0/8", "127.0.0.1"],
            "emails": ["@corp.com", "alice@example.com"],
            "uris": ["spiffe.corp", "*.svc.corp"],
        },
        "deny": {"dns": ["*.evil.corp"]},
    }
}


def evaluate(
    authority: dict[str, Any] | None,
    provisioner: dict[str, Any] | None = None,
    *,
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    emails: tuple[str, ...] = (),
    uris: tuple[str, ...] = (),
) -> Decision:
    policy = Policy.from_config(authority, None, "admin", provisioner)
    return policy.evaluate(
        Request(
            dns_names=dns,
            ip_addresses=tuple(ipaddress.ip_address(ip) for ip in ips),
            emails=emails,
            uris=uris,
            key=EC_P256,
            now=NOW,
        )
    )


def x509(allow: dict[str, Any] | None = None, deny: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {"x509": {"allow": allow or {}, "deny": deny or {}, **extra}}


def test_allowed_names_pass() -> None:
    decision = evaluate(
        AUTHORITY,
        dns=("a.corp", "a.b.corp", "localhost"),
        ips=("10.1.2.3", "127.0.0.1"),
        emails=("bob@corp.com", "alice@example.com"),
        uris=("spiffe://spiffe.corp/ns/a/sa/b", "https://api.svc.corp/v1"),
    )
    assert decision.reasons == ()
    assert decision.allowed


def test_deny_wins_and_the_reason_names_the_rule() -> None:
    decision = evaluate(AUTHORITY, dns=("a.evil.corp",))
    assert not decision.allowed
    assert decision.reasons == ('authority policy x509.deny.dns "*.evil.corp" denies DNS name "a.evil.corp"',)


@pytest.mark.parametrize(
    "spelling",
    [
        "A.EVIL.corp",
        "a.evil.corp.",
        "a.EVIL.CORP.",
        "a.\uff45\uff56\uff49\uff4c.corp",  # full-width letters
        "a\u3002evil\u3002corp",  # ideographic full stops
        "a.ev\u00adil.corp",  # soft hyphen, ignored by UTS #46
        "x.y.evil.corp",
    ],
)
def test_no_spelling_slips_past_a_deny_rule(spelling: str) -> None:
    decision = evaluate({"x509": {"deny": {"dns": ["*.evil.corp"]}}}, dns=(spelling,))
    assert not decision.allowed
    assert decision.reasons[0].startswith('authority policy x509.deny.dns "*.evil.corp" denies DNS name ')


@pytest.mark.parametrize(
    ("rule", "request_name"),
    [
        ("b\u00fccher.corp", "xn--bcher-kva.corp"),
        ("b\u00fccher.corp", "XN--BCHER-KVA.corp."),
        ("xn--bcher-kva.corp", "B\u00fccher.corp"),
        ("*.xn--bcher-kva.corp", "www.b\u00fccher.corp"),
    ],
)
def test_unicode_and_a_label_forms_are_the_same_name(rule: str, request_name: str) -> None:
    assert not evaluate({"x509": {"deny": {"dns": [rule]}}}, dns=(request_name,)).allowed
    assert evaluate({"x509": {"allow": {"dns": [rule]}}}, dns=(request_name,)).allowed


def test_reason_shows_the_normalised_form() -> None:
    decision = evaluate({"x509": {"deny": {"dns": ["evil.corp"]}}}, dns=("EVIL.corp.",))
    assert decision.reasons == (
        'authority policy x509.deny.dns "evil.corp" denies DNS name "EVIL.corp." (as "evil.corp")',
    )


@pytest.mark.parametrize(
    "name",
    ["a..corp", "a.corp..", "a_b.corp", "-a.corp", "xn--evil-.corp", "x" * 64 + ".corp", "a." * 126 + "ab", "a*.corp"],
)
def test_names_that_fail_normalisation_are_denied_even_without_rules(name: str) -> None:
    decision = evaluate(None, dns=(name,))
    assert not decision.allowed
    assert len(decision.reasons) == 1 and decision.reasons[0].startswith("DNS name ")
    assert " is invalid: " in decision.reasons[0]


def test_hostile_names_cannot_forge_reason_text() -> None:
    decision = evaluate(None, dns=('a.corp" allowed\n\u202e',))
    assert not decision.allowed
    assert "\n" not in decision.reasons[0] and "\u202e" not in decision.reasons[0]


@pytest.mark.parametrize(
    "spelling", ["10.0.0.1", "10.0.0.1.", "[::ffff:10.0.0.1]", "::ffff:10.0.0.1", "0xa.0.0.1", "167772161"]
)
def test_ip_literals_as_dns_names_are_denied_and_judged_as_ips(spelling: str) -> None:
    decision = evaluate({"x509": {"deny": {"ips": ["10.0.0.0/8"]}}}, dns=(spelling,))
    assert not decision.allowed
    assert decision.reasons[0].startswith(f'DNS name "{spelling}" is invalid: it is an IP address')
    assert any(
        'x509.deny.ips "10.0.0.0/8" denies IP address "10.0.0.1" written as DNS name' in r for r in decision.reasons
    )


def test_ip_literal_as_dns_name_is_denied_even_where_the_ip_is_allowed() -> None:
    decision = evaluate(AUTHORITY, dns=("[::1]",), ips=())
    assert not decision.allowed
    assert decision.reasons[0] == 'DNS name "[::1]" is invalid: it is an IP address, which belongs in the IP names'
    assert 'IP address "::1" written as DNS name "[::1]" matches no x509.allow.ips rule' in decision.reasons[1]


def test_ipv4_mapped_addresses_are_their_ipv4_address() -> None:
    allow_v4 = x509(allow={"ips": ["10.0.0.0/8"]})
    assert evaluate(allow_v4, ips=("::ffff:10.0.0.1",)).allowed
    deny_v4 = x509(deny={"ips": ["10.0.0.0/8"]})
    decision = evaluate(deny_v4, ips=("::ffff:10.0.0.1",))
    assert decision.reasons == (
        'authority policy x509.deny.ips "10.0.0.0/8" denies IP address "::ffff:a00:1" (as "10.0.0.1")',
    )
    # A mapped rule is an IPv4 rule.
    assert not evaluate(x509(deny={"ips": ["::ffff:10.0.0.0/104"]}), ips=("10.0.0.1",)).allowed
    # A deny rule written for IPv6 still denies the mapped spelling, but not plain IPv4.
    assert not evaluate(x509(deny={"ips": ["::/0"]}), ips=("::ffff:10.0.0.1",)).allowed
    assert evaluate(x509(deny={"ips": ["::/0"]}), ips=("10.0.0.1",)).allowed
    # An IPv6 allow rule does not let an IPv4 address in through its mapped spelling.
    assert not evaluate(x509(allow={"ips": ["::/0"]}), ips=("::ffff:10.0.0.1",)).allowed


def test_ip_rules_v4_and_v6() -> None:
    policy = x509(allow={"ips": ["10.0.0.0/8", "2001:db8::/32", "127.0.0.1"]}, deny={"ips": ["10.9.0.0/16"]})
    assert evaluate(policy, ips=("10.1.1.1", "2001:db8::5", "127.0.0.1")).allowed
    assert not evaluate(policy, ips=("127.0.0.2",)).allowed
    assert not evaluate(policy, ips=("2001:db9::1",)).allowed
    assert evaluate(policy, ips=("10.9.0.1",)).reasons == (
        'authority policy x509.deny.ips "10.9.0.0/16" denies IP address "10.9.0.1"',
    )


class TestWildcardRequests:
    def test_denied_unless_the_level_allows_wildcards(self) -> None:
        decision = evaluate(x509(allow={"dns": ["*.corp"]}), dns=("*.foo.corp",))
        assert decision.reasons == (
            'authority policy: wildcard DNS name "*.foo.corp" is not allowed (x509.allowWildcardNames is false)',
        )
        assert not evaluate(None, dns=("*.foo.corp",)).allowed  # hardened default
        assert evaluate(x509(allow={"dns": ["*.corp"]}, allowWildcardNames=True), dns=("*.foo.corp",)).allowed

    @pytest.mark.parametrize(
        ("rule", "allowed"),
        [("*.corp", True), ("*.foo.corp", True), ("a.foo.corp", False), ("foo.corp", False), ("*.a.foo.corp", False)],
    )
    def test_an_allow_rule_must_cover_everything_the_wildcard_could_be(self, rule: str, allowed: bool) -> None:
        policy = x509(allow={"dns": [rule]}, allowWildcardNames=True)
        assert evaluate(policy, dns=("*.foo.corp",)).allowed is allowed

    @pytest.mark.parametrize(
        ("rule", "denied"),
        [
            ("a.foo.corp", True),
            ("*.foo.corp", True),
            ("*.corp", True),
            ("*.a.foo.corp", False),
            ("foo.corp", False),
            ("a.b.foo.corp", False),
        ],
    )
    def test_a_deny_rule_denies_if_it_could_match_any_covered_name(self, rule: str, denied: bool) -> None:
        policy = x509(deny={"dns": [rule]}, allowWildcardNames=True)
        assert (not evaluate(policy, dns=("*.foo.corp",)).allowed) is denied

    def test_both_levels_must_allow_wildcards(self) -> None:
        authority = x509(allowWildcardNames=True)
        assert evaluate(authority, None, dns=("*.foo.corp",)).allowed
        # A provisioner without an x509 section adds no restriction...
        assert evaluate(authority, {"keys": {}}, dns=("*.foo.corp",)).allowed
        # ...but one with an x509 section decides for itself.
        decision = evaluate(authority, x509(deny={"dns": ["bad.corp"]}), dns=("*.foo.corp",))
        assert decision.reasons == (
            'provisioner "admin" policy: wildcard DNS name "*.foo.corp" is not allowed (x509.allowWildcardNames is false)',  # noqa: E501
        )


class TestAllowListSemantics:
    def test_no_allow_rules_means_everything_not_denied(self) -> None:
        decision = evaluate(
            x509(deny={"dns": ["bad.corp"]}),
            dns=("a.example",),
            ips=("192.0.2.1",),
            emails=("x@example.org",),
            uris=("urn:x:y",),
        )
        assert decision.allowed

    def test_a_type_without_allow_rules_is_denied_once_any_allow_rule_exists(self) -> None:
        decision = evaluate(x509(allow={"dns": ["*.corp"]}), dns=("a.corp",), ips=("10.0.0.1",), emails=("a@corp.com",))
        assert decision.reasons == (
            'authority policy: IP address "10.0.0.1" is not allowed: x509.allow has rules, none of them in x509.allow.ips',  # noqa: E501
            (
                'authority policy: email address "a@corp.com" is not allowed: x509.allow has rules, '
                "none of them in x509.allow.emails"
            ),
        )

    def test_a_name_outside_the_allow_list(self) -> None:
        assert evaluate(AUTHORITY, dns=("a.example",)).reasons == (
            'authority policy: DNS name "a.example" matches no x509.allow.dns rule',
        )
        assert not evaluate(AUTHORITY, dns=("corp",)).allowed  # "*.corp" is strictly under corp

    def test_every_name_is_judged_and_every_reason_returned(self) -> None:
        decision = evaluate(AUTHORITY, dns=("ok.corp", "a.evil.corp", "a.example", "b..corp"), ips=("192.0.2.1",))
        assert decision.reasons == (
            'DNS name "b..corp" is invalid: empty label',
            'authority policy x509.deny.dns "*.evil.corp" denies DNS name "a.evil.corp"',
            'authority policy: DNS name "a.example" matches no x509.allow.dns rule',
            'authority policy: IP address "192.0.2.1" matches no x509.allow.ips rule',
        )


class TestEmails:
    def test_domain_rules_match_exactly_that_domain(self) -> None:
        assert evaluate(AUTHORITY, emails=("Bob@CORP.com.",)).allowed
        assert not evaluate(AUTHORITY, emails=("bob@sub.corp.com",)).allowed

    def test_exact_rules_compare_the_local_part_case_sensitively(self) -> None:
        assert evaluate(AUTHORITY, emails=("alice@EXAMPLE.com",)).allowed
        assert not evaluate(AUTHORITY, emails=("Alice@example.com",)).allowed

    def test_deny_rules_fold_the_local_part_case(self) -> None:
        policy = x509(deny={"emails": ["alice@example.com"]})
        assert evaluate(policy, emails=("ALICE@Example.COM",)).reasons == (
            (
                'authority policy x509.deny.emails "alice@example.com" denies email address "ALICE@Example.COM" '
                '(as "ALICE@example.com")'
            ),
        )
        assert not evaluate(x509(deny={"emails": ["@Example.com"]}), emails=("x@example.com",)).allowed

    def test_idn_domains(self) -> None:
        policy = x509(allow={"emails": ["@b\u00fccher.corp"]})
        assert evaluate(policy, emails=("a@xn--bcher-kva.corp",)).allowed

    @pytest.mark.parametrize("email", ["no-at-sign", "a@b@corp.com", '"q"@corp.com', "a@10.0.0.1", "\u00fc@corp.com"])
    def test_malformed_emails_are_denied(self, email: str) -> None:
        decision = evaluate(None, emails=(email,))
        assert not decision.allowed
        assert decision.reasons[0].startswith("email address ")


class TestUris:
    def test_uri_hosts_match_like_dns_names(self) -> None:
        assert evaluate(AUTHORITY, uris=("spiffe://SPIFFE.corp./ns/a",)).allowed
        assert evaluate(AUTHORITY, uris=("https://a.b.svc.corp:8443/x?y#z",)).allowed
        assert not evaluate(AUTHORITY, uris=("spiffe://other.corp/ns/a",)).allowed
        assert not evaluate(AUTHORITY, uris=("https://svc.corp/",)).allowed

    def test_uri_deny_rules(self) -> None:
        decision = evaluate(x509(deny={"uris": ["*.evil.corp"]}), uris=("https://x.EVIL.corp./",))
        assert decision.reasons == (
            'authority policy x509.deny.uris "*.evil.corp" denies URI "https://x.EVIL.corp./" (host "x.evil.corp")',
        )
        # The host is after the userinfo, whatever the userinfo looks like.
        assert not evaluate(x509(deny={"uris": ["evil.corp"]}), uris=("https://good.corp@evil.corp/",)).allowed

    def test_a_uri_without_a_host_is_denied_when_uri_allow_rules_exist(self) -> None:
        decision = evaluate(AUTHORITY, uris=("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",))
        assert decision.reasons == (
            (
                'authority policy: URI "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6" (no host) '
                "matches no x509.allow.uris rule"
            ),
        )
        assert evaluate(None, uris=("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6",)).allowed

    def test_an_ip_host_is_judged_by_ip_deny_rules(self) -> None:
        decision = evaluate(x509(deny={"ips": ["10.0.0.0/8"]}), uris=("https://[::ffff:10.0.0.1]/",))
        assert decision.reasons == (
            'authority policy x509.deny.ips "10.0.0.0/8" denies URI "https://[::ffff:10.0.0.1]/" (host "10.0.0.1")',
        )
        assert not evaluate(AUTHORITY, uris=("https://10.0.0.1/",)).allowed  # never matches a URI rule

    @pytest.mark.parametrize(
        "uri", ["https://good.corp\\@evil.corp/", "https://%65vil.corp/", "https://*.corp/", "no-scheme.corp/x"]
    )
    def test_ambiguous_or_malformed_uris_are_denied(self, uri: str) -> None:
        decision = evaluate(None, uris=(uri,))
        assert not decision.allowed
        assert decision.reasons[0].startswith("URI ")


class TestTwoLevels:
    PROVISIONER = x509(allow={"dns": ["*.team.corp"]}, deny={"dns": ["secret.team.corp"]})

    def test_a_request_must_satisfy_both_levels(self) -> None:
        assert evaluate(AUTHORITY, self.PROVISIONER, dns=("a.team.corp",)).allowed
        assert evaluate(AUTHORITY, self.PROVISIONER, dns=("a.other.corp",)).reasons == (
            'provisioner "admin" policy: DNS name "a.other.corp" matches no x509.allow.dns rule',
        )
        assert evaluate(AUTHORITY, self.PROVISIONER, dns=("secret.team.corp",)).reasons == (
            'provisioner "admin" policy x509.deny.dns "secret.team.corp" denies DNS name "secret.team.corp"',
        )

    def test_the_provisioner_cannot_widen_the_authority(self) -> None:
        widening = x509(allow={"dns": ["*.example"]})
        assert evaluate(AUTHORITY, widening, dns=("a.example",)).reasons == (
            'authority policy: DNS name "a.example" matches no x509.allow.dns rule',
        )
        decision = evaluate(AUTHORITY, self.PROVISIONER, dns=("a.evil.corp", "x.example"))
        assert decision.reasons == (
            'authority policy x509.deny.dns "*.evil.corp" denies DNS name "a.evil.corp"',
            'authority policy: DNS name "x.example" matches no x509.allow.dns rule',
            'provisioner "admin" policy: DNS name "a.evil.corp" matches no x509.allow.dns rule',
            'provisioner "admin" policy: DNS name "x.example" matches no x509.allow.dns rule',
        )

    def test_a_provisioner_without_name_rules_adds_none(self) -> None:
        assert evaluate(AUTHORITY, {"keys": {"allow": ["EC-P256"]}}, dns=("a.corp",)).allowed
        assert evaluate(AUTHORITY, {}, dns=("a.corp",)).allowed
