"""`hsmca inspect` shows CRL distribution points and AIA as URLs (it once printed cryptography's reprs)."""

from __future__ import annotations

import ipaddress
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID, ObjectIdentifier

from appliance.cli.main import main


def certificate(tmp_path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "svc.internal")])
    uri = x509.UniformResourceIdentifier
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.CRLDistributionPoints([
                x509.DistributionPoint([uri("http://ca.internal:9080/crl/ab12")], None, None, None),
                x509.DistributionPoint([uri("ldap://ldap.internal/cn=crl")], None,
                                       frozenset({x509.ReasonFlags.key_compromise}),
                                       [x509.DirectoryName(name)])]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP, uri("http://ca.internal:9080/ocsp")),
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                       uri("http://ca.internal:9080/intermediate/ab12.crt")),
                x509.AccessDescription(ObjectIdentifier("1.2.3.4"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))),
            ]), critical=False)
            .sign(key, hashes.SHA256()))
    path = tmp_path / "svc.crt"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return path


def test_crl_and_aia_are_urls(tmp_path: Path) -> None:
    path = certificate(tmp_path)
    text = CliRunner().invoke(main, ["inspect", str(path)]).output
    assert ("cRLDistributionPoints: URI:http://ca.internal:9080/crl/ab12, URI:ldap://ldap.internal/cn=crl "
            "reasons:keyCompromise CRLissuer:dirName:CN=svc.internal") in text
    assert ("authorityInfoAccess: OCSP - URI:http://ca.internal:9080/ocsp, "
            "caIssuers - URI:http://ca.internal:9080/intermediate/ab12.crt, 1.2.3.4 - IP:10.0.0.1") in text
    assert "<" not in text and "ObjectIdentifier" not in text
    shown = json.loads(CliRunner().invoke(main, ["inspect", str(path), "--format", "json"]).output)
    assert shown[0]["extensions"]["cRLDistributionPoints"].startswith("URI:http://ca.internal:9080/crl/ab12")
