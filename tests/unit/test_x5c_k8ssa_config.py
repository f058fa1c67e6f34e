"""X5C and K8sSA provisioners in ca.json (step-ca 0.19's shape), and which provisioner a token reaches."""

from __future__ import annotations

import base64
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey, RSAKey
from pydantic import ValidationError

from appliance.config import CAConfig
from appliance.errors import Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners import Provisioners, jose
from appliance.provisioners.k8ssa import K8sSAProvisioner
from appliance.provisioners.request import IssuanceRequest
from appliance.provisioners.x5c_roots import X5CProvisioner
from appliance.ra.templates import variables

NOW = datetime.now(timezone.utc)
PEM = serialization.Encoding.PEM


def ca_cert(key: ec.EllipticCurvePrivateKey, *, ca: bool = True) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Devices Root")])
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(NOW).not_valid_after(NOW + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
ROOTS = b64(ca_cert(ROOT_KEY).public_bytes(PEM))
SA_KEY = rsa.generate_private_key(65537, 2048)
SA_PUB = b64(SA_KEY.public_key().public_bytes(PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def ca_json(*provisioners: dict[str, Any]) -> dict[str, Any]:
    return {"root": "certs/root_ca.crt", "crt": "certs/intermediate_ca.crt", "key": "pkcs11:object=intermediate",
            "address": ":9000", "dnsNames": ["ca.internal"], "db": {"type": "sqlite", "dataSource": "db/x.sqlite"},
            "authority": {"provisioners": list(provisioners)}}


# As `step ca provisioner add` writes them into step-ca 0.19's ca.json.
STEP_X5C = {"type": "X5C", "name": "x5c", "roots": ROOTS,
            "claims": {"maxTLSCertDuration": "8h", "defaultTLSCertDuration": "2h", "disableRenewal": False},
            "options": {"x509": {"templateData": {"team": "a"}}, "ssh": {}}}
STEP_K8S = {"type": "K8sSA", "name": "k8sSA-default", "publicKeys": SA_PUB, "claims": {"enableSSHCA": True}}


def test_step_ca_shaped_provisioners_load_and_build() -> None:
    config = CAConfig.model_validate(ca_json(STEP_X5C, STEP_K8S))
    x5c, k8s = Provisioners.from_config(config.authority.provisioners)
    assert isinstance(x5c, X5CProvisioner) and isinstance(k8s, K8sSAProvisioner)
    listed = x5c.describe(with_encrypted_key=True)
    assert (listed["type"], listed["name"], listed["roots"]) == ("X5C", "x5c", ROOTS)
    assert listed["claims"]["disableRenewal"] is False and "encryptedKey" not in listed
    assert k8s.describe(with_encrypted_key=True)["publicKeys"] == SA_PUB


@pytest.mark.parametrize(("provisioners", "message"), [
    ([{**STEP_X5C, "roots": "not base64!"}], "base64 of a PEM file"),
    ([{**STEP_X5C, "roots": b64(b"no certificates")}], "roots"),
    ([{**STEP_X5C, "roots": b64(ca_cert(ROOT_KEY, ca=False).public_bytes(PEM))}], "not a CA certificate"),
    ([{**STEP_K8S, "publicKeys": b64(SA_KEY.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))}],
     "is not a public key"),
    ([{**STEP_K8S, "publicKeys": b64(b"")}], "no PEM public key"),
    ([STEP_K8S, {**STEP_K8S, "name": "second"}], "at most one K8sSA provisioner"),
    ([{**STEP_X5C, "unknown": 1}], "Extra inputs"),
])
def test_bad_provisioners_are_refused_naming_the_field(provisioners: list[dict[str, Any]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CAConfig.model_validate(ca_json(*provisioners))


def test_tokens_reach_their_provisioner() -> None:
    config = CAConfig.model_validate(ca_json(STEP_X5C, STEP_K8S))
    provisioners = Provisioners.from_config(config.authority.provisioners)
    x5c, k8s = provisioners
    device = ECKey.generate_key("P-256", private=True)
    now = int(time.time())
    assert provisioners.for_token(jose.sign_token(device, {"iss": "x5c", "exp": now}, header={"x5c": ["AA=="]})) \
        is x5c
    sa = RSAKey.import_key(SA_KEY)
    assert provisioners.for_token(jose.sign_token(sa, {"iss": "kubernetes/serviceaccount"})) is k8s
    assert provisioners.for_token(jose.sign_token(sa, {"iss": "https://k8s", "kubernetes.io": {}})) is k8s
    with pytest.raises(Unauthorized, match="no provisioner named 'x5c'"):  # an x5c issuer without an x5c header
        provisioners.for_token(jose.sign_token(device, {"iss": "x5c"}))


def test_templates_see_what_the_provisioner_adds() -> None:
    request = IssuanceRequest(
        provisioner="p", common_name="a", names=RequestedNames(), public_key=ROOT_KEY.public_key(),
        template_data={"token": {"sub": "a"}, "k8s": {"namespace": "ns"}, "subject": {"commonName": "forged"}})
    seen = variables(request, "p", "K8sSA")
    assert seen["k8s"] == {"namespace": "ns"} and seen["token"] == {"sub": "a"}
    assert seen["subject"] == {"commonName": "a"}  # a provisioner's data never replaces the request's own


@pytest.mark.parametrize(("provisioner", "expected"), [
    ({"type": "AWS", "name": "aws-fleet", "accounts": ["123456789012"]},
     "(provisioner 'aws-fleet', type 'AWS'): step-ca's AWS provisioner type is not supported by hsmca yet"),
    ({"type": "SCEP", "name": "scep"}, "(provisioner 'scep', type 'SCEP'): step-ca's SCEP provisioner"),
    ({"type": "Teapot", "name": "brew"}, "(provisioner 'brew', type 'Teapot'): Input tag 'Teapot'"),
    ({"type": "ACME", "name": "acme", "forceCNN": True}, "(provisioner 'acme', type 'ACME'): Extra inputs"),
])
def test_a_step_ca_json_with_a_provisioner_hsmca_cannot_run_is_refused_naming_it(
        tmp_path: Any, provisioner: dict[str, Any], expected: str) -> None:
    """A ca.json moved from step-ca: the load fails saying which provisioner, by the name and type written there."""
    import json

    from appliance.config import ConfigError, load_config

    path = tmp_path / "ca.json"
    path.write_text(json.dumps({
        "root": "/x/root.crt", "crt": "/x/int.crt", "key": "pkcs11:object=x", "address": ":9000",
        "dnsNames": ["ca.internal"], "db": {"type": "sqlite", "dataSource": "/x/db"},
        "authority": {"provisioners": [{"type": "ACME", "name": "fine"}, provisioner]}}))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "authority.provisioners.1" in str(refused.value) and expected in str(refused.value), str(refused.value)
