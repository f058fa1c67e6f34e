"""Which URLs go into issued certificates: explicit ones, else publicURL, else the plain-HTTP listener."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.ca.urls import CertificateURLs, certificate_urls, for_issuer
from appliance.config import CAConfig


def config(**kw: Any) -> CAConfig:
    return CAConfig.model_validate({"root": "root.crt", "dnsNames": ["ca.internal", "10.0.0.5"],
                                    "db": {"dataSource": "db.sqlite"}, **kw})


@pytest.mark.parametrize(("http_address", "base"), [
    (":9080", "http://ca.internal:9080"),
    ("0.0.0.0:80", "http://ca.internal"),
    ("[::]:8080", "http://ca.internal:8080"),
    ("10.1.2.3:9080", "http://10.1.2.3:9080"),
    ("[fd00::1]:9080", "http://[fd00::1]:9080"),
])
def test_default_is_the_plain_http_listener(http_address: str, base: str) -> None:
    assert certificate_urls(config(httpAddress=http_address)) == CertificateURLs(
        f"{base}/crl/{{issuer}}", f"{base}/ocsp", f"{base}/intermediate/{{issuer}}.crt")


def test_public_url_wins_over_the_listener() -> None:
    urls = certificate_urls(config(publicURL="http://pki.corp.example/", httpAddress="10.1.2.3:9080"))
    assert urls == CertificateURLs("http://pki.corp.example/crl/{issuer}", "http://pki.corp.example/ocsp",
                                   "http://pki.corp.example/intermediate/{issuer}.crt")


def test_explicit_urls_win_and_empty_leaves_one_out() -> None:
    urls = certificate_urls(config(publicURL="http://pki.corp.example",
                                   certificateURLs={"crl": "http://crl.corp.example/int.crl", "ocsp": ""}))
    assert urls == CertificateURLs("http://crl.corp.example/int.crl", None,
                                   "http://pki.corp.example/intermediate/{issuer}.crt")


def test_each_intermediate_gets_its_own_crl_and_certificate_url() -> None:
    urls = certificate_urls(config(certificateURLs={"crl": "http://cdn.example/{issuer}.crl"}))
    assert for_issuer(urls, "ab12") == CertificateURLs("http://cdn.example/ab12.crl", "http://ca.internal:9080/ocsp",
                                                       "http://ca.internal:9080/intermediate/ab12.crt")


@pytest.mark.parametrize("bad", [{"crl": "ftp://x/crl"}, {"ocsp": "ocsp.example"}, {"other": "http://x"}])
def test_bad_urls_are_refused_at_load(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        config(certificateURLs=bad)


@pytest.mark.parametrize("validity", ["1m", "0s", "800h"])
def test_crl_validity_is_bounded(validity: str) -> None:
    with pytest.raises(ValueError, match="crl.validity"):
        config(crl={"validity": validity})
    assert config(crl={"validity": "24h"}).crl.validity == "24h"
