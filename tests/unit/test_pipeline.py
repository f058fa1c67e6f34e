"""The one issuance pipeline, run in process (software keys, SQLite in RAM): every path passes the same steps."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from joserfc.jwk import ECKey

from appliance.ca import tbs
from appliance.errors import BadRequest, CAError, Forbidden, PolicyDenied, Unauthorized
from appliance.names import RequestedNames
from appliance.provisioners import jose
from appliance.provisioners.acme import OrderCredential
from appliance.provisioners.x5c import X5CToken
from appliance.provisioners.x5c import verify as verify_x5c
from appliance.ra.pipeline import STEPS, RequestContext
from kms.errors import KMSError
from tests.unit.pipeline_ca import CA_NAME, InProcessCA, make_ca

CTX = RequestContext(request_id="unit-1", remote_addr="127.0.0.1")


@pytest.fixture
def ca() -> Iterator[InProcessCA]:
    with make_ca(policy={"x509": {"deny": {"dns": ["*.forbidden.corp"]}}}) as made:
        yield made


def sign(ca: InProcessCA, name: str, sans: list[str] | None = None, **kw: str) -> x509.Certificate:
    return ca.authority.sign(ca.csr(name, sans), ca.token(name, sans), kw.get("not_before"), kw.get("not_after"),
                             CTX).certificate


def renew_token(ca: InProcessCA, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> X5CToken:
    """step's x5c renew token: the certificate in the header, signed by its own key."""
    now = int(datetime.now(timezone.utc).timestamp())
    audience = f"https://{CA_NAME}/1.0/renew"
    token = jose.sign_token(ECKey.import_key(key), {"aud": audience, "iat": now, "nbf": now, "exp": now + 60,
                                                    "jti": f"renew-{cert.serial_number}"},
                            header={"x5cInsecure": [base64.b64encode(cert.public_bytes(Encoding.DER)).decode()]})
    return verify_x5c(token, frozenset({audience}), datetime.now(timezone.utc))


def test_every_path_passes_the_same_steps_in_the_same_order(ca: InProcessCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = ca.authority.sign(ca.csr("svc.internal", key=key), ca.token("svc.internal"), None, None, CTX).certificate
    renewed = ca.authority.renew(leaf, None, CTX).certificate
    rekeyed = ca.authority.renew(renewed, renew_token(ca, renewed, key), CTX, csr=ca.csr("svc.internal")).certificate
    order_csr = ca.csr("web.internal", ["web.internal", "10.0.0.7"])
    acme = ca.authority.issue(OrderCredential(
        provisioner="acme", order_id="o1", account_id="a1",
        names=RequestedNames(("web.internal",), (ipaddress.ip_address("10.0.0.7"),)), common_name="web.internal",
        csr=order_csr), CTX, action="acme.finalize").certificate
    server = ca.authority.issue_server_certificate(["localhost"], key.public_key(), timedelta(hours=720)).certificate
    rec = ca.store.intermediates.list()[0]
    responder = ca.authority.issue_ocsp_responder_certificate(rec, key.public_key(), timedelta(days=90),
                                                             "pkcs11:object=ocsp").certificate

    issued = {"x509.sign": leaf, "x509.renew": renewed, "x509.rekey": rekeyed, "acme.finalize": acme,
              "x509.sign.server": server, "x509.sign.ocsp-responder": responder}
    events = {e["action"]: e for e in ca.events()}
    for action, cert in issued.items():
        event = events[action]
        assert event["decision"] == "allowed" and event["serial"] == str(cert.serial_number), action
        assert event["details"]["steps"] == list(STEPS), action
        record = ca.store.certificates.get(cert.serial_number)
        assert record is not None and record.status.value == "issued", action
        assert record.tbs == cert.tbs_certificate_bytes and record.der == cert.public_bytes(Encoding.DER), action
        cert.verify_directly_issued_by(ca.authority.issuer.certificate)
    assert events["x509.renew"]["details"]["renewed"] == str(leaf.serial_number)
    assert events["x509.rekey"]["details"]["via"] == "x5c-token"
    assert events["acme.finalize"]["details"]["order"] == "o1"
    assert rekeyed.public_key() != leaf.public_key() and renewed.public_key() == leaf.public_key()


def test_the_cas_own_certificates_ignore_the_name_policy_but_nothing_else() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with make_ca(policy={"x509": {"allow": {"dns": ["*.corp"]}}}) as strict:
        with pytest.raises(PolicyDenied):
            strict.authority.sign(strict.csr("localhost"), strict.token("localhost"), None, None, CTX)
        server = strict.authority.issue_server_certificate(["localhost", "127.0.0.1"], key.public_key(),
                                                           timedelta(seconds=60)).certificate
        assert server.not_valid_after_utc - server.not_valid_before_utc == timedelta(seconds=120)  # backdated 1 min
    with make_ca(policy={"keys": {"allow": ["RSA"]}}) as weak, pytest.raises(PolicyDenied, match="key"):
        weak.authority.issue_server_certificate(["localhost"], key.public_key(), timedelta(hours=1))


def test_a_refused_request_spends_its_token_and_a_replay_says_so(ca: InProcessCA) -> None:
    token = ca.token("x.forbidden.corp")
    with pytest.raises(PolicyDenied):
        ca.authority.sign(ca.csr("x.forbidden.corp"), token, None, None, CTX)
    with pytest.raises(Unauthorized, match="already used"):
        ca.authority.sign(ca.csr("x.forbidden.corp"), token, None, None, CTX)
    refused, replayed = ca.events()[-2:]
    assert refused["details"]["steps"] == list(STEPS[:STEPS.index("policy") + 1]) and refused["status"] == 403
    assert replayed["decision"] == "denied" and replayed["status"] == 401
    assert ca.store.certificates.count_by_status()["reserved"] == 0


def test_a_replayed_token_is_refused_at_the_record_step(ca: InProcessCA) -> None:
    token = ca.token("once.internal")
    ca.authority.sign(ca.csr("once.internal"), token, None, None, CTX)
    with pytest.raises(Unauthorized, match="already used"):
        ca.authority.sign(ca.csr("once.internal"), token, None, None, CTX)
    assert ca.events()[-1]["details"]["steps"] == list(STEPS[:STEPS.index("record") + 1])


def test_a_renew_token_of_a_certificate_from_elsewhere_writes_no_token_row(ca: InProcessCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with make_ca() as stranger:
        foreign = stranger.authority.sign(stranger.csr("svc.internal", key=key), stranger.token("svc.internal"),
                                          None, None, CTX).certificate
    before = ca.used_tokens()
    with pytest.raises(Unauthorized, match="not issued by this CA"):
        ca.authority.renew(foreign, renew_token(ca, foreign, key), CTX)
    assert ca.used_tokens() == before
    assert ca.events()[-1]["details"]["steps"] == ["authorize"]


def test_a_csr_asking_for_more_than_the_token_grants_is_refused(ca: InProcessCA) -> None:
    with pytest.raises(Forbidden, match="differ from the token"):
        ca.authority.sign(ca.csr("a.internal", ["a.internal", "b.internal"]), ca.token("a.internal"), None, None, CTX)
    with pytest.raises(Forbidden, match="common name"):
        ca.authority.sign(ca.csr("b.internal"), ca.token("a.internal"), None, None, CTX)


def test_a_rekey_keeps_the_names(ca: InProcessCA) -> None:
    leaf = sign(ca, "keep.internal")
    with pytest.raises(Forbidden, match="a rekey keeps the names"):
        ca.authority.renew(leaf, None, CTX, csr=ca.csr("keep.internal", ["keep.internal", "more.internal"]))


@pytest.mark.parametrize("name, canonical", [("user@ｃｏｒｐ.internal", "user@corp.internal"),
                                             ("ｓｖｃ.internal", "svc.internal"),
                                             ("bücher.internal", "xn--bcher-kva.internal")])
def test_a_name_not_in_canonical_form_is_refused_naming_the_canonical_one(ca: InProcessCA, name: str,
                                                                        canonical: str) -> None:
    with pytest.raises(BadRequest, match=canonical):
        ca.authority.sign(ca.csr("svc.internal", []), ca.token("svc.internal", ["svc.internal", name]),
                          None, None, CTX)


def test_spellings_dns_treats_as_one_name_are_written_canonically(ca: InProcessCA) -> None:
    cert = sign(ca, "Svc.Internal.", ["Svc.Internal.", "User@Corp.Internal.", "https://API.internal./x"])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["svc.internal"]
    assert san.get_values_for_type(x509.RFC822Name) == ["User@corp.internal"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["https://api.internal/x"]
    assert ca.store.certificates.get(cert.serial_number).sans == (  # type: ignore[union-attr]
        "dns:svc.internal", "email:User@corp.internal", "uri:https://api.internal/x")


@pytest.mark.parametrize("field, value", [("not_before", "9999-12-31T23:59:59Z"),
                                          ("not_before", "0001-01-01T00:00:00+01:00"),
                                          ("not_after", "9999-12-31T23:59:59-01:00"),
                                          ("not_after", "99999999h")])
def test_times_out_of_range_are_bad_requests(ca: InProcessCA, field: str, value: str) -> None:
    with pytest.raises(BadRequest, match="out of range"):
        sign(ca, "t.internal", **{field: value})


def test_a_token_expiring_in_the_year_9999_is_a_bad_request(ca: InProcessCA) -> None:
    with pytest.raises(BadRequest, match="out of range"):
        ca.authority.sign(ca.csr("t.internal"), ca.token("t.internal", exp=253402300799), None, None, CTX)


def test_a_signing_failure_abandons_the_reservation_and_is_audited(ca: InProcessCA) -> None:
    def refuse(data: bytes, sign: object) -> bytes:
        raise KMSError("the HSM said no")

    ca.authority.issuer.key = tbs.proxy(ca.authority.issuer.key, refuse)
    with pytest.raises(CAError, match="signing failed"):
        sign(ca, "fail.internal")
    last = ca.events()[-1]
    assert last["decision"] == "error" and last["details"]["steps"] == list(STEPS[:STEPS.index("sign") + 1])
    assert ca.store.certificates.get(int(last["serial"])).status.value == "abandoned"  # type: ignore[union-attr]


def test_an_unexpected_error_is_audited_with_the_request_id(ca: InProcessCA) -> None:
    class Exploding:
        def locate(self, provisioners: object) -> object:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ca.authority.issue(Exploding(), CTX, action="x509.sign")
    last = ca.events()[-1]
    assert last["decision"] == "error" and last["status"] == 500 and last["request_id"] == "unit-1"
    assert last["reasons"] == ["internal error (RuntimeError)"]


def test_a_defaulted_end_never_outlives_the_intermediate(ca: InProcessCA) -> None:
    rec = ca.store.intermediates.list()[0]
    key = ec.generate_private_key(ec.SECP256R1())
    responder = ca.authority.issue_ocsp_responder_certificate(rec, key.public_key(), timedelta(days=4000),
                                                             "pkcs11:object=ocsp").certificate
    assert responder.not_valid_after_utc == ca.authority.issuer.certificate.not_valid_after_utc
