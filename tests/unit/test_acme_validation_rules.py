"""The ACME validator's pure rules: resolver settings, identifier names, redirects, the dns-01 value."""

from __future__ import annotations

import base64
import hashlib
import ipaddress

import pytest

from appliance.acme.resolver import DNSProblem, check_dns_name, make_resolver, parse_resolver, reverse_name
from appliance.acme.validation import (
    ValidationError,
    ValidationSettings,
    _redirect_target,
    dns01_txt_value,
    validate,
)


@pytest.mark.parametrize("text, parsed", [
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("10.1.2.3", ("10.1.2.3", 53)),
    ("[::1]:5300", ("::1", 5300)),
    ("[2001:db8::1]", ("2001:db8::1", 53)),
    ("2001:db8::53", ("2001:db8::53", 53)),
])
def test_parse_resolver(text: str, parsed: tuple[str, int]) -> None:
    assert parse_resolver(text) == parsed


@pytest.mark.parametrize("text", ["dns.example:53", "127.0.0.1:0", "127.0.0.1:70000", "127.0.0.1:x", "[::1",
                                  "[::1]x53", ""])
def test_parse_resolver_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_resolver(text)


def test_bad_resolver_setting_is_a_dns_problem() -> None:
    with pytest.raises(DNSProblem) as info:
        make_resolver(("ns.example:53",), 1.0)
    assert info.value.problem == "dns" and "not an IP address" in info.value.detail


@pytest.mark.parametrize("value, name", [
    ("WWW.Example.TEST.", "www.example.test"),
    ("*.example.test", "*.example.test"),
    ("xn--bcher-kva.example", "xn--bcher-kva.example"),
])
def test_check_dns_name(value: str, name: str) -> None:
    assert check_dns_name(value) == name


@pytest.mark.parametrize("value", ["", "127.0.0.1", "[::1]", "a..b", "-a.test", "a-.test", "under_score.test",
                                   "a.*.test", "bücher.example", "x" * 64 + ".test", "a b.test"])
def test_check_dns_name_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        check_dns_name(value)


def test_reverse_names() -> None:
    assert reverse_name(ipaddress.ip_address("192.0.2.5")) == "5.2.0.192.in-addr.arpa"
    assert reverse_name(ipaddress.ip_address("2001:db8::1")) == \
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"


def test_dns01_value() -> None:
    value = dns01_txt_value("token.thumbprint")
    assert "=" not in value and len(value) == 43
    assert base64.urlsafe_b64decode(value + "=") == hashlib.sha256(b"token.thumbprint").digest()


SETTINGS = ValidationSettings(http01_port=5002, tlsalpn01_port=5001)


@pytest.mark.parametrize("location, target", [
    ("/other", "http://a.test:5002/other"),
    ("http://b.test/x", "http://b.test/x"),
    ("http://b.test:5002/x", "http://b.test:5002/x"),
    ("https://b.test/x", "https://b.test/x"),
    ("https://b.test:5001/x?y", "https://b.test:5001/x?y"),
])
def test_redirects_followed(location: str, target: str) -> None:
    assert _redirect_target("http://a.test:5002/.well-known/acme-challenge/t", location, SETTINGS) == target


@pytest.mark.parametrize("location", ["http://b.test:8080/", "https://b.test:5002/", "ftp://b.test/",
                                      "file:///etc/passwd", "http://b.test:99999/", "//:5002/x"])
def test_redirects_refused(location: str) -> None:
    with pytest.raises(ValidationError) as info:
        _redirect_target("http://a.test:5002/x", location, SETTINGS)
    assert info.value.problem == "connection"


def test_error_carries_problem_and_detail() -> None:
    e = ValidationError("dns", "DNS problem: NXDOMAIN looking up A for x.test")
    assert (e.problem, e.detail, str(e)) == ("dns", "DNS problem: NXDOMAIN looking up A for x.test",
                                             "dns: DNS problem: NXDOMAIN looking up A for x.test")


def test_identifier_rules_before_any_network() -> None:
    """Refusals that need no look-up: the policy callback is never even asked."""
    asked: list[object] = []

    def policy(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        asked.append(ip)
        return True

    cases = [("http-01", "dns", "*.a.test", "rejectedIdentifier"), ("tls-alpn-01", "dns", "*.a.test",
             "rejectedIdentifier"), ("dns-01", "ip", "192.0.2.1", "rejectedIdentifier"),
             ("http-01", "email", "a@a.test", "unsupportedIdentifier"), ("x-01", "dns", "a.test", "malformed")]
    for challenge, ident_type, value, problem in cases:
        with pytest.raises(ValidationError) as info:
            validate(challenge, ident_type, value, "tok", "tok.thumb", ValidationSettings(timeout=1), policy)
        assert info.value.problem == problem, (challenge, value)
    assert asked == []
