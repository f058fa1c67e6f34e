"""Sign requests made ahead of time (what `hsmca certificate` sends, without its start-up in the timing), and
leaves recorded without a provisioner in front."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.ca.issuer import Issuer, LeafProfile
from appliance.certutil import fingerprint, load_certificates
from appliance.client.http import CAClient
from appliance.client.keys import build_csr
from appliance.client.tokens import provisioner_key, sign_token
from appliance.names import split_sans
from appliance.store import Reservation, Store
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


def issue_recorded(store: Store, issuer: Issuer, name: str, provisioner: str = "test") -> x509.Certificate:
    """A leaf signed by `issuer`'s KMS key and recorded as the pipeline records it (reserve, sign, mark
    issued), for tests that need certificates on record without a provisioner in front."""
    now = datetime.now(timezone.utc).replace(microsecond=0)
    key = ec.generate_private_key(ec.SECP256R1())
    profile = LeafProfile(common_name=name, public_key=key.public_key(), not_before=now,
                          not_after=now + timedelta(hours=1), names=split_sans([name]))

    def record(serial: int, tbs: bytes) -> None:
        store.certificates.reserve(Reservation(
            serial=serial, issuer=issuer.id, subject=profile.subject_text(), sans=profile.names.as_strings(),
            not_before=profile.not_before, not_after=profile.not_after, provisioner=provisioner, tbs=tbs,
            request_id=None))

    cert = issuer.record_and_sign(profile, record)
    store.certificates.mark_issued(cert.serial_number, cert.public_bytes(serialization.Encoding.DER))
    return cert
