"""The appliance's config disk model and the files first boot renders from it (the nft script is also loaded for
real over the base ruleset in tests/integration/test_image_files.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from appliance.cli.appliance_config import (
    ApplianceConfig,
    firewall_rules,
    networkd_conf,
    shadow_with_break_glass,
    timesyncd_conf,
)

BASE = {"mode": "dev", "dnsNames": ["ca.internal"], "ntp": ["10.0.0.123"]}


def test_rules_carry_dns_ntp_and_the_allowlist_with_their_reasons() -> None:
    cfg = ApplianceConfig.model_validate({
        **BASE, "network": {"address": "10.0.0.10/24", "gateway": "10.0.0.1", "dns": ["10.0.0.53"]},
        "ports": {"https": 443, "http": 80},
        "outbound": [{"to": "10.0.5.0/24", "port": 5432, "why": "PostgreSQL"},
                     {"to": "2001:db8::7", "port": 514, "proto": "udp", "why": "syslog (SIEM)"}]})
    rules = firewall_rules(cfg)
    assert "add element inet hsmca ca_ports { 443, 80 }" in rules
    assert 'ip daddr 10.0.0.53/32 udp dport 53 accept comment "DNS"' in rules
    assert 'ip daddr 10.0.0.53/32 tcp dport 53 accept comment "DNS"' in rules
    assert 'ip daddr 10.0.0.123/32 udp dport 123 accept comment "NTP"' in rules
    assert 'ip daddr 10.0.5.0/24 tcp dport 5432 accept comment "PostgreSQL"' in rules
    assert 'ip6 daddr 2001:db8::7/128 udp dport 514 accept comment "syslog (SIEM)"' in rules
    assert rules.index("flush chain inet hsmca allow_out") < rules.index("add rule")
    assert networkd_conf(cfg).splitlines()[4:7] == ["Address=10.0.0.10/24", "Gateway=10.0.0.1", "DNS=10.0.0.53"]
    assert timesyncd_conf(cfg) == "[Time]\nNTP=10.0.0.123\nFallbackNTP=\n"
    assert "DHCP=ipv4" in networkd_conf(ApplianceConfig.model_validate(BASE))


@pytest.mark.parametrize(("change", "message"), [
    ({"outbound": [{"to": "kms.example.com", "port": 443, "why": "KMS"}]}, "names are not allowed"),
    ({"outbound": [{"to": "10.0.0.1/24", "port": 443, "why": "KMS"}]}, "host bits set"),
    ({"outbound": [{"to": "10.0.0.1", "port": 0, "why": "KMS"}]}, "greater than or equal to 1"),
    ({"outbound": [{"to": "10.0.0.1", "port": 443, "why": 'x" accept; drop "'}]}, "should match pattern"),
    ({"outbound": [{"to": "10.0.0.1", "port": 443}]}, "why"),
    ({"outbound": [{"to": "10.0.0.1", "port": 443, "proto": "icmp", "why": "x"}]}, "'tcp' or 'udp'"),
    ({"ntp": []}, "at least 1 item"),
    ({"ntp": ["pool.ntp.org"]}, "valid IPv4 or IPv6 address"),
    ({"mode": "test"}, "'production' or 'dev'"),
    ({"sshd": True}, "Extra inputs are not permitted"),
    ({"mode": "production"}, "production mode needs hsm (module, token)"),
    ({"mode": "production", "hsm": {"module": "libvendor.so", "token": "t"}}, "should match pattern"),
    ({"mode": "production", "hsm": {"module": "/usr/lib/x.so", "token": "t" * 33}}, "at most 32 characters"),
    ({"breakGlass": {"passwordHash": "correct horse battery staple"}}, "should match pattern"),
    ({"breakGlass": {"passwordHash": "$1$saltsalt$md5isnotenough000000"}}, "should match pattern"),
    ({"breakGlass": {"passwordHash": "$6$salt$x:0:0::/root:/bin/sh"}}, "should match pattern"),
])
def test_bad_config_is_refused_with_the_reason(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as exc:
        ApplianceConfig.model_validate({**BASE, **change})
    assert message in str(exc.value)


def test_break_glass_sets_only_its_own_shadow_entry() -> None:
    shadow = "root:!:20000:0:99999:7:::\nbreakglass:!:20000:0:99999:7:::\nhsmca:!:20000::::::\n"
    made = shadow_with_break_glass(shadow, "$6$abcdefgh$hash")
    assert made.splitlines() == ["root:!:20000:0:99999:7:::", "breakglass:$6$abcdefgh$hash:20000:0:99999:7:::",
                                 "hsmca:!:20000::::::"]
    with pytest.raises(ValueError, match="no breakglass account"):
        shadow_with_break_glass("root:!:20000:0:99999:7:::\n", "$6$abcdefgh$hash")
