"""A ca.json as step-ca 0.19 writes it (`step ca init` with a PKCS#11 KMS and PostgreSQL, then `step ca provisioner
add` for each type hsmca has: JWK, ACME, OIDC, K8sSA, X5C) loads unchanged, and every provisioner in it is built;
one with a type hsmca does not have is refused naming it."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey

from appliance.config import ConfigError, load_config
from appliance.provisioners import Provisioners, jose
from policy import parse_duration
from tests.unit.test_x5c_k8ssa_config import ROOTS

SA_PUB = base64.b64encode(rsa.generate_private_key(65537, 2048).public_key().public_bytes(
    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
JWK = ECKey.generate_key("P-256", private=True)


def step_ca_0_19() -> dict[str, Any]:
    """Field for field what step-ca 0.19 writes (tabs and key order aside)."""
    public = {**JWK.as_dict(private=False), "use": "sig", "kid": JWK.thumbprint(), "alg": "ES256"}
    return {
        "root": "/home/step/.step/certs/root_ca.crt",
        "federatedRoots": None,
        "crt": "/home/step/.step/certs/intermediate_ca.crt",
        "key": "pkcs11:id=7332;object=intermediate-key",
        "kms": {"type": "pkcs11",
                "uri": "pkcs11:module-path=/usr/lib/softhsm/libsofthsm2.so;token=smallstep?pin-value=password"},
        "address": ":443",
        "insecureAddress": "",
        "dnsNames": ["ca.internal"],
        "logger": {"format": "text"},
        "db": {"type": "postgresql", "dataSource": "postgresql://step@127.0.0.1:5432/", "badgerFileLoadingMode": ""},
        "authority": {
            "provisioners": [
                {"type": "JWK", "name": "admin@example.com", "key": public,
                 "encryptedKey": jose.encrypt_jwk(JWK, b"password"),
                 "claims": {"maxTLSCertDuration": "24h", "defaultTLSCertDuration": "8h", "disableRenewal": False}},
                {"type": "ACME", "name": "acme", "forceCN": True,
                 "claims": {"defaultTLSCertDuration": "24h", "enableSSHCA": True}},
                {"type": "OIDC", "name": "Google", "clientID": "1087160488420-8qt7bavg3qesdhs6it824mhnfgcfe8il"
                                                               ".apps.googleusercontent.com",
                 "clientSecret": "udTrOT3gzrO7W9fDPgZQLfYJ",
                 "configurationEndpoint": "https://accounts.google.com/.well-known/openid-configuration",
                 "admins": ["admin@example.com"], "domains": ["example.com"], "listenAddress": ":10000",
                 "claims": {"maxTLSCertDuration": "8h", "enableSSHCA": True}},
                {"type": "K8sSA", "name": "k8sSA-default", "publicKeys": SA_PUB,
                 "claims": {"maxTLSCertDuration": "24h"}},
                {"type": "X5C", "name": "x5c", "roots": ROOTS,
                 "claims": {"maxTLSCertDuration": "8h", "defaultTLSCertDuration": "2h", "disableRenewal": False},
                 "options": {"x509": {"templateData": {"team": "a"}}, "ssh": {}}},
            ],
            "template": {},
            "backdate": "1m0s",
        },
        "tls": {"cipherSuites": ["TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
                                 "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"],
                "minVersion": 1.2, "maxVersion": 1.3, "renegotiation": False},
    }


def test_a_step_ca_0_19_ca_json_with_all_five_types_loads_unchanged(tmp_path: Path) -> None:
    raw = step_ca_0_19()
    path = tmp_path / "ca.json"
    path.write_text(json.dumps(raw, indent="\t"))
    config = load_config(path)
    assert [p.type for p in config.authority.provisioners] == ["JWK", "ACME", "OIDC", "K8sSA", "X5C"]
    built = Provisioners.from_config(config.authority.provisioners)  # nothing is fetched from Google here
    assert [p.name for p in built] == ["admin@example.com", "acme", "Google", "k8sSA-default", "x5c"]
    oidc = built.by_name("Google")
    assert oidc is not None and oidc.key_id == raw["authority"]["provisioners"][2]["clientID"]
    # What was read is what was written: every provisioner field survives a load and a save (durations may be
    # spelled differently: 24h is saved as 24h0m).
    saved = config.model_dump(mode="json", exclude_none=True)["authority"]["provisioners"]
    for written, kept in zip(raw["authority"]["provisioners"], saved, strict=True):
        assert {k: kept[k] for k in written if k != "claims"} == {k: v for k, v in written.items() if k != "claims"}
        assert {k: _meaning(v) for k, v in kept["claims"].items()} == \
            {k: _meaning(v) for k, v in written["claims"].items()}


def _meaning(value: object) -> object:
    return parse_duration(value) if isinstance(value, str) else value


@pytest.mark.parametrize(("provisioner", "says"), [
    ({"type": "AWS", "name": "aws-fleet", "accounts": ["123456789012"], "disableCustomSANs": False,
      "disableTrustOnFirstUse": False}, "(provisioner 'aws-fleet', type 'AWS'): step-ca's AWS provisioner type"),
    ({"type": "OIDC", "name": "Google", "clientID": "x", "configurationEndpoint": "https://accounts.google.com",
      "scopes": ["openid"]}, "(provisioner 'Google', type 'OIDC'): Extra inputs are not permitted"),
])
def test_a_provisioner_hsmca_cannot_load_is_refused_naming_it(tmp_path: Path, provisioner: dict[str, Any],
                                                              says: str) -> None:
    raw = step_ca_0_19()
    raw["authority"]["provisioners"].append(provisioner)
    path = tmp_path / "ca.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert says in str(refused.value), str(refused.value)
