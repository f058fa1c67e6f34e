"""Certificate templates: they shape a leaf, policy and lint still judge it, and a hostile one fails cleanly."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.config import ConfigError
from appliance.errors import BadRequest, LintRefused, PolicyDenied
from appliance.ra.pipeline import STEPS, RequestContext
from appliance.ra.templates import MAX_SECONDS, Template, TemplateProblem
from tests.unit.pipeline_ca import InProcessCA, make_ca

CTX = RequestContext(request_id="tpl-1")
TEAM_OID = "1.3.6.1.4.1.55555.1"
# An mTLS client certificate for a team: the token's `team` claim in a custom extension, clientAuth only, and
# the organisation from the provisioner's templateData.
TEAM_TEMPLATE = """{
  "subject": {"commonName": {{ subject.commonName | tojson }}, "organization": {{ data.organization | tojson }}},
  "sans": {{ sans | tojson }},
  "extKeyUsage": ["clientAuth"],
  {% if token.team is defined %}
  "extensions": [{"id": "%s", "critical": false, "value": {{ token.team | asn1("utf8") | tojson }}}],
  {% endif %}
  "keyUsage": ["digitalSignature"]
}""".replace("%s", TEAM_OID)


@pytest.fixture
def ca() -> Iterator[InProcessCA]:
    options = {"x509": {"template": TEAM_TEMPLATE, "templateData": {"organization": "Platform"}}}
    with make_ca(policy={"x509": {"deny": {"dns": ["*.forbidden.corp"]}}}, options=options) as made:
        yield made


def sign(ca: InProcessCA, name: str, **claims: object) -> x509.Certificate:
    return ca.authority.sign(ca.csr(name), ca.token(name, **claims), None, None, CTX).certificate


def test_a_template_adds_an_extension_from_a_token_claim_and_an_eku(ca: InProcessCA, tmp_path: Path) -> None:
    cert = sign(ca, "svc.internal", team="payments")
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(TEAM_OID))
    assert ext.value.value == b"\x0c\x08payments"  # type: ignore[attr-defined]  # UTF8String "payments"
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Platform"
    path = tmp_path / "leaf.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    text = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-text"], capture_output=True, text=True,
                          check=True, timeout=30).stdout
    assert f"{TEAM_OID}:" in text and "payments" in text
    assert "TLS Web Client Authentication" in text and "TLS Web Server Authentication" not in text
    assert "O = Platform, CN = svc.internal" in text or "O=Platform, CN=svc.internal" in text
    steps = ca.events()[-1]["details"]["steps"]
    assert steps == list(STEPS)


def test_without_the_claim_the_extension_is_left_out(ca: InProcessCA) -> None:
    cert = sign(ca, "svc.internal")
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(TEAM_OID))


def templated(source: str, **kw: object) -> Iterator[InProcessCA]:
    return make_ca(options={"x509": {"template": source}}, **kw)  # type: ignore[arg-type]


def test_policy_judges_what_the_template_adds() -> None:
    source = '{"sans": [{"type": "dns", "value": "x.forbidden.corp"}]}'
    with templated(source, policy={"x509": {"deny": {"dns": ["*.forbidden.corp"]}}}) as ca:
        with pytest.raises(PolicyDenied, match="x.forbidden.corp"):
            sign(ca, "svc.internal")
        assert ca.store.certificates.count_by_status()["issued"] == 0


def test_lint_judges_what_the_template_adds() -> None:
    constraints = x509.NameConstraints(permitted_subtrees=[x509.DNSName("internal")], excluded_subtrees=None)
    source = '{"sans": [{"type": "dns", "value": "svc.internal"}, {"type": "dns", "value": "evil.example.com"}]}'
    with templated(source, intermediate_extensions=[constraints]) as ca:
        with pytest.raises(LintRefused, match="evil.example.com is outside"):
            sign(ca, "svc.internal")


@pytest.mark.parametrize("source, message", [
    ("{{ ''.__class__.__mro__[1].__subclasses__() }}", "unsafe"),
    ("{% include '/etc/passwd' %}", "no loader"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ token.__init__.__globals__ }}", "unsafe"),
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "loop steps"),
    ("{{ 'x' * 1000000000 }}", "product"),
    ("{{ 2 ** 100000000 }}", "exponents"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursion"),
    ('{"basicConstraints": {"isCA": true}}', "basicConstraints.isCA"),
    ('{"extensions": [{"id": "2.5.29.17", "value": "MAA="}]}', "written by hsmca"),
    ('{"subject": {"commonName": "x"}, "extra": 1}', "Extra inputs are not permitted"),
    ("not json", "not JSON"),
    ('{"sans": [{"type": "ip", "value": "not-an-ip"}]}', "not an IP address"),
    ('{"keyUsage": ["encipherOnly"]}', "encipher_only"),
])
def test_hostile_or_broken_templates_fail_cleanly_and_quickly(source: str, message: str) -> None:
    with templated(source) as ca:
        start = time.monotonic()
        with pytest.raises(BadRequest) as refused:
            sign(ca, "svc.internal")
        assert time.monotonic() - start < MAX_SECONDS * 4 + 1
        assert message in refused.value.message, refused.value.message
        assert ca.store.certificates.count_by_status()["reserved"] == 0
        assert ca.events()[-1]["details"]["steps"] == ["authorize", "csr", "template"]


def test_the_output_is_bounded() -> None:
    with templated("{% for i in range(9000) %}{{ 'y' * 60 }}{% endfor %}") as ca, \
            pytest.raises(BadRequest, match="output exceeds"):
        sign(ca, "svc.internal")


@pytest.mark.parametrize("go", ['{"subject": {"commonName": {{ toJson .Subject.CommonName }}}}',
                                '{{- if .Insecure.CR.DNSNames }}{}{{- end }}',
                                '{"sans": {{ toJson .SANs }}}'])
def test_a_step_ca_go_template_is_refused_at_load_with_the_hsmca_spelling(go: str) -> None:
    with pytest.raises(ConfigError) as refused, templated(go):
        pass
    message = str(refused.value)
    assert "authority.provisioners[admin].options.x509.template" in message and "Jinja2" in message
    assert "{{ subject.commonName }}" in message


def test_a_template_is_compiled_once_and_a_syntax_error_says_where() -> None:
    with pytest.raises(TemplateProblem, match="here: Expected an expression"):
        Template.load("{% if %}", None, "here")


def test_the_default_template_of_the_readme_gives_the_default_leaf(tmp_path: Path) -> None:
    """The README's default leaf template renders what hsmca issues without one."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    source = readme.split("<!-- default-template -->")[1].split("```json")[1].split("```")[0]
    with make_ca() as plain, templated(source) as ca:
        a, b = sign(plain, "svc.internal"), sign(ca, "svc.internal")
        for kind in (x509.SubjectAlternativeName, x509.KeyUsage, x509.ExtendedKeyUsage, x509.BasicConstraints):
            assert a.extensions.get_extension_for_class(kind) == b.extensions.get_extension_for_class(kind)
        assert a.subject == b.subject
        ip = sign(ca, "10.1.2.3").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert ip.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


def test_lint_refuses_a_key_usage_the_key_cannot_have() -> None:
    with templated('{"keyUsage": ["digitalSignature", "keyEncipherment"]}') as ca:
        with pytest.raises(LintRefused, match="keyEncipherment does not fit the leaf's EC key") as refused:
            sign(ca, "svc.internal")  # the test CSRs carry EC P-256 keys: no key transport
        assert refused.value.rule == "rfc5280.keyUsage"


def test_template_render_shows_what_a_template_makes_of_a_request(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from cryptography.hazmat.primitives.asymmetric import ec as ec_keys

    from appliance.cli.main import main
    from appliance.client.keys import build_csr
    from appliance.config import CAConfig, save_config
    from appliance.provisioners import jose

    key = jose.generate_provisioner_key()
    config = CAConfig.model_validate({
        "root": "root.crt", "dnsNames": ["ca.internal"], "db": {"dataSource": "db.sqlite"},
        "authority": {"provisioners": [{"type": "JWK", "name": "teams", "key": jose.public_jwk(key), "options": {
            "x509": {"template": TEAM_TEMPLATE, "templateData": {"organization": "Platform"}}}}]}})
    path = tmp_path / "config" / "ca.json"
    save_config(config, path)
    csr = tmp_path / "svc.csr"
    csr.write_bytes(build_csr(ec_keys.generate_private_key(ec_keys.SECP256R1()), "svc.internal",
                              ["svc.internal"]).public_bytes(Encoding.PEM))
    token = jose.sign_token(key, {"sub": "svc.internal", "sans": ["svc.internal", "10.0.0.9"], "team": "ops"})
    done = CliRunner().invoke(main, ["template", "render", "--provisioner", "teams", "--csr", str(csr),
                                     "--token", token, "--config", str(path)])
    assert done.exit_code == 0, done.output
    document = json.loads(done.stdout)
    assert document["subject"] == {"commonName": "svc.internal", "organization": "Platform"}
    assert document["extKeyUsage"] == ["clientAuth"] and document["extensions"][0]["id"] == TEAM_OID
    assert "dns:svc.internal, ip:10.0.0.9" in done.stderr
    missing = CliRunner().invoke(main, ["template", "render", "--provisioner", "nobody", "--csr", str(csr),
                                        "--config", str(path)])
    assert missing.exit_code == 1 and "no provisioner named 'nobody'" in missing.output
