"""Sign requests made ahead of time: what `hsmca certificate` sends, without its start-up in the timing."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.certutil import fingerprint, load_certificates
from appliance.client.http import CAClient
from appliance.client.keys import build_csr
from appliance.client.tokens import provisioner_key, sign_token
from tests.integration.conftest import PASSWORD, Server


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
