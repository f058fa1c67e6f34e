"""What the provisioner tests send to `POST /1.0/sign` and how they check a refusal: the status and reason, no
certificate row, exactly one audit record for it, and no token in the audit trail."""

from __future__ import annotations

import json
from typing import Any, Protocol

import requests
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.client.keys import build_csr
from appliance.store import Store
from tests.integration.conftest import DevCA, Server


def counts(ca: DevCA) -> dict[str, int]:
    """Certificate rows by status."""
    with Store.from_config(ca.config.db.model_dump(), ca.base) as store:
        return {str(k): v for k, v in store.certificates.count_by_status().items()}


def sign(server: Server, ott: str, subject: str, sans: list[str] | None = None, **extra: str) -> requests.Response:
    """`POST /1.0/sign` with a fresh P-256 key's CSR for `subject` (and `sans`, default `[subject]`)."""
    csr = build_csr(ec.generate_private_key(ec.SECP256R1()), subject, sans if sans is not None else [subject])
    return server.post("/1.0/sign", json={"csr": csr.public_bytes(Encoding.PEM).decode(), "ott": ott, **extra})


class Served(Protocol):
    """A test's world: a CA and its running server."""

    ca: DevCA
    server: Server


def assert_refused(world: Served, ott: str, subject: str, status: int, message: str) -> None:
    ca, server = world.ca, world.server
    before, events = counts(ca), len(ca.audit_events())
    resp = sign(server, ott, subject)
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["status"] == status and message in body["message"], body
    assert "Traceback" not in resp.text
    assert counts(ca) == before
    new = ca.audit_events()[events:]
    assert len(new) == 1 and new[0]["decision"] == "denied" and new[0]["status"] == status, new
    assert new[0]["request_id"] == body["requestId"]
    assert "eyJ" not in json.dumps(new)  # no token in the audit trail


def ssh_sign(server: Server, ott: str, **body: object) -> requests.Response:
    """`POST /1.0/ssh/sign` for a fresh Ed25519 key (step's body: publicKey is the base64 of its SSH blob)."""
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import PublicFormat

    blob = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1].decode()
    return server.post("/1.0/ssh/sign", json={"publicKey": blob, "ott": ott, **body})


def ssh_certificate(crt: str) -> Any:
    """The certificate of a `/ssh/sign` answer (`crt`: the base64 of its blob)."""
    import base64

    from cryptography.hazmat.primitives.serialization import load_ssh_public_identity

    blob = base64.b64decode(crt)
    kind = blob[4:4 + int.from_bytes(blob[:4], "big")].decode()
    return load_ssh_public_identity(f"{kind} {crt}".encode())
