"""Normalisation of names and the matching semantics of rules, below the engine."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from policy import normalize_dns_name
from policy.names import DnsName, Mailbox, _parse_host_idna, parse_host, parse_mailbox, parse_uri
from policy.rules import parse_dns_rule, parse_email_rule, parse_ip_rule


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("host.corp", "host.corp"),
        ("EVIL.corp.", "evil.corp"),
        ("Bücher.corp", "xn--bcher-kva.corp"),
        ("XN--BCHER-KVA.corp", "xn--bcher-kva.corp"),
        ("fa\u00df.corp", "xn--fa-hia.corp"),  # IDNA 2008: sharp s is kept, not mapped to "ss"
        ("\uff25\uff36\uff29\uff2c\uff0ecorp", "evil.corp"),  # full-width letters and dot
        ("a\u3002evil\u3002corp", "a.evil.corp"),  # ideographic full stop
        ("evil\u00ad.corp", "evil.corp"),  # soft hyphen is ignored by UTS #46
        ("*.Foo.corp.", "*.foo.corp"),
        ("123.corp", "123.corp"),
        ("localhost", "localhost"),
    ],
)
def test_dns_names_have_one_spelling(raw: str, canonical: str) -> None:
    assert normalize_dns_name(raw) == canonical


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("", "empty name"),
        ("a..corp", "empty label"),
        ("a.corp..", "empty label"),
        (".", "empty label"),
        ("*", "leftmost label"),
        ("a*.corp", "leftmost label"),
        ("*.*.corp", "leftmost label"),
        ("a.*.corp", "leftmost label"),
        ("a_b.corp", "IDNA 2008"),
        ("-a.corp", "IDNA 2008"),
        ("ab--cd.corp", "IDNA 2008"),
        ("xn--evil-.corp", "IDNA 2008"),
        ("\U0001f4a9.corp", "IDNA 2008"),
        ("a b.corp", "IDNA 2008"),
        ("a.corp:443", "IDNA 2008"),
        ("x" * 64 + ".corp", "IDNA 2008"),
        ("a." * 126 + "ab", "IDNA 2008"),  # 254 characters
        ("x" * 2000, "too long"),
        ("host.123", "numeric"),
        ("a.0x10", "numeric"),
    ],
)
def test_malformed_dns_names_carry_an_error(raw: str, error: str) -> None:
    parsed = parse_host(raw)
    assert parsed.name is None
    assert parsed.error is not None and error in parsed.error


def test_name_of_exactly_253_characters_is_accepted() -> None:
    name = "a." * 126 + "a"
    assert len(name) == 253
    assert normalize_dns_name(name) == name


@pytest.mark.parametrize(
    ("raw", "address", "malformed"),
    [
        ("10.0.0.1", "10.0.0.1", False),
        ("10.0.0.1.", "10.0.0.1", False),
        ("[10.0.0.1]", "10.0.0.1", False),
        ("[::1]", "::1", False),
        ("::1", "::1", False),
        ("::ffff:10.0.0.1", "::ffff:10.0.0.1", False),
        ("\uff11\uff10.0.0.1", "10.0.0.1", False),  # full-width digits
        ("0xa.0.0.1", "10.0.0.1", True),  # what inet_aton and URL parsers read
        ("012.0.0.1", "10.0.0.1", True),  # octal
        ("10.1", "10.0.0.1", True),
        ("167772161", "10.0.0.1", True),
    ],
)
def test_ip_literals_written_as_dns_names_are_recognised(raw: str, address: str, malformed: bool) -> None:
    parsed = parse_host(raw)
    assert parsed.name is None
    assert parsed.ip == ipaddress.ip_address(address)
    assert (parsed.error is not None) is malformed
    with pytest.raises(ValueError, match="IP address|numeric"):
        normalize_dns_name(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("alice@corp.com", Mailbox("alice", "corp.com")),
        ("Alice@CORP.com.", Mailbox("Alice", "corp.com")),
        ("a.b+tag@b\u00fccher.corp", Mailbox("a.b+tag", "xn--bcher-kva.corp")),
        ("a@b@c.corp", "not of the form"),
        ('"a b"@corp.com', "dot-atom"),
        ("a..b@corp.com", "dot-atom"),
        ("@corp.com", "dot-atom"),
        ("\u00fc@corp.com", "dot-atom"),
        ("x" * 65 + "@corp.com", "dot-atom"),
        ("a@", "domain is not a DNS name"),
        ("a@10.0.0.1", "domain is not a DNS name"),
        ("a@[10.0.0.1]", "domain is not a DNS name"),
        ("a@*.corp", "wildcard"),
    ],
)
def test_mailboxes(raw: str, expected: Mailbox | str) -> None:
    parsed = parse_mailbox(raw)
    if isinstance(expected, Mailbox):
        assert parsed == expected
    else:
        assert isinstance(parsed, str) and expected in parsed


@pytest.mark.parametrize(
    ("raw", "host", "ip", "error"),
    [
        ("spiffe://spiffe.corp/ns/a", "spiffe.corp", None, None),
        ("https://EVIL.corp./x", "evil.corp", None, None),
        ("https://good.corp@evil.corp/", "evil.corp", None, None),  # the host is after the userinfo
        ("https://xn--bcher-kva.corp:8443/", "xn--bcher-kva.corp", None, None),
        ("https://10.0.0.1/", None, "10.0.0.1", None),
        ("https://[::1]:8443/", None, "::1", None),
        ("urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6", None, None, None),
        ("file:///etc/hosts", None, None, None),
        ("https://good.corp\\@evil.corp/", None, None, "ASCII URI"),  # parsers disagree on "\"
        ("https://b\u00fccher.corp/", None, None, "ASCII URI"),
        ("https://a.corp /", None, None, "ASCII URI"),
        ("https://%65vil.corp/", None, None, "percent-encoded"),
        ("https://a.corp:99999/", None, None, "malformed URI"),
        ("https://*.corp/", None, None, "wildcards"),
        ("https://0xa.0.0.1/", None, None, "numeric"),
        ("https://[v1.x]/", None, None, "IPv6"),
        ("//a.corp/", None, None, "no scheme"),
        ("a.corp", None, None, "no scheme"),
    ],
)
def test_uri_hosts(raw: str, host: str | None, ip: str | None, error: str | None) -> None:
    parsed = parse_uri(raw)
    assert (str(parsed.name) if parsed.name else None) == host
    assert parsed.ip == (ipaddress.ip_address(ip) if ip else None)
    if error is None:
        assert parsed.error is None
    else:
        assert parsed.error is not None and error in parsed.error


def _name(text: str) -> DnsName:
    return DnsName(text[2:], True) if text.startswith("*.") else DnsName(text)


@pytest.mark.parametrize(
    ("rule", "name", "covers", "touches"),
    [
        ("host.corp", "host.corp", True, True),
        ("host.corp", "a.host.corp", False, False),
        ("*.corp", "a.corp", True, True),
        ("*.corp", "a.b.c.corp", True, True),  # any depth
        ("*.corp", "corp", False, False),  # strictly under
        ("*.corp", "xcorp", False, False),  # label boundary, not a string suffix
        ("*.corp", "*.foo.corp", True, True),
        ("*.foo.corp", "*.foo.corp", True, True),
        ("*.corp", "*.corp", True, True),
        ("a.foo.corp", "*.foo.corp", False, True),  # one name of the wildcard, not all
        ("*.a.foo.corp", "*.foo.corp", False, False),  # the wildcard covers one label only
        ("a.b.foo.corp", "*.foo.corp", False, False),
        ("foo.corp", "*.foo.corp", False, False),  # the wildcard does not cover its base
        ("*.foo.corp", "*.corp", False, False),  # names under foo.corp are two labels below corp
        ("foo.corp", "*.corp", False, True),
    ],
)
def test_dns_rule_semantics(rule: str, name: str, covers: bool, touches: bool) -> None:
    parsed = parse_dns_rule(rule)
    assert parsed.covers(_name(name)) is covers
    assert parsed.touches(_name(name)) is touches


@pytest.mark.parametrize(
    ("rule", "network"),
    [
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("127.0.0.1", "127.0.0.1/32"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::1", "::1/128"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),  # IPv4-mapped ranges are stored as IPv4
        ("::ffff:10.0.0.1", "10.0.0.1/32"),
        ("::/0", "::/0"),
    ],
)
def test_ip_rules_are_normalised(rule: str, network: str) -> None:
    assert parse_ip_rule(rule).network == ipaddress.ip_network(network)


def test_ip_rule_matches_by_version() -> None:
    rule = parse_ip_rule("::/0")
    assert rule.matches(ipaddress.ip_address("2001:db8::1"))
    assert not rule.matches(ipaddress.ip_address("10.0.0.1"))


def test_email_rules() -> None:
    domain = parse_email_rule("@CORP.com")
    exact = parse_email_rule("alice@Example.com")
    assert domain.matches(Mailbox("bob", "corp.com"), fold_local_case=False)
    assert not domain.matches(Mailbox("bob", "sub.corp.com"), fold_local_case=False)
    assert exact.matches(Mailbox("alice", "example.com"), fold_local_case=False)
    assert not exact.matches(Mailbox("Alice", "example.com"), fold_local_case=False)
    assert exact.matches(Mailbox("Alice", "example.com"), fold_local_case=True)


_HOST_PIECES = st.sampled_from(["a", "z", "0", "9", "-", ".", "*", "*.", "xn--", "--", "A", "_", "0x", "ü", "\u3002",
                                "a" * 63, "b" * 64, "1", "."])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_HOST_PIECES, max_size=12).map("".join) | st.text(alphabet="abc019-.*xnX_", max_size=70))
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61)  # 253: the longest name
@example("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62)  # 254
@example("xn--bcher-kva.corp")
@example("0x1f")
@example("a.0x")
@example("ab--c.corp")
def test_the_plain_name_shortcut_answers_as_the_idna_path_does(raw: str) -> None:
    """parse_host skips the idna package for plain LDH names: for every input it must answer exactly as the
    full UTS 46 / IDNA 2008 path does (the same name, the same IP reading, the same error)."""
    assert parse_host(raw) == _parse_host_idna(raw)
