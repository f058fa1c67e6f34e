"""With the README's defaults every leaf passes pkilint's RFC 5280 linter (`lint_pkix_cert lint`) with no
ERROR or WARNING.

The CA is made as `make run` makes it (`hsmca init --name "hsmca dev" --provisioner admin --password-file F`,
its own SoftHSM token, nothing else), then served; an ACME provisioner is added as the README's ACME section
shows. Each entry of LEAVES gets one leaf the way a user would, and `assert_pkilint_clean` lints it; a new
way of issuing is one more entry. pkilint is pinned in the test extras (pyproject.toml), so that a new
release's new findings show up as a deliberate upgrade, not as a red build out of nowhere.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from acme import crypto_util
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.certutil import load_certificates
from tests.integration.acme_client import ChallengeServer, answer_http01, deadline, key_pem, new_client
from tests.integration.acme_dns import AcmeDNS
from tests.integration.conftest import (
    PASSWORD,
    DevCA,
    Server,
    free_port,
    hsmca,
    openssl_verify_chain,
    start_server,
)

pytestmark = pytest.mark.slow

LINT = Path(sys.executable).parent / "lint_pkix_cert"
ACME_NAME = "app.localhost"  # under .localhost: the validator needs --resolver for it (README, ACME section)
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MTLS_TEMPLATE = README.split("An mTLS client certificate for a team")[1].split("```json")[1].split("```")[0]


@dataclass
class Site:
    server: Server
    dns: AcmeDNS
    http01: ChallengeServer

    @property
    def ca(self) -> DevCA:
        return self.server.ca


@pytest.fixture(scope="module")
def readme_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    """`make run`'s `hsmca init`, as a user runs it: SoftHSM's config under $HSMCA_PATH, token `hsmca`."""
    base = tmp_path_factory.mktemp("readme") / "hsmca"
    base.mkdir()
    ca = DevCA(base, base / "config" / "ca.json", base / "provisioner_password", "hsmca")
    ca.password_file.write_bytes(PASSWORD + b"\n")
    done = hsmca(ca, "init", "--name", "hsmca dev", "--provisioner", "admin", "--password-file",
                 str(ca.password_file), env={"SOFTHSM2_CONF": ""})
    # No --public-url and no dotted --dns: the loopback listener, and a line saying what to set.
    assert "Public URL:               http://127.0.0.1:9080" in done.stdout, done.stdout
    assert "--public-url" in done.stderr and "before other machines use the CA" in done.stderr, done.stderr
    assert ca.config.publicURL == "http://127.0.0.1:9080"
    return ca


@pytest.fixture(scope="module")
def site(readme_ca: DevCA) -> Iterator[Site]:
    http01 = ChallengeServer()
    with AcmeDNS() as dns:  # answers 127.0.0.1 for every name, app.localhost included
        added = hsmca(readme_ca, "provisioner", "add", "acme", "--type", "ACME",
                      "--http01-port", str(http01.port), "--resolver", dns.address)
        assert "directory at https://localhost:9000/acme/acme/directory" in added.stdout, added.stdout
        # A second JWK provisioner (the same key) whose leaves come from the README's mTLS client template.
        readme_ca.edit_config(lambda cfg: cfg["authority"]["provisioners"].append(
            {**cfg["authority"]["provisioners"][0], "name": "teams"}))
        template, data = readme_ca.base / "client.json.j2", readme_ca.base / "client-data.json"
        template.write_text(MTLS_TEMPLATE)
        data.write_text('{"organization": "Platform"}')
        hsmca(readme_ca, "provisioner", "template", "teams", "--x509-template", str(template),
              "--x509-template-data", str(data))
        server = start_server(readme_ca)
        try:
            yield Site(server, dns, http01)
        finally:
            server.stop()
            http01.stop()


def quick_start(site: Site, name: str, *extra: str, provisioner: str = "admin") -> Path:
    """The README's quick start: `hsmca certificate` with a provisioner password; the chain must verify."""
    ca = site.ca
    crt = ca.base / f"{name}.crt"
    hsmca(ca, "certificate", "api.internal", str(crt), str(ca.base / f"{name}.key"), "--san", "api.corp",
          "--san", "10.0.1.50", "--ca-url", site.server.url, "--root", str(ca.root), "--provisioner", provisioner,
          "--password-file", str(ca.password_file), "--force", *extra)
    assert ": OK" in openssl_verify_chain(ca.root, crt)
    return crt


def jwk_leaf(site: Site, tmp: Path) -> Path:
    return quick_start(site, "jwk")


def jwk_rsa_leaf(site: Site, tmp: Path) -> Path:
    return quick_start(site, "jwk-rsa", "--kty", "RSA", "--size", "2048")


def jwk_ed25519_leaf(site: Site, tmp: Path) -> Path:
    return quick_start(site, "jwk-ed25519", "--kty", "OKP", "--crv", "Ed25519")


def acme_leaf(site: Site, tmp: Path) -> Path:
    """An http-01 order for a DNS name and an IP, through certbot's `acme` library."""
    acme = new_client(site.server, "acme")
    orderr = acme.new_order(crypto_util.make_csr(key_pem(), [ACME_NAME], ipaddrs=[ipaddress.ip_address("127.0.0.1")]))
    answer_http01(acme, orderr, site.http01)
    done = acme.poll_and_finalize(orderr, deadline())
    chain = tmp / "acme.crt"
    chain.write_text(done.fullchain_pem)
    assert ": OK" in openssl_verify_chain(site.ca.root, chain)
    return chain


def template_leaf(site: Site, tmp: Path) -> Path:
    """A leaf from the README's mTLS client template: O=Platform, clientAuth only."""
    crt = quick_start(site, "templated", provisioner="teams")
    leaf = load_certificates(crt)[0]
    assert leaf.subject.rfc4514_string() == "CN=api.internal,O=Platform"  # RFC 4514 writes the last RDN first
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    return crt


def renewed_leaf(site: Site, tmp: Path) -> Path:
    """`hsmca renew --force` of a quick-start leaf (mTLS with its key)."""
    crt = quick_start(site, "renewed")
    before = load_certificates(crt)[0].serial_number
    hsmca(site.ca, "renew", str(crt), str(crt.with_suffix(".key")), "--ca-url", site.server.url, "--root",
          str(site.ca.root), "--force")
    assert load_certificates(crt)[0].serial_number != before
    return crt


# How each kind of leaf is obtained: name → a function returning the certificate file (leaf first).
LEAVES: dict[str, Callable[[Site, Path], Path]] = {
    "jwk": jwk_leaf,
    "jwk-rsa": jwk_rsa_leaf,
    "jwk-ed25519": jwk_ed25519_leaf,
    "acme": acme_leaf,
    "renewed": renewed_leaf,
    "template": template_leaf,
}


def assert_pkilint_clean(path: Path) -> None:
    """pkilint's RFC 5280 linter on the first certificate of `path`: no finding at WARNING or above
    (NOTICE and INFO, e.g. "SKI computed by method 1", are fine). pkilint reads one certificate per file,
    so the leaf is written alone, as DER."""
    if not LINT.exists():
        pytest.fail(f"{LINT} is missing: pkilint is in the test extras (pip install -e '.[test]')")
    leaf = load_certificates(path)[0]
    der = path.with_name(path.name + ".leaf.der")
    der.write_bytes(leaf.public_bytes(Encoding.DER))
    done = subprocess.run([str(LINT), "lint", "--severity", "WARNING", "--document-format", "DER", str(der)],
                          capture_output=True, text=True, timeout=120)
    findings = (done.stdout + done.stderr).strip()
    assert done.returncode == 0 and not findings, f"pkilint on {path.name} ({leaf.subject.rfc4514_string()}):\n" \
                                                  f"{findings}"


@pytest.mark.parametrize("kind", list(LEAVES))
def test_leaves_with_the_readme_defaults_lint_clean(site: Site, tmp_path: Path, kind: str) -> None:
    path = LEAVES[kind](site, tmp_path)
    leaf = load_certificates(path)[0]
    cdp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []][0].startswith("http://127.0.0.1:9080/crl/")
    assert_pkilint_clean(path)


def test_a_localhost_url_is_refused_before_signing_and_pkilint_has_teeth(site: Site, tmp_path: Path) -> None:
    """`hsmca public-url` refuses a localhost base; one written into ca.json by hand stops `hsmca serve` at
    start, naming the rule (its own HTTPS certificate is linted before it is signed, like every leaf); pkilint
    reports such a leaf (made here with a software key, since the CA no longer signs one)."""
    refused = hsmca(site.ca, "public-url", "http://localhost:9080", check=False)
    assert refused.returncode == 1 and "localhost" in refused.stderr
    site.ca.edit_config(lambda cfg: cfg.update(publicURL="http://localhost:9080"))
    try:
        done = hsmca(site.ca, "serve", "--address", f"127.0.0.1:{free_port()}", "--http-address",
                     f"127.0.0.1:{free_port()}", check=False)
        assert done.returncode == 1 and "cannot start" in done.stderr and "(rfc5280.uri)" in done.stderr, done.stderr
        assert "warning: certificates get URLs such as http://localhost:9080/" in done.stderr
    finally:
        hsmca(site.ca, "public-url", "http://127.0.0.1:9080")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old.internal")])
    now = datetime.now(timezone.utc)
    leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("old.internal")]), critical=False)
            .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                [x509.UniformResourceIdentifier("http://localhost:9080/crl")], None, None, None)]), critical=False)
            .sign(key, hashes.SHA256()))
    crt = tmp_path / "localhost.crt"
    crt.write_bytes(leaf.public_bytes(Encoding.PEM))
    with pytest.raises(AssertionError, match="pkix.invalid_uri_syntax"):
        assert_pkilint_clean(crt)
