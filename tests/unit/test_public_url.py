"""The base of the URLs in certificates: which hosts are accepted, what `hsmca init` picks without
--public-url, and `hsmca public-url` changing it in ca.json (no server needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.ca.urls import (
    api_url,
    certificate_url_warning,
    certificate_urls,
    check_public_url,
    default_public_url,
    url_host_ok,
)
from appliance.cli.main import main
from appliance.config import CAConfig, ConfigError, load_config, save_config


@pytest.mark.parametrize("host", ["ca.internal", "pki.corp.example", "a-b.c-d.example", "xn--bcher-kva.example",
                                  "127.0.0.1", "10.0.1.50", "::1", "fd00::1"])
def test_hosts_relying_parties_accept(host: str) -> None:
    assert url_host_ok(host)


@pytest.mark.parametrize("host", ["localhost", "ca", "", "ca.", ".ca.internal", "ca..internal", "ca.x", "ca.123",
                                  "a-b.c1", "-ca.internal", "ca-.internal", "my_ca.internal", "bücher.example",
                                  "ca internal.example", "fe80::1%eth0", "a" * 64 + ".example"])
def test_hosts_linters_refuse(host: str) -> None:
    assert not url_host_ok(host)


@pytest.mark.parametrize(("given", "normalised"), [
    ("http://ca.internal:9080", "http://ca.internal:9080"),
    ("HTTP://CA.Internal:9080/", "http://ca.internal:9080"),
    ("http://pki.corp.example/hsmca/", "http://pki.corp.example/hsmca"),
    ("https://pki.corp.example", "https://pki.corp.example"),
    ("http://10.0.1.50:9080", "http://10.0.1.50:9080"),
    ("http://[FD00::1]:9080", "http://[fd00::1]:9080"),
])
def test_public_urls_are_normalised(given: str, normalised: str) -> None:
    assert check_public_url(given) == normalised


@pytest.mark.parametrize(("bad", "why"), [
    ("ca.internal:9080", "not an http:// URL"),
    ("ftp://ca.internal", "not an http:// URL"),
    ("http://localhost:9080", "'localhost'"),
    ("http://ca:9080", "DNS name with a dot"),
    ("http://user:pw@ca.internal", "credentials"),
    ("http://ca.internal/?x=1", "query"),
    ("http://ca.internal/#top", "fragment"),
    ("http://ca.internal:99999", "port"),
    ("http://ca.internal:0", "port"),
    ("http://ca.internal/a b", "path"),
    ("http://ca.internal/{issuer}", "path"),
])
def test_bad_public_urls_say_why(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        check_public_url(bad)


@pytest.mark.parametrize(("dns", "http_address", "url", "local_only"), [
    (["localhost"], ":9080", "http://127.0.0.1:9080", True),                     # the README's defaults
    (["localhost", "ca.internal", "10.0.0.5"], ":9080", "http://ca.internal:9080", False),  # first dotted one
    (["ca", "10.0.0.5", "ca.internal"], "0.0.0.0:9080", "http://10.0.0.5:9080", False),      # or IP
    (["localhost", "fd00::5"], "[::]:8080", "http://[fd00::5]:8080", False),
    (["CA.Internal."], ":80", "http://ca.internal", False),
    (["ca.internal"], "10.1.2.3:9080", "http://10.1.2.3:9080", False),     # a bound listener is reached there only
    (["ca.internal"], "127.0.0.1:9080", "http://127.0.0.1:9080", True),
    (["ca.internal"], "localhost:9080", "http://127.0.0.1:9080", True),
    (["::1"], ":9080", "http://[::1]:9080", True),
])
def test_init_default(dns: list[str], http_address: str, url: str, local_only: bool) -> None:
    got = default_public_url(dns, http_address)
    assert (got.url, got.local_only) == (url, local_only)
    assert check_public_url(got.url) == got.url  # what init writes passes what the command checks


def config(**kw: object) -> CAConfig:
    return CAConfig.model_validate({"root": "root.crt", "dnsNames": ["localhost"], "db": {"dataSource": "db"}, **kw})


def test_a_ca_without_public_url_gets_the_rule_of_init_and_a_localhost_one_is_warned() -> None:
    old = config()  # dnsNames ["localhost"]: its leaves used to carry http://localhost:9080, which lint refuses
    assert certificate_urls(old).ocsp == "http://127.0.0.1:9080/ocsp"
    assert certificate_url_warning(old) is None
    assert "hsmca public-url" in (certificate_url_warning(config(publicURL="http://localhost:9080")) or "")
    assert certificate_url_warning(config(publicURL="http://127.0.0.1:9080")) is None
    assert certificate_url_warning(config(certificateURLs={"crl": "", "ocsp": "", "caIssuers": ""})) is None


def test_public_url_in_ca_json_must_be_http() -> None:
    with pytest.raises(ValueError, match="publicURL"):
        config(publicURL="ca.internal:9080")
    assert config(publicURL="http://localhost:9080").publicURL == "http://localhost:9080"  # still starts


@pytest.mark.parametrize(("address", "dns", "url"), [
    (":9000", ["localhost"], "https://localhost:9000"),
    ("127.0.0.1:9000", ["ca.internal", "127.0.0.1"], "https://127.0.0.1:9000"),
    ("10.0.0.1:443", ["ca.internal"], "https://ca.internal"),
    ("[::]:9000", ["fd00::1"], "https://[fd00::1]:9000"),
])
def test_api_url(address: str, dns: list[str], url: str) -> None:
    assert api_url(config(address=address, dnsNames=dns)) == url


def ca_json(tmp_path: Path, **kw: object) -> Path:
    path = tmp_path / "config" / "ca.json"
    save_config(config(**kw), path)
    return path


def test_public_url_command_sets_it_0600_and_says_what_follows(tmp_path: Path) -> None:
    path = ca_json(tmp_path, certificateURLs={"ocsp": "http://ocsp.corp.example/"})
    run = CliRunner().invoke
    shown = run(main, ["public-url", "--config", str(path)])
    assert shown.exit_code == 0 and "not set" in shown.output and "http://127.0.0.1:9080/crl/{issuer}" in shown.output
    assert "warning" not in shown.output  # 127.0.0.1 is a host certificates may carry
    done = run(main, ["public-url", "HTTP://CA.internal:9080/", "--config", str(path)])
    assert done.exit_code == 0, done.output
    assert load_config(path).publicURL == "http://ca.internal:9080"
    assert path.stat().st_mode & 0o777 == 0o600
    for line in ("http://ca.internal:9080/crl/{issuer}", "http://ocsp.corp.example/ (certificateURLs",
                 "http://ca.internal:9080/intermediate/{issuer}.crt", "Restart `hsmca serve`", "SIGHUP",
                 "already issued keep"):
        assert line in done.output
    assert "warning" not in done.output
    assert "publicURL: http://ca.internal:9080" in run(main, ["public-url", "--config", str(path)]).output


def test_public_url_command_refuses_bad_urls_and_leaves_ca_json(tmp_path: Path) -> None:
    path = ca_json(tmp_path, publicURL="http://ca.internal:9080")
    before = path.read_bytes()
    for bad in ("http://localhost:9080", "ca.internal", "http://ca.internal/?q"):
        done = CliRunner().invoke(main, ["public-url", bad, "--config", str(path)])
        assert done.exit_code == 1 and done.output.startswith("error: "), done.output
    assert path.read_bytes() == before
    missing = CliRunner().invoke(main, ["public-url", "http://ca.internal", "--config", str(tmp_path / "no.json")])
    assert missing.exit_code == 1 and "hsmca init" in missing.output


def test_provisioner_add_prints_the_directory_url(tmp_path: Path) -> None:
    path = ca_json(tmp_path, address=":9443", dnsNames=["ca.internal", "localhost"])
    done = CliRunner().invoke(main, ["provisioner", "add", "acme", "--config", str(path)])
    assert done.exit_code == 0, done.output
    assert "directory at https://ca.internal:9443/acme/acme/directory" in done.output
    assert "<CA URL>" not in done.output


def test_load_refuses_a_ca_json_whose_public_url_is_not_a_url(tmp_path: Path) -> None:
    path = ca_json(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "publicURL": "ca.internal"}))
    with pytest.raises(ConfigError, match="publicURL"):
        load_config(path)
