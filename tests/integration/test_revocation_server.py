"""Revocation end to end under `hsmca serve`: `hsmca revoke`, the housekeeping process signs the CRL within
seconds, both listeners serve it, openssl verifies it; issued leaves point at the configured URLs."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from tests.integration.conftest import DevCA, Server, hsmca, issue_through, make_ca, start_server

URLS = {"crl": "http://pki.example.test/crl", "ocsp": "http://ocsp.example.test/ocsp",
        "caIssuers": "http://pki.example.test/intermediate.crt"}
CRL_WAIT = 10.0  # seconds: the acceptance bound for a revocation to show in the CRL


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    ca: DevCA = make_ca(tmp_path_factory.mktemp("revocation-ca"))
    ca.edit_config(lambda cfg: cfg.update(certificateURLs=URLS))
    s = start_server(ca)
    yield s
    s.stop()


def ca_args(server: Server) -> list[str]:
    return ["--ca-url", server.url, "--root", str(server.ca.root)]


def crl_listing(server: Server, serial: int, timeout: float = CRL_WAIT) -> tuple[bytes, x509.CertificateRevocationList]:
    """Poll `/crl` until it lists `serial` (the housekeeping process polls every second)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        resp = server.get("/crl")
        if resp.status_code == 200:
            crl = x509.load_der_x509_crl(resp.content)
            if crl.get_revoked_certificate_by_serial_number(serial) is not None:
                return resp.content, crl
            last = f"CRL {crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number} without it"
        else:
            last = f"{resp.status_code} {resp.text[:200]}"
        time.sleep(0.2)
    raise AssertionError(f"serial {serial} not in the CRL after {timeout} s (last: {last})\n{server.log()[-3000:]}")


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60)


def number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def test_revoke_command_then_the_crl_lists_it_within_seconds(server: Server, tmp_path: Path):
    ca = server.ca
    leaf_path = issue_through(server, "doomed.internal")
    leaf = x509.load_pem_x509_certificates(leaf_path.read_bytes())[0]

    # The leaf points relying parties at the configured URLs.
    cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [URLS["crl"]]
    aia = leaf.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert {(d.access_method, d.access_location.value) for d in aia} == {
        (AuthorityInformationAccessOID.OCSP, URLS["ocsp"]),
        (AuthorityInformationAccessOID.CA_ISSUERS, URLS["caIssuers"])}

    started = time.monotonic()
    done = hsmca(ca, "revoke", str(leaf.serial_number), "--reason-code", "1", "--reason", "key on a lost laptop",
                 *ca_args(server), "--password-file", str(ca.password_file))
    assert f"serial number {leaf.serial_number} has been revoked" in done.stderr
    der, crl = crl_listing(server, leaf.serial_number)
    assert time.monotonic() - started < CRL_WAIT
    first_number = number(crl)

    # openssl verifies the CRL against root + intermediate and lists the serial with its reason.
    (tmp_path / "crl.der").write_bytes(der)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(ca.root.read_bytes() + ca.intermediate.read_bytes())
    verified = openssl("crl", "-in", str(tmp_path / "crl.der"), "-inform", "DER", "-CAfile", str(chain),
                       "-noout", "-verify")
    assert verified.returncode == 0 and "verify OK" in verified.stdout + verified.stderr, verified.stderr
    text = openssl("crl", "-in", str(tmp_path / "crl.der"), "-inform", "DER", "-noout", "-text").stdout
    assert f"{leaf.serial_number:X}" in text.replace(":", "").upper()
    assert "Key Compromise" in text

    # The plain-HTTP listener serves the same bytes, with the cache headers.
    plain = requests.get(f"{server.http_url}/crl", timeout=10)
    assert plain.status_code == 200 and plain.headers["Content-Type"] == "application/pkix-crl"
    assert plain.content == der == server.get("/crl").content
    assert plain.headers["Cache-Control"].startswith("public, max-age=")
    assert "Expires" in plain.headers and "Last-Modified" in plain.headers

    # Revoking again is fine (and changes nothing); another revocation gives a higher CRL number.
    hsmca(ca, "revoke", str(leaf.serial_number), *ca_args(server), "--password-file", str(ca.password_file))
    other = x509.load_pem_x509_certificates(issue_through(server, "second.internal").read_bytes())[0]
    hsmca(ca, "revoke", str(other.serial_number), "--reason-code", "4", *ca_args(server),
          "--password-file", str(ca.password_file))
    _, crl2 = crl_listing(server, other.serial_number)
    assert number(crl2) > first_number
    assert crl2.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None

    # `hsmca crl` downloads it, checks its signature, and says what it holds.
    out = hsmca(ca, "crl", *ca_args(server), "--out", str(tmp_path / "got.der"))
    assert f"CRL number:  {number(crl2)}" in out.stdout
    assert "Entries:     2" in out.stdout and "signature verified" in out.stdout
    assert x509.load_der_x509_crl((tmp_path / "got.der").read_bytes()).issuer == crl2.issuer
    pem = hsmca(ca, "crl", *ca_args(server), "--pem")
    assert pem.stdout.startswith("-----BEGIN X509 CRL-----") and "Entries:" in pem.stderr


def test_revoke_command_reports_refusals(server: Server):
    ca = server.ca
    unknown = hsmca(ca, "revoke", "123456789", *ca_args(server), "--password-file", str(ca.password_file),
                    check=False)
    assert unknown.returncode == 1 and "404" in unknown.stderr and "no certificate with serial" in unknown.stderr
    leaf = x509.load_pem_x509_certificates(issue_through(server, "kept.internal").read_bytes())[0]
    bad = hsmca(ca, "revoke", str(leaf.serial_number), "--reason-code", "8", *ca_args(server),
                "--password-file", str(ca.password_file), check=False)
    assert bad.returncode == 1 and "400" in bad.stderr and "reasonCode 8" in bad.stderr
