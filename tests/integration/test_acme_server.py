"""ACME against a real `hsmca serve` (HTTPS workers, SoftHSM, SQLite), driven by certbot's `acme` library.

One served CA per module with two ACME provisioners: `acme` (every challenge type; a policy that denies
`denied.acme.test`) and `acme-nodns` (no dns-01, so no wildcards). Test names resolve through the loopback
DNS server of acme_dns.py; http-01 is answered by a small HTTP server of this module. The negative cases
the library refuses to send (replayed nonce, wrong url, unknown kid) are raw JWS requests.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import josepy as jose
import pytest
import requests
from acme import challenges, client, crypto_util, errors, messages
from acme import jws as acme_jws
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.acme.ari import cert_id
from appliance.ra.pipeline import STEPS
from appliance.store import Store
from appliance.store.schema import intermediates
from tests import der_surgery
from tests.integration.acme_client import ChallengeServer, answer_http01, deadline, directory_url, key_pem, new_client
from tests.integration.acme_dns import AcmeDNS
from tests.integration.conftest import DevCA, Server, hsmca, openssl_verify_chain, start_server

ERR = "urn:ietf:params:acme:error:"


@pytest.fixture(scope="module")
def dns() -> Iterator[AcmeDNS]:
    with AcmeDNS() as server:
        yield server


@pytest.fixture(scope="module")
def served(dev_ca: DevCA, dns: AcmeDNS, http01: ChallengeServer) -> Iterator[Server]:
    # One provisioner the way an operator adds it, the other with a policy written into ca.json.
    hsmca(dev_ca, "provisioner", "add", "acme-nodns", "--type", "ACME", "--http01-port", str(http01.port),
          "--resolver", dns.address, "--challenge", "http-01", "--challenge", "tls-alpn-01")
    assert "ACME  acme-nodns" in hsmca(dev_ca, "provisioner", "list").stdout

    def add(cfg: dict[str, Any]) -> None:
        cfg["authority"].setdefault("policy", {}).setdefault("x509", {})["allowWildcardNames"] = True
        cfg["authority"]["provisioners"].append({
            "type": "ACME", "name": "acme", "http01Port": http01.port, "resolvers": [dns.address],
            "validationTimeout": 5, "termsOfService": "https://ca.test/tos",
            "policy": {"x509": {"deny": {"dns": ["denied.acme.test"]}, "allowWildcardNames": True}}})
        cfg["authority"]["provisioners"].append({"type": "ACME", "name": "acme-eab", "requireEAB": True})

    dev_ca.edit_config(add)
    s = start_server(dev_ca)
    yield s
    s.stop()


# --- the full flow -----------------------------------------------------------------------------------------


def test_directory_advertises_every_resource_and_meta(served: Server) -> None:
    resp = served.get("/acme/acme/directory")
    assert resp.status_code == 200, resp.text
    d = resp.json()
    for name in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange", "renewalInfo"):
        assert d[name].startswith(f"{served.url}/acme/acme/"), d
    assert d["meta"] == {"externalAccountRequired": False, "termsOfService": "https://ca.test/tos"}
    assert resp.headers["Replay-Nonce"]
    assert served.get("/acme/nope/directory").json()["type"] == ERR + "malformed"


def test_new_nonce_head_200_get_204(served: Server) -> None:
    url = f"{served.url}/acme/acme/new-nonce"
    head = requests.head(url, verify=str(served.ca.root), timeout=10)
    get = requests.get(url, verify=str(served.ca.root), timeout=10)
    assert (head.status_code, get.status_code) == (200, 204)
    assert head.headers["Replay-Nonce"] != get.headers["Replay-Nonce"]
    assert head.headers["Cache-Control"] == "no-store"
    assert 'rel="index"' in head.headers["Link"]


def test_http01_order_issues_a_chain_that_verifies_then_ari_and_revocation(
        served: Server, http01: ChallengeServer, tmp_path: Path) -> None:
    acme = new_client(served)
    csr = crypto_util.make_csr(key_pem(), ["www.acme.test"], ipaddrs=[ipaddress.ip_address("127.0.0.1")])
    orderr = acme.new_order(csr)
    assert {i.typ.name for i in orderr.body.identifiers} == {"dns", "ip"}
    answer_http01(acme, orderr, http01)
    done = acme.poll_and_finalize(orderr, deadline())
    chain = tmp_path / "chain.pem"
    chain.write_text(done.fullchain_pem)
    assert ": OK" in openssl_verify_chain(served.ca.root, chain)
    leaf = x509.load_pem_x509_certificate(done.fullchain_pem.encode())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["www.acme.test"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    event = next(e for e in reversed(served.ca.audit_events()) if e["action"] == "acme.finalize")
    assert event["decision"] == "allowed" and event["serial"] == str(leaf.serial_number)
    assert event["details"]["steps"] == list(STEPS)

    # ARI: a window at about 2/3 of the lifetime, with Retry-After; the library agrees.
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    ari = served.get(f"/acme/acme/renewal-info/{cert_id(aki, leaf.serial_number)}")
    assert ari.status_code == 200, ari.text
    assert int(ari.headers["Retry-After"]) > 0
    window = ari.json()["suggestedWindow"]
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    start = datetime.fromisoformat(window["start"])
    assert abs(start - (leaf.not_valid_before_utc + lifetime * 2 / 3)) < timedelta(seconds=2)
    renew_at, _ = acme.renewal_time(done.fullchain_pem.encode())
    assert renew_at is not None and renew_at > datetime.now(renew_at.tzinfo)

    # Revoked by the account that ordered it; again: alreadyRevoked; ARI then says "now".
    acme.revoke(leaf, 4)
    with pytest.raises(errors.Error, match="alreadyRevoked"):
        acme.revoke(leaf, 4)
    window = served.get(f"/acme/acme/renewal-info/{cert_id(aki, leaf.serial_number)}").json()["suggestedWindow"]
    assert datetime.fromisoformat(window["end"]) <= datetime.now(start.tzinfo) + timedelta(seconds=5)
    revoked = next(e for e in reversed(served.ca.audit_events()) if e["action"] == "x509.revoke")
    assert revoked["serial"] == str(leaf.serial_number) and revoked["decision"] == "allowed"


def test_dns01_wildcard_order(served: Server, dns: AcmeDNS, tmp_path: Path) -> None:
    acme = new_client(served)
    orderr = acme.new_order(crypto_util.make_csr(key_pem(), ["*.wild.acme.test"]))
    (authz,) = orderr.authorizations
    assert authz.body.wildcard and authz.body.identifier.value == "wild.acme.test"
    (chall,) = authz.body.challenges
    assert isinstance(chall.chall, challenges.DNS01)
    response, validation = chall.response_and_validation(acme.net.key)
    dns.set_txt("_acme-challenge.wild.acme.test", validation)
    acme.answer_challenge(chall, response)
    done = acme.poll_and_finalize(orderr, deadline())
    chain = tmp_path / "wild.pem"
    chain.write_text(done.fullchain_pem)
    assert ": OK" in openssl_verify_chain(served.ca.root, chain)


def test_failed_validation_makes_the_order_invalid_with_the_reason(served: Server) -> None:
    acme = new_client(served)
    orderr = acme.new_order(crypto_util.make_csr(key_pem(), ["nothing-served.acme.test"]))
    (authz,) = orderr.authorizations
    chall = next(c for c in authz.body.challenges if isinstance(c.chall, challenges.HTTP01))
    acme.answer_challenge(chall, chall.response(acme.net.key))  # the http server has no answer: 404
    with pytest.raises(errors.ValidationError) as caught:
        acme.poll_authorizations(orderr, deadline())
    failed = caught.value.failed_authzrs[0].body
    chall_body = next(c for c in failed.challenges if c.status.name == "invalid")
    error = chall_body.error
    assert error is not None and error.typ == ERR + "unauthorized" and "404" in str(error.detail)


def test_account_lookup_update_key_change_and_deactivation(served: Server) -> None:
    key = jose.JWKRSA(key=rsa.generate_private_key(65537, 2048))
    acme = new_client(served, key=key)
    regr = acme.net.account
    assert regr is not None and regr.uri.startswith(f"{served.url}/acme/acme/account/")
    updated = acme.update_registration(regr, messages.UpdateRegistration(contact=("mailto:new@acme.test",)))
    assert updated.body.contact == ("mailto:new@acme.test",)
    # onlyReturnExisting finds it by key
    net = client.ClientNetwork(key, alg=jose.RS256, verify_ssl=str(served.ca.root))  # type: ignore[arg-type]
    again = client.ClientV2(client.ClientV2.get_directory(directory_url(served), net), net)
    found = again.query_registration(messages.RegistrationResource(uri=regr.uri, body=messages.Registration()))
    assert found.uri == regr.uri
    # key-change, then the old key is unknown and the new key works
    new_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP384R1()))
    raw = RawClient(served, key)
    inner = acme_jws.JWS.sign(json.dumps({"account": regr.uri, "oldKey": key.public_key().to_partial_json()}).encode(),
                              key=new_key, alg=jose.ES384, nonce=None, url=raw.url("key-change"))
    resp = raw.post(raw.url("key-change"), json.loads(inner.json_dumps()), kid=regr.uri)
    assert resp.status_code == 200, resp.text
    old = RawClient(served, key).post(raw.url("new-account"), {"onlyReturnExisting": True})
    assert old.json()["type"] == ERR + "accountDoesNotExist"
    new = RawClient(served, new_key, jose.ES384).post(raw.url("new-account"), {"onlyReturnExisting": True})
    assert new.status_code == 200 and new.headers["Location"] == regr.uri
    # deactivated: every later request is unauthorized
    gone = RawClient(served, new_key, jose.ES384).post(regr.uri, {"status": "deactivated"}, kid=regr.uri)
    assert gone.json()["status"] == "deactivated"
    refused = RawClient(served, new_key, jose.ES384).post(raw.url("new-order"), {
        "identifiers": [{"type": "dns", "value": "x.acme.test"}]}, kid=regr.uri)
    assert refused.status_code == 403 and refused.json()["type"] == ERR + "unauthorized"


# --- the acceptance negatives ------------------------------------------------------------------------------


class RawClient:
    """Signs exactly what a test asks for, including what a well-behaved client would never send."""

    def __init__(self, served: Server, key: jose.JWK, alg: jose.JWASignature = jose.RS256,
                 provisioner: str = "acme") -> None:
        self.served, self.key, self.alg, self.provisioner = served, key, alg, provisioner

    def url(self, endpoint: str) -> str:
        return f"{self.served.url}/acme/{self.provisioner}/{endpoint}"

    def nonce(self) -> str:
        resp = requests.head(self.url("new-nonce"), verify=str(self.served.ca.root), timeout=10)
        return resp.headers["Replay-Nonce"]

    def body(self, url: str, payload: Any, *, kid: str | None = None, nonce: str | None = None,
             signed_url: str | None = None) -> bytes:
        raw = payload if isinstance(payload, bytes) else b"" if payload is None else json.dumps(payload).encode()
        jws = acme_jws.JWS.sign(raw, key=self.key, alg=self.alg, nonce=jose.decode_b64jose(nonce or self.nonce()),
                                url=signed_url or url, kid=kid)
        return jws.json_dumps().encode()

    def post(self, url: str, payload: Any, **kw: Any) -> requests.Response:
        return self.send(url, self.body(url, payload, **kw))

    def send(self, url: str, body: bytes, content_type: str = "application/jose+json") -> requests.Response:
        return requests.post(url, data=body, headers={"Content-Type": content_type},
                             verify=str(self.served.ca.root), timeout=30)


@pytest.fixture(scope="module")
def account(served: Server) -> tuple[RawClient, str]:
    raw = RawClient(served, jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())), jose.ES256)
    resp = raw.post(raw.url("new-account"), {"termsOfServiceAgreed": True})
    assert resp.status_code == 201, resp.text
    return raw, resp.headers["Location"]


def problem(resp: requests.Response, kind: str, status: int = 400) -> str:
    assert resp.status_code == status, resp.text
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert resp.headers["Replay-Nonce"]  # errors carry a fresh nonce too
    body = resp.json()
    assert body["type"] == ERR + kind, body
    assert body["detail"]
    return str(body["detail"])


def test_replayed_nonce_is_bad_nonce(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    nonce = raw.nonce()
    first = raw.post(kid, None, kid=kid, nonce=nonce)
    assert first.status_code == 200, first.text
    detail = problem(raw.post(kid, None, kid=kid, nonce=nonce), "badNonce")
    assert "already used" in detail


def test_wrong_url_is_unauthorized_with_detail(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    detail = problem(raw.post(kid, None, kid=kid, signed_url=raw.url("new-order")), "unauthorized", 403)
    assert "url" in detail and kid in detail


def test_unknown_kid_is_account_does_not_exist(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    ghost = kid.rsplit("/", 1)[0] + "/NoSuchAccount"
    detail = problem(raw.post(raw.url("new-order"), {"identifiers": [{"type": "dns", "value": "a.acme.test"}]},
                              kid=ghost), "accountDoesNotExist")
    assert "NoSuchAccount" in detail


def test_content_type_and_signature_checks(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    body = raw.body(kid, None, kid=kid)
    problem(raw.send(kid, body, content_type="application/json"), "malformed", 415)
    tampered = json.loads(raw.body(kid, None, kid=kid))
    tampered["payload"] = jose.encode_b64jose(b'{"status": "deactivated"}')
    assert "signature" in problem(raw.send(kid, json.dumps(tampered).encode()), "malformed")
    hs = json.loads(raw.body(kid, None, kid=kid))
    header = json.loads(jose.decode_b64jose(hs["protected"]))
    header["alg"] = "HS256"
    hs["protected"] = jose.encode_b64jose(json.dumps(header).encode())
    problem(raw.send(kid, json.dumps(hs).encode()), "badSignatureAlgorithm")


def test_csr_with_an_extra_name_is_bad_csr(account: tuple[RawClient, str], http01: ChallengeServer) -> None:
    acme = new_client(account[0].served)
    orderr = acme.new_order(crypto_util.make_csr(key_pem(), ["one.acme.test"]))
    answer_http01(acme, orderr, http01)
    orderr = acme.poll_authorizations(orderr, deadline())
    bad_csr = crypto_util.make_csr(key_pem(), ["one.acme.test", "extra.acme.test"])
    with pytest.raises(messages.Error) as caught:
        acme.finalize_order(orderr.update(csr_pem=bad_csr), deadline())
    error = caught.value
    assert error.typ == ERR + "badCSR" and "extra.acme.test" in str(error.detail)
    # the order is still ready: the right CSR finalizes it
    done = acme.finalize_order(orderr, deadline())
    assert "BEGIN CERTIFICATE" in done.fullchain_pem


def test_a_csr_with_a_duplicate_extension_is_bad_csr(account: tuple[RawClient, str], http01: ChallengeServer) -> None:
    acme = new_client(account[0].served)
    orderr = acme.new_order(crypto_util.make_csr(key_pem(), ["dup.acme.test"]))
    answer_http01(acme, orderr, http01)
    orderr = acme.poll_authorizations(orderr, deadline())
    bad_csr = der_surgery.csr_pem(der_surgery.csr_with_a_duplicate_extension("dup.acme.test")).encode()
    with pytest.raises(messages.Error) as caught:
        acme.finalize_order(orderr.update(csr_pem=bad_csr), deadline())
    assert caught.value.typ == ERR + "badCSR" and "appears twice" in str(caught.value.detail)


def test_hostile_requests_get_problems_not_500s(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    assert "not JSON" in problem(raw.send(raw.url("new-order"), b"[" * 50000), "malformed")
    assert "not JSON" in problem(raw.post(raw.url("new-order"), b"[" * 40000, kid=kid), "malformed")
    resp = requests.get(f"{raw.served.url}/acme/%E2%80%AE/directory", verify=str(raw.served.ca.root), timeout=10)
    assert resp.status_code == 404 and resp.headers["Content-Type"].startswith("application/problem+json"), resp.text


def test_name_the_policy_denies_is_rejected_identifier(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    resp = raw.post(raw.url("new-order"), {"identifiers": [
        {"type": "dns", "value": "denied.acme.test"}, {"type": "dns", "value": "fine.acme.test"}]}, kid=kid)
    detail = problem(resp, "rejectedIdentifier")
    assert "denied.acme.test" in detail
    sub = resp.json()["subproblems"]
    assert [s["identifier"] for s in sub] == [{"type": "dns", "value": "denied.acme.test"}]
    audited = next(e for e in reversed(raw.served.ca.audit_events()) if e["action"] == "acme.order.new")
    assert audited["decision"] == "denied" and "denied.acme.test" in " ".join(audited["reasons"])


def test_wildcard_without_dns01_is_rejected_identifier(served: Server) -> None:
    raw = RawClient(served, jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())), jose.ES256,
                    provisioner="acme-nodns")
    kid = raw.post(raw.url("new-account"), {}).headers["Location"]
    resp = raw.post(raw.url("new-order"), {"identifiers": [{"type": "dns", "value": "*.wild.acme.test"}]}, kid=kid)
    assert "dns-01" in problem(resp, "rejectedIdentifier")


def test_finalize_before_validation_is_order_not_ready(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    order = raw.post(raw.url("new-order"), {"identifiers": [{"type": "dns", "value": "early.acme.test"}]}, kid=kid)
    assert order.status_code == 201, order.text
    csr = x509.load_pem_x509_csr(crypto_util.make_csr(key_pem(), ["early.acme.test"]))
    resp = raw.post(order.json()["finalize"], {
        "csr": jose.encode_b64jose(csr.public_bytes(serialization.Encoding.DER))}, kid=kid)
    problem(resp, "orderNotReady", 403)


def test_revoke_with_the_certificate_key_and_not_by_a_stranger(
        served: Server, http01: ChallengeServer, account: tuple[RawClient, str]) -> None:
    acme = new_client(served)
    pem = key_pem()
    orderr = acme.new_order(crypto_util.make_csr(pem, ["bykey.acme.test"]))
    answer_http01(acme, orderr, http01)
    leaf = x509.load_pem_x509_certificate(acme.poll_and_finalize(orderr, deadline()).fullchain_pem.encode())
    der = jose.encode_b64jose(leaf.public_bytes(serialization.Encoding.DER))
    stranger, kid = account
    detail = problem(stranger.post(stranger.url("revoke-cert"), {"certificate": der}, kid=kid), "unauthorized", 403)
    assert "did not order" in detail
    problem(stranger.post(stranger.url("revoke-cert"), {"certificate": der, "reason": 7}, kid=kid),
            "badRevocationReason")
    cert_key = serialization.load_pem_private_key(pem, None)
    by_key = RawClient(served, jose.JWKEC(key=cert_key), jose.ES256)
    resp = by_key.post(by_key.url("revoke-cert"), {"certificate": der, "reason": 1})
    assert resp.status_code == 200, resp.text
    event = next(e for e in reversed(served.ca.audit_events()) if e["action"] == "x509.revoke")
    assert event["serial"] == str(leaf.serial_number) and event["details"]["reasonCode"] == 1
    assert event["details"]["source"] == "acme:acme:certificate-key"


def test_key_change_to_a_key_in_use_is_409_with_the_other_account(served: Server) -> None:
    a = RawClient(served, jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())), jose.ES256)
    b_key = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    b = RawClient(served, b_key, jose.ES256)
    kid_a = a.post(a.url("new-account"), {"termsOfServiceAgreed": True}).headers["Location"]
    kid_b = b.post(b.url("new-account"), {"termsOfServiceAgreed": True}).headers["Location"]
    inner = acme_jws.JWS.sign(json.dumps({"account": kid_a, "oldKey": a.key.public_key().to_partial_json()}).encode(),
                              key=b_key, alg=jose.ES256, nonce=None, url=a.url("key-change"))
    resp = a.post(a.url("key-change"), json.loads(inner.json_dumps()), kid=kid_a)
    assert problem(resp, "malformed", 409) and resp.headers["Location"] == kid_b


def test_concurrent_orders_on_one_account_stay_whole(account: tuple[RawClient, str]) -> None:
    raw, kid = account
    names = [f"c{i}.acme.test" for i in range(6)]
    results: dict[str, requests.Response] = {}

    def order(name: str) -> None:
        results[name] = raw.post(raw.url("new-order"), {"identifiers": [
            {"type": "dns", "value": name}, {"type": "dns", "value": f"www.{name}"}]}, kid=kid)

    threads = [threading.Thread(target=order, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 201 for r in results.values()), [r.text for r in results.values()]
    listed = raw.post(f"{kid}/orders", None, kid=kid).json()["orders"]
    assert {r.headers["Location"] for r in results.values()} <= set(listed)
    for name, resp in results.items():
        body = raw.post(resp.headers["Location"], None, kid=kid).json()
        assert body["status"] == "pending" and len(body["authorizations"]) == 2
        assert {i["value"] for i in body["identifiers"]} == {name, f"www.{name}"}


def test_external_account_binding_is_required_and_binds_once(served: Server) -> None:
    out = hsmca(served.ca, "acme", "eab", "add", "acme-eab", "--reference", "team-a").stdout
    fields = dict(line.split(":", 1) for line in out.splitlines())
    kid, hmac = fields["Key ID"].strip(), fields["HMAC key"].strip()
    assert "unused" in hsmca(served.ca, "acme", "eab", "list", "acme-eab").stdout

    def register(key: jose.JWK, with_eab: bool) -> messages.RegistrationResource:
        net = client.ClientNetwork(key, alg=jose.ES256, verify_ssl=str(served.ca.root))  # type: ignore[arg-type]
        directory = client.ClientV2.get_directory(directory_url(served, "acme-eab"), net)
        assert directory.meta.external_account_required
        eab = messages.ExternalAccountBinding.from_data(account_public_key=key.public_key(), kid=kid,
                                                        hmac_key=hmac, directory=directory) if with_eab else None
        return client.ClientV2(directory, net).new_account(
            messages.NewRegistration.from_data(external_account_binding=eab))

    first = jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(messages.Error) as caught:
        register(first, with_eab=False)
    assert caught.value.typ == ERR + "externalAccountRequired"
    regr = register(first, with_eab=True)
    assert f"bound to account {regr.uri.rsplit('/', 1)[1]}" in hsmca(served.ca, "acme", "eab", "list").stdout
    with pytest.raises(messages.Error) as caught:
        register(jose.JWKEC(key=ec.generate_private_key(ec.SECP256R1())), with_eab=True)
    assert caught.value.typ == ERR + "unauthorized" and "already bound" in str(caught.value.detail)


def test_a_cross_certificate_gives_an_alternate_chain(served: Server, http01: ChallengeServer) -> None:
    """With a certificate served after the intermediate (a root rollover's cross-certificate; the root stands
    in for one here), the default chain carries it and the alternate chain, linked rel="alternate", does not."""
    with Store.from_config(served.ca.config.db.model_dump(), served.ca.config.base_dir) as store:
        active = store.intermediates.active()
        assert active is not None
        with store._write("test: a cross-certificate") as conn:
            conn.execute(intermediates.update().where(intermediates.c.id == active.id)
                         .values(chain=served.ca.root.read_bytes()))
        try:
            acme = new_client(served)
            orderr = acme.new_order(crypto_util.make_csr(key_pem(), ["alt.acme.test"]))
            answer_http01(acme, orderr, http01)
            orderr = acme.poll_authorizations(orderr, deadline())
            done = acme.finalize_order(orderr, deadline(), fetch_alternative_chains=True)
        finally:
            with store._write("test: no cross-certificate") as conn:
                conn.execute(intermediates.update().where(intermediates.c.id == active.id).values(chain=None))
    assert done.fullchain_pem.count("BEGIN CERTIFICATE") == 3
    assert [c.count("BEGIN CERTIFICATE") for c in done.alternative_fullchains_pem] == [2]
