"""Validation of ca.json's `policy` and `claims` objects, and how `Policy.from_config` layers them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from policy import Claims, Policy, PolicyConfig, PolicyConfigError

EXAMPLE_POLICY: dict[str, Any] = {
    "x509": {
        "allow": {
            "dns": ["*.corp", "localhost"],
            "ips": ["10.0.0.0/8", "127.0.0.1"],
            "emails": ["@corp.com", "alice@example.com"],
            "uris": ["spiffe.corp", "*.svc.corp"],
        },
        "deny": {"dns": ["*.evil.corp"], "ips": [], "emails": [], "uris": []},
        "allowWildcardNames": False,
    },
    "keys": {"allow": ["EC-P256", "EC-P384", "RSA", "Ed25519"], "minRSASize": 2048, "maxRSASize": 8192},
}
EXAMPLE_CLAIMS = {"minTLSCertDuration": "5m", "maxTLSCertDuration": "24h", "defaultTLSCertDuration": "24h"}


def test_the_documented_example_loads() -> None:
    config = PolicyConfig.model_validate(EXAMPLE_POLICY)
    assert config.x509 is not None and config.keys is not None
    assert [r.source for r in config.x509.allow.dns] == ["*.corp", "localhost"]
    assert config.keys.minRSASize == 2048
    claims = Claims.model_validate(EXAMPLE_CLAIMS)
    assert claims.maxTLSCertDuration == timedelta(hours=24)


def test_a_dump_is_step_cas_shape_and_loads_again() -> None:
    config = PolicyConfig.model_validate(EXAMPLE_POLICY)
    for dumped in (config.model_dump(exclude_none=True), config.model_dump(mode="json", by_alias=True)):
        assert dumped["x509"]["allowWildcardNames"] is False
        assert list(dumped["x509"]["allow"]["dns"]) == ["*.corp", "localhost"]
        assert PolicyConfig.model_validate(dumped) == config
    claims = Claims.model_validate({"maxTLSCertDuration": "1h30m"})
    assert claims.model_dump(mode="json", exclude_none=True) == {"maxTLSCertDuration": "1h30m"}


def test_step_ca_claims_fields_load() -> None:
    claims = Claims.model_validate(
        {
            "minUserSSHCertDuration": "5m",
            "maxUserSSHCertDuration": "24h",
            "defaultUserSSHCertDuration": "16h",
            "maxHostSSHCertDuration": "720h",
            "enableSSHCA": True,
            "disableRenewal": False,
            "allowRenewalAfterExpiry": False,
        }
    )
    assert claims.enableSSHCA is True


@pytest.mark.parametrize(
    ("data", "location", "message"),
    [
        ({"x509": {"allow": {"dns": ["a.corp"]}, "denied": {}}}, "x509.denied", "Extra inputs"),
        ({"x509": {"allow": {"commonNames": ["a"]}}}, "x509.allow.commonNames", "Extra inputs"),
        ({"x509": {"allow_wildcard_names": True}}, "x509.allow_wildcard_names", "Extra inputs"),
        ({"ssh": {"users": {}}}, "ssh.users", "Extra inputs"),
        ({"ssh": {"user": {"allow": {"principal": [" root"]}}}}, "ssh.user.allow.principal.0", "principal rule"),
        ({"ssh": {"host": {"deny": {"dns": ["*"]}}}}, "ssh.host.deny.dns.0", ""),
        ({"x509": {"allow": {"ips": ["10.0.0.0/33"]}}}, "x509.allow.ips.0", "not an IP address or CIDR"),
        ({"x509": {"allow": {"ips": ["10.0.0.1/8"]}}}, "x509.allow.ips.0", "host bits set"),
        ({"x509": {"deny": {"ips": ["fe80::1%eth0"]}}}, "x509.deny.ips.0", "scoped"),
        ({"x509": {"allow": {"ips": [10]}}}, "x509.allow.ips.0", "must be a string"),
        ({"x509": {"allow": {"dns": "a.corp"}}}, "x509.allow.dns", "valid tuple"),
        ({"x509": {"allow": {"dns": ["*.*.corp"]}}}, "x509.allow.dns.0", "leftmost label"),
        ({"x509": {"allow": {"dns": [".corp"]}}}, "x509.allow.dns.0", 'write "*.corp"'),
        ({"x509": {"allow": {"dns": ["10.0.0.1"]}}}, "x509.allow.dns.0", 'put it in "ips"'),
        ({"x509": {"deny": {"dns": ["a_b.corp"]}}}, "x509.deny.dns.0", "not a valid name"),
        ({"x509": {"deny": {"uris": ["https://a.corp"]}}}, "x509.deny.uris.0", "not a valid name"),
        ({"x509": {"allow": {"emails": ["corp.com"]}}}, "x509.allow.emails.0", 'write "@corp.com"'),
        ({"x509": {"allow": {"emails": ["@"]}}}, "x509.allow.emails.0", "not valid"),
        ({"x509": {"allow": {"emails": ["a b@corp.com"]}}}, "x509.allow.emails.0", "not valid"),
        ({"x509": {"allowWildcardNames": "true"}}, "x509.allowWildcardNames", "valid boolean"),
        ({"keys": {"allow": ["DSA"]}}, "keys.allow.0", "'EC-P256'"),
        ({"keys": {"allow": []}}, "keys", "empty"),
        ({"keys": {"minRSASize": 1024}}, "keys", "below 2048"),
        ({"keys": {"minRSASize": 4096, "maxRSASize": 3072}}, "keys", "greater than maxRSASize"),
        ({"keys": {"allow": ["RSA-2048"], "minRSASize": 3072}}, "keys", "outside minRSASize"),
        ({"keys": {"minRSASize": "2048"}}, "keys.minRSASize", "valid integer"),
    ],
)
def test_bad_policies_are_rejected_with_the_location(data: dict[str, Any], location: str, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PolicyConfig.model_validate(data)
    errors = info.value.errors()
    assert any(".".join(map(str, e["loc"])) == location and message in e["msg"] for e in errors), errors


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"maxTLSCertDuration": "24x"}, "invalid duration '24x'"),
        ({"maxTLSCertDuration": 3600}, "duration string"),
        ({"minTLSCertDuration": "0s"}, "minTLSCertDuration must be greater than 0"),
        ({"maxTLSCertDuration": "-1h"}, "maxTLSCertDuration must be greater than 0"),
        ({"minTLSCertDuration": "2h", "maxTLSCertDuration": "1h"}, "minTLSCertDuration 2h0m is greater than"),
        ({"defaultTLSCertDuration": "48h", "maxTLSCertDuration": "24h"}, "defaultTLSCertDuration 48h0m is greater"),
        ({"minUserSSHCertDuration": "1h", "maxUserSSHCertDuration": "5m"}, "minUserSSHCertDuration"),
        ({"enableSSHCA": "yes"}, "valid boolean"),
        ({"maxTlsCertDuration": "1h"}, "Extra inputs"),
    ],
)
def test_bad_claims_are_rejected(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Claims.model_validate(data)


def test_from_config_says_which_object_is_wrong() -> None:
    with pytest.raises(PolicyConfigError, match=r'^provisioner "admin" policy: x509\.allow\.ips\.0: IP rule'):
        Policy.from_config(EXAMPLE_POLICY, EXAMPLE_CLAIMS, "admin", {"x509": {"allow": {"ips": ["nope"]}}})
    with pytest.raises(PolicyConfigError, match=r"^authority claims: maxTLSCertDuration: invalid duration"):
        Policy.from_config(None, {"maxTLSCertDuration": "forever"})
    with pytest.raises(PolicyConfigError, match=r"^authority policy: must be a JSON object"):
        Policy.from_config(["x509"], None)  # type: ignore[arg-type]


def test_from_config_reports_every_problem() -> None:
    bad = {"x509": {"allow": {"dns": ["*.*.a"], "ips": ["x"]}}, "keys": {"allow": ["DSA"]}}
    with pytest.raises(PolicyConfigError) as info:
        Policy.from_config(bad, None)
    text = str(info.value)
    assert "x509.allow.dns.0" in text and "x509.allow.ips.0" in text and "keys.allow.0" in text


def test_merged_claims_must_agree() -> None:
    # Each object is fine alone; merged, the provisioner's max falls under the authority's min.
    with pytest.raises(PolicyConfigError) as info:
        Policy.from_config(None, {"minTLSCertDuration": "1h"}, "ops", None, {"maxTLSCertDuration": "30m"})
    text = str(info.value)
    assert "authority claims.minTLSCertDuration 1h0m is greater than" in text
    assert 'provisioner "ops" claims.maxTLSCertDuration 30m' in text
    assert "built-in default defaultTLSCertDuration 24h0m is greater than" in text


def test_from_config_accepts_validated_models() -> None:
    from_dicts = Policy.from_config(EXAMPLE_POLICY, EXAMPLE_CLAIMS, "admin", {"keys": {"allow": ["EC-P256"]}})
    from_models = Policy.from_config(
        PolicyConfig.model_validate(EXAMPLE_POLICY),
        Claims.model_validate(EXAMPLE_CLAIMS),
        "admin",
        PolicyConfig.model_validate({"keys": {"allow": ["EC-P256"]}}),
    )
    assert from_models == from_dicts


def test_claims_override_field_by_field() -> None:
    limits = Policy.from_config(None, None).limits
    assert (limits.minimum.value, limits.maximum.value, limits.default.value) == (
        timedelta(minutes=5),
        timedelta(hours=24),
        timedelta(hours=24),
    )
    assert limits.maximum.origin == "built-in default maxTLSCertDuration"

    limits = Policy.from_config(
        None,
        {"maxTLSCertDuration": "720h", "defaultTLSCertDuration": "168h"},
        "ops",
        None,
        {"defaultTLSCertDuration": "1h", "minTLSCertDuration": "1m"},
    ).limits
    assert limits.minimum.value == timedelta(minutes=1)
    assert limits.minimum.origin == 'provisioner "ops" claims.minTLSCertDuration'
    assert limits.maximum.value == timedelta(hours=720)
    assert limits.maximum.origin == "authority claims.maxTLSCertDuration"
    assert limits.default.value == timedelta(hours=1)
    assert limits.default.origin == 'provisioner "ops" claims.defaultTLSCertDuration'


def test_levels_present() -> None:
    only_authority = Policy.from_config(None, None)
    assert [level.label for level in only_authority.levels] == ["authority policy"]
    # The authority level always has the hardened defaults; an absent provisioner part restricts nothing.
    assert only_authority.levels[0].x509 is not None and only_authority.levels[0].keys is not None
    both = Policy.from_config(None, None, "admin", {"keys": {"allow": ["EC-P256"]}})
    assert [level.label for level in both.levels] == ["authority policy", 'provisioner "admin" policy']
    assert both.levels[1].x509 is None
    unnamed = Policy.from_config(None, None, None, {})
    assert unnamed.levels[1].label == "provisioner policy"
