import ipaddress
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509

from appliance.errors import BadRequest
from appliance.names import RequestedNames, split_sans
from appliance.provisioners.validity import parse_time_or_duration


def test_split_sans_like_step():
    n = split_sans(["api.internal", "10.0.1.50", "[::1]", "ops@corp.com", "spiffe://corp/api", "api.internal"])
    assert n.dns == ("api.internal",)
    assert n.ips == (ipaddress.ip_address("10.0.1.50"), ipaddress.ip_address("::1"))
    assert n.emails == ("ops@corp.com",)
    assert n.uris == ("spiffe://corp/api",)


def test_common_name_joins_the_sans_once():
    n = split_sans(["api.corp"]).with_common_name("API.corp")
    assert n.dns == ("api.corp",)
    n = split_sans(["api.corp"]).with_common_name("10.0.0.1")
    assert n.ips == (ipaddress.ip_address("10.0.0.1"),)


def test_mismatch_per_type_as_step_ca():
    token = split_sans(["a.corp", "b.corp", "10.0.0.1"])
    same = RequestedNames.from_general_names(x509.SubjectAlternativeName(
        [x509.DNSName("B.corp"), x509.DNSName("a.corp")]))
    assert token.mismatch(same) == ""
    extra = RequestedNames.from_general_names(x509.SubjectAlternativeName(
        [x509.DNSName("a.corp"), x509.DNSName("b.corp"), x509.DNSName("evil.corp")]))
    assert "evil.corp" in token.mismatch(extra)
    other_ip = RequestedNames(ips=(ipaddress.ip_address("10.0.0.2"),))
    assert "IP addresses" in token.mismatch(other_ip)


def test_time_or_duration():
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_time_or_duration("", now, "notAfter") is None
    assert parse_time_or_duration("1h", now, "notAfter") == now + timedelta(hours=1)
    assert parse_time_or_duration("-5m", now, "notBefore") == now - timedelta(minutes=5)
    assert parse_time_or_duration("2026-02-01T00:00:00Z", now, "x") == datetime(2026, 2, 1, tzinfo=timezone.utc)
    with pytest.raises(BadRequest, match="time zone"):
        parse_time_or_duration("2026-02-01T00:00:00", now, "x")
    with pytest.raises(BadRequest, match="neither"):
        parse_time_or_duration("tomorrow", now, "notAfter")
