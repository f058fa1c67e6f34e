"""ca.json validation: a typo stops the CA with the field's path, not a wrong certificate later."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import CAConfig, ConfigError, load_config, merge_key_uri, save_config, split_address

MINIMAL = {"root": "certs/root_ca.crt", "crt": "certs/intermediate_ca.crt", "key": "pkcs11:object=intermediate_ca",
           "dnsNames": ["localhost"], "db": {"type": "sqlite", "dataSource": "db/hsmca.sqlite"}}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "config" / "ca.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def test_defaults_and_relative_paths(tmp_path):
    config = load_config(write(tmp_path, MINIMAL))
    assert config.address == ":9000" and config.httpAddress == ":9080"
    assert config.server.workers == 2 and config.authority.publishEncryptedKeys is True
    assert config.resolve("certs/root_ca.crt") == tmp_path / "certs" / "root_ca.crt"
    assert config.tls.minVersion == 1.2


@pytest.mark.parametrize("change, where", [
    ({"dnsNames": []}, "dnsNames"),
    ({"address": "9000"}, "address"),
    ({"db": {"type": "oracle", "dataSource": "x"}}, "db.type"),
    ({"unknownField": 1}, "unknownField"),
    ({"server": {"workers": 0}}, "server.workers"),
    ({"tls": {"minVersion": 1.0}}, "tls.minVersion"),
    ({"authority": {"provisioners": [{"type": "JWK", "name": "a", "key": {}}] * 2}}, "unique"),
    ({"authority": {"claims": {"maxTLSCertDuration": "forever"}}}, "authority.claims"),
])
def test_invalid_fields_are_named(tmp_path, change, where):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, {**MINIMAL, **change}))
    assert where in str(err.value)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="hsmca init"):
        load_config(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read JSON"):
        load_config(bad)


def test_save_is_atomic_and_private(tmp_path):
    path = tmp_path / "config" / "ca.json"
    save_config(CAConfig.model_validate(MINIMAL), path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_config(path).dnsNames == ["localhost"]
    assert not list(path.parent.glob(".ca.json.*"))


def test_key_uri_merges_like_step_ca():
    merged = merge_key_uri("pkcs11:token=hsmca?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/p",
                           "pkcs11:object=intermediate_ca")
    assert "token=hsmca" in merged and "object=intermediate_ca" in merged and "pin-source" in merged


@pytest.mark.parametrize("address, expected", [(":9000", ("", 9000)), ("127.0.0.1:443", ("127.0.0.1", 443)),
                                               ("[::1]:9000", ("::1", 9000))])
def test_split_address(address, expected):
    assert split_address(address) == expected


@pytest.mark.parametrize("address", ["9000", "host:", "host:99999", "host:http"])
def test_split_address_rejects(address):
    with pytest.raises(ValueError):
        split_address(address)
