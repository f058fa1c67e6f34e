"""POST /revoke and GET /crl through the Falcon app in-process: real SoftHSM keys, real SQLite, real audit file.

The CRLs are signed by `CRLPublisher` (what the housekeeping process runs) against the same database.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID
from falcon import testing

from appliance.api import create_app, create_http_app
from appliance.ca.urls import certificate_urls, for_issuer
from appliance.provisioners import jose
from appliance.ra.authority import Authority
from appliance.status.crl_publisher import CRLPublisher
from appliance.store import RevocationReason
from tests.integration.conftest import DevCA
from tests.integration.test_sign_api import csr_pem
from tests.integration.test_sign_api import token as sign_token

REVOKE_AUD = "https://localhost:9000/1.0/revoke"


@pytest.fixture(scope="module")
def authority(dev_ca: DevCA) -> Authority:
    def urls(cfg: dict[str, Any]) -> None:
        cfg["crl"] = {"validity": "1h"}

    dev_ca.edit_config(urls)
    return Authority.from_config(dev_ca.config)


@pytest.fixture(scope="module")
def client(authority: Authority) -> testing.TestClient:
    return testing.TestClient(create_app(authority))


@pytest.fixture(scope="module")
def prov_key(dev_ca: DevCA) -> jose.PublicKey:
    return dev_ca.provisioner_key()


@pytest.fixture(scope="module")
def publisher(authority: Authority, dev_ca: DevCA) -> CRLPublisher:
    return CRLPublisher(dev_ca.config, authority.store, holder="test-publisher")


def issue(client: testing.TestClient, key: jose.PublicKey, name: str = "svc.internal") -> x509.Certificate:
    resp = client.simulate_post("/1.0/sign", json={"csr": csr_pem(name, [name]), "ott": sign_token(key, name)})
    assert resp.status_code == 201, resp.text
    return x509.load_pem_x509_certificate(resp.json["crt"].encode())


def revoke_token(key: jose.PublicKey, serial: int | str, **claims: Any) -> str:
    return sign_token(key, str(serial), aud=REVOKE_AUD, sans=None, **claims)


def post_revoke(client: testing.TestClient, body: Any, path: str = "/1.0/revoke") -> testing.Result:
    raw = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.simulate_post(path, body=raw, headers={"Content-Type": "application/json"})


# --- revoke --------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/1.0/revoke", "/revoke"])
def test_revoke_by_token_is_recorded_audited_and_idempotent(client, authority, prov_key, dev_ca, path):
    cert = issue(client, prov_key)
    serial = cert.serial_number
    resp = post_revoke(client, {"serial": str(serial), "ott": revoke_token(prov_key, serial), "reasonCode": 1,
                                "reason": "laptop stolen", "passive": True}, path)
    assert resp.status_code == 200, resp.text
    assert resp.json == {"status": "ok"}
    rec = authority.store.revocations.get(serial)
    assert rec is not None and rec.reason_code is RevocationReason.KEY_COMPROMISE and rec.reason == "laptop stolen"
    assert rec.source == "provisioner:admin"
    event = dev_ca.audit_events()[-1]
    assert event["action"] == "x509.revoke" and event["decision"] == "allowed" and event["serial"] == str(serial)
    assert event["provisioner"] == "admin" and event["details"]["alreadyRevoked"] is False

    again = post_revoke(client, {"serial": str(serial), "ott": revoke_token(prov_key, serial), "reasonCode": 4}, path)
    assert again.status_code == 200, again.text
    assert authority.store.revocations.get(serial) == rec  # the first revocation stands
    assert dev_ca.audit_events()[-1]["details"]["alreadyRevoked"] is True


def test_unknown_serial_is_404(client, prov_key):
    serial = secrets.randbits(126) + 2**126
    resp = post_revoke(client, {"serial": str(serial), "ott": revoke_token(prov_key, serial)})
    assert resp.status_code == 404, resp.text
    assert resp.json["status"] == 404 and "no certificate with serial" in resp.json["message"]


@pytest.mark.parametrize("code", [7, 8, 11, -1, "1", True, 1.5])
def test_bad_reason_code_is_400(client, authority, prov_key, code):
    serial = issue(client, prov_key).serial_number
    resp = post_revoke(client, {"serial": str(serial), "ott": revoke_token(prov_key, serial), "reasonCode": code})
    assert resp.status_code == 400, resp.text
    assert "reasonCode" in resp.json["message"] and resp.json["status"] == 400
    assert authority.store.revocations.get(serial) is None


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"ott": "x"}, 400, "missing serial"),
    ({"serial": 12345, "ott": "x"}, 400, "must be a string"),
    ({"serial": "12ab", "ott": "x"}, 400, "not a decimal"),
    ({"serial": "0", "ott": "x"}, 400, "positive"),
    ({"serial": str(2**160), "ott": "x"}, 400, "20 octets"),
    ({"serial": "123"}, 401, "missing ott"),
    ({"serial": "123", "ott": "x", "passive": "yes"}, 400, "passive"),
    ({"serial": "123", "ott": "x", "reason": 5}, 400, "reason"),
    ("not json", 400, "malformed JSON"),
    ("[1]", 400, "JSON object"),
    ("[" * 50000, 400, "nested too deeply"),
])
def test_malformed_requests_get_clear_errors(client, body, status, message):
    resp = post_revoke(client, body)
    assert resp.status_code == status, resp.text
    assert message in resp.json["message"] and resp.json["status"] == status


def test_a_token_for_another_serial_is_refused_and_spent(client, authority, prov_key, dev_ca):
    mine, other = issue(client, prov_key), issue(client, prov_key, "other.internal")
    ott = revoke_token(prov_key, other.serial_number)
    resp = post_revoke(client, {"serial": str(mine.serial_number), "ott": ott})
    assert resp.status_code == 403, resp.text
    assert f"not {mine.serial_number}" in resp.json["message"]
    assert authority.store.revocations.get(mine.serial_number) is None
    assert dev_ca.audit_events()[-1]["decision"] == "denied"
    # The refused token was spent: it cannot revoke the serial it names either.
    replay = post_revoke(client, {"serial": str(other.serial_number), "ott": ott})
    assert replay.status_code == 401 and "already used" in replay.json["message"]
    assert authority.store.revocations.get(other.serial_number) is None


def test_tokens_are_bound_to_their_endpoint(client, authority, prov_key):
    cert = issue(client, prov_key)
    serial = cert.serial_number
    sign_ott = sign_token(prov_key, str(serial))  # audience …/1.0/sign
    resp = post_revoke(client, {"serial": str(serial), "ott": sign_ott})
    assert resp.status_code == 401 and "audience" in resp.json["message"]
    wrong_key = jose.generate_provisioner_key()
    forged = jose.sign_token(wrong_key, {"iss": "admin", "sub": str(serial), "aud": REVOKE_AUD,
                                         "exp": int(time.time()) + 60, "jti": secrets.token_hex(8)},
                             kid=prov_key.thumbprint())
    resp = post_revoke(client, {"serial": str(serial), "ott": forged})
    assert resp.status_code == 401, resp.text
    # A revoke token does not get a certificate.
    resp = client.simulate_post("/1.0/sign", json={"csr": csr_pem(str(serial), [str(serial)]),
                                                   "ott": sign_token(prov_key, str(serial), aud=REVOKE_AUD)})
    assert resp.status_code == 401 and "audience" in resp.json["message"]
    assert authority.store.revocations.get(serial) is None


# --- certificate URLs ----------------------------------------------------------------------------

def test_leaves_carry_the_crl_and_aia_urls(client, prov_key, dev_ca):
    cert = issue(client, prov_key)
    urls = for_issuer(certificate_urls(dev_ca.config), cert_issuer_id(cert))
    # hsmca init's publicURL: no IP or dotted name among dnsNames (["localhost"]), so loopback, httpAddress's port
    assert urls.crl == f"http://127.0.0.1:9080/crl/{cert_issuer_id(cert)}"
    assert urls.ca_issuers == f"http://127.0.0.1:9080/intermediate/{cert_issuer_id(cert)}.crt"
    cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert [n.value for n in cdp[0].full_name or []] == [urls.crl]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    got = {(d.access_method, d.access_location.value) for d in aia}
    assert got == {(AuthorityInformationAccessOID.OCSP, urls.ocsp),
                   (AuthorityInformationAccessOID.CA_ISSUERS, urls.ca_issuers)}


def cert_issuer_id(cert: x509.Certificate) -> str:
    return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier.hex()


# --- CRL -----------------------------------------------------------------------------------------

def test_crl_is_signed_after_revocations_served_with_cache_headers_and_numbered(
        client, authority, prov_key, publisher, dev_ca, tmp_path):
    # Before the first CRL: 503 with a reason (a fresh database per CA module, nothing published yet).
    assert authority.store.crls.latest_info(authority.issuer.id) is None
    resp = client.simulate_get("/crl")
    assert resp.status_code == 503 and "no CRL has been signed yet" in resp.json["message"]

    publisher.run_once()
    first = authority.store.crls.latest_info(authority.issuer.id)
    assert first is not None
    assert publisher.run_once() == []  # nothing changed: no new CRL

    cert = issue(client, prov_key)
    assert post_revoke(client, {"serial": str(cert.serial_number), "reasonCode": 5,
                                "ott": revoke_token(prov_key, cert.serial_number)}).status_code == 200
    made = publisher.run_once()
    assert [m.number for m in made] == [first.number + 1]
    signed = dev_ca.audit_events()[-1]
    assert signed["action"] == "x509.crl" and signed["details"]["number"] == first.number + 1
    assert signed["details"]["issuer"] == authority.issuer.id and "revocations changed" in signed["details"]["why"]

    resp = client.simulate_get("/1.0/crl")
    assert resp.status_code == 200 and resp.headers["content-type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(resp.content)
    inter = authority.issuer.certificate
    assert crl.is_signature_valid(inter.public_key())  # type: ignore[arg-type]
    assert crl.issuer == inter.subject
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == first.number + 1
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == inter.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is \
        x509.ReasonFlags.cessation_of_operation
    assert crl.next_update_utc is not None and \
        crl.next_update_utc - crl.last_update_utc == timedelta(hours=1)  # crl.validity from ca.json

    cache = resp.headers["cache-control"]
    assert cache.startswith("public, max-age=")
    assert 3500 <= int(cache.split("=")[1]) <= 3600
    assert resp.headers["expires"] == crl.next_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert resp.headers["last-modified"] == crl.last_update_utc.strftime("%a, %d %b %Y %H:%M:%S GMT")

    pem = client.simulate_get("/crl", query_string="pem")
    assert pem.status_code == 200 and pem.text.startswith("-----BEGIN X509 CRL-----")
    assert x509.load_pem_x509_crl(pem.content).public_bytes(Encoding.DER) == resp.content
    plain = testing.TestClient(create_http_app(authority)).simulate_get("/crl")
    assert plain.status_code == 200 and plain.content == resp.content

    # openssl agrees: signature, and the entry with its reason.
    (tmp_path / "crl.der").write_bytes(resp.content)
    chain = tmp_path / "chain.pem"
    chain.write_bytes(dev_ca.root.read_bytes() + dev_ca.intermediate.read_bytes())
    ok = subprocess.run(["openssl", "crl", "-in", str(tmp_path / "crl.der"), "-inform", "DER", "-CAfile",
                         str(chain), "-noout", "-verify"], capture_output=True, text=True)
    assert ok.returncode == 0 and "verify OK" in ok.stdout + ok.stderr, ok.stdout + ok.stderr
    text = subprocess.run(["openssl", "crl", "-in", str(tmp_path / "crl.der"), "-inform", "DER", "-noout", "-text"],
                          capture_output=True, text=True).stdout
    assert f"{cert.serial_number:X}" in text.replace(":", "").upper() and "Cessation Of Operation" in text


def test_a_crl_is_re_signed_past_half_its_validity(authority, publisher):
    publisher.run_once()
    latest = authority.store.crls.latest_info(authority.issuer.id)
    assert latest is not None
    assert publisher.run_once(latest.this_update + timedelta(minutes=29)) == []
    made = publisher.run_once(latest.this_update + timedelta(minutes=31))
    assert [m.number for m in made] == [latest.number + 1]


def test_two_publishers_sharing_a_database_make_one_crl_per_revision(client, authority, prov_key, dev_ca):
    """Two replicas' housekeepers polling at once: the lease and the re-check under it decide."""
    store, issuer_id = authority.store, authority.issuer.id
    replicas = [CRLPublisher(dev_ca.config, store, holder=f"replica-{i}") for i in range(2)]
    for p in replicas:
        p.run_once()  # catch up with earlier tests (and open each replica's KMS key)

    def both_poll() -> list[int]:
        made: list[int] = []
        barrier = threading.Barrier(len(replicas))

        def poll(p: CRLPublisher) -> None:
            barrier.wait()
            for _ in range(5):
                made.extend(m.number for m in p.run_once())

        threads = [threading.Thread(target=poll, args=(p,)) for p in replicas]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return made

    for _ in range(3):
        before = store.crls.latest_info(issuer_id)
        assert before is not None
        cert = issue(client, prov_key)
        assert post_revoke(client, {"serial": str(cert.serial_number),
                                    "ott": revoke_token(prov_key, cert.serial_number)}).status_code == 200
        made = both_poll()
        assert made == [before.number + 1], made
        after = store.crls.latest_info(issuer_id)
        assert after is not None and after.revision == store.revocations.revision(issuer_id)
    assert store.leases.holder(f"crl:{issuer_id}", datetime.now(timezone.utc)) is None  # released


def test_each_intermediate_has_its_own_crl_and_certificate_url(client, authority, prov_key, publisher):
    cert = issue(client, prov_key)
    issuer_id = cert_issuer_id(cert)
    assert issuer_id == authority.issuer.id
    publisher.run_once()
    for prefix in ("", "/1.0"):
        own = client.simulate_get(f"{prefix}/crl/{issuer_id}")
        assert own.status_code == 200 and own.content == client.simulate_get(f"{prefix}/crl").content
        got = client.simulate_get(f"{prefix}/intermediate/{issuer_id}.crt")
        assert got.status_code == 200 and got.headers["content-type"] == "application/pkix-cert"
        assert x509.load_der_x509_certificate(got.content) == authority.issuer.certificate
    for missing in ("00" * 20, "not-hex", "A" * 40):
        assert client.simulate_get(f"/crl/{missing}").status_code == 404
        assert client.simulate_get(f"/intermediate/{missing}.crt").status_code == 404
