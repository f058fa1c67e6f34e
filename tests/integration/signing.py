"""Sign requests made ahead of time (what `hsmca certificate` sends, without its start-up in the timing), leaves
issued in process through the pipeline, and roots the tests play the offline ceremony with."""

from __future__ import annotations

import secrets
import time
from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import kms
from appliance.certutil import fingerprint, load_certificates
from appliance.client.http import CAClient
from appliance.client.keys import build_csr
from appliance.client.tokens import provisioner_key, sign_token
from appliance.provisioners import jose
from appliance.ra.authority import Authority, RequestContext
from tests.integration.conftest import PASSWORD, DevCA, Server


def sign_bodies(running: Server, names: list[str]) -> list[dict[str, Any]]:
    """One POST /1.0/sign body per name (a fresh key, CSR and one-time token each)."""
    kid, prov = provisioner_key(CAClient(running.url, running.ca.root), "admin", PASSWORD, None)
    fp = fingerprint(load_certificates(running.ca.root)[0])
    bodies = []
    for name in names:
        csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [name])
        bodies.append({"csr": csr.public_bytes(serialization.Encoding.PEM).decode(),
                       "ott": sign_token(prov, kid, "admin", name, [name], f"{running.url}/1.0/sign", fp)})
    return bodies


def issue_in_process(ca: DevCA, names: list[str]) -> list[x509.Certificate]:
    """Leaves through the one issuance pipeline, in this process, as `POST /1.0/sign` would make them: the
    CA's own SoftHSM key, database and audit trail, a one-time token of its JWK provisioner per leaf."""
    config = ca.config
    config.apply_kms_environment()
    authority = Authority.from_config(config)
    key = ca.provisioner_key()
    audience = sorted(authority.audiences)[0]
    try:
        out = []
        for name in names:
            now = int(time.time())
            token = jose.sign_token(key, {"iss": "admin", "sub": name, "sans": [name], "aud": audience,
                                          "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(16)})
            csr = build_csr(ec.generate_private_key(ec.SECP256R1()), name, [name])
            out.append(authority.sign(csr, token, None, None, RequestContext(request_id="tests")).certificate)
        return out
    finally:
        authority.close()


def software_root(cn: str, *, ca: bool = True, self_signed: bool = True,
                  ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A root certificate and its key, the test playing the ceremony (whose own key never reaches the CA)."""
    key = ec.generate_private_key(ec.SECP384R1())
    signer = key if self_signed else ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "hsmca tests"),
                      x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)])
    now = datetime.now(timezone.utc).replace(microsecond=0)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(kms.new_serial()).not_valid_before(now - timedelta(hours=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(signer, hashes.SHA384()))
    return cert, key
