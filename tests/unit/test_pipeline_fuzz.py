"""Whatever a client sends, the answer is a certificate or a 4xx that says why: never a 500, never a hang.

Property tests (hypothesis) against the in-process CA of pipeline_ca.py: token names and requested times
through the pipeline, and arbitrary bodies through the step API's Falcon application.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from falcon import testing
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.api import create_app
from appliance.errors import CAError
from appliance.ra.pipeline import RequestContext
from tests.unit.pipeline_ca import SIGN_AUDIENCE, InProcessCA, make_ca

CTX = RequestContext(request_id="fuzz")
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Names a client might write: ASCII labels, Unicode (full-width, combining, RTL), mail, URIs, IPs, junk.
LABEL = st.text(alphabet=st.sampled_from("abcXYZ019-_.*ｃｏｒｐü\u202e\u0301 "), min_size=1, max_size=12)
NAME = st.one_of(
    st.builds(lambda a, b: f"{a}.{b}", LABEL, LABEL),
    st.builds(lambda a, b: f"{a}@{b}", LABEL, LABEL),
    st.builds(lambda a, b: f"https://{a}/{b}", LABEL, LABEL),
    st.sampled_from(["10.0.0.1", "::ffff:10.1.2.3", "[::1]", "0xa.0.0.1", "", "*", "*.*.corp", "a..b"]),
    st.text(max_size=40),
)
TIME = st.one_of(st.none(), st.sampled_from(["1h", "-5m", "0s", "1000000000h", "2030-01-01T00:00:00Z",
                                             "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00", "tomorrow",
                                             "2030-01-01T00:00:00", ""]), st.text(max_size=30))


@pytest.fixture(scope="module")
def ca() -> Iterator[InProcessCA]:
    with make_ca(policy={"x509": {"deny": {"dns": ["*.forbidden.corp"]}, "allowWildcardNames": True}}) as made:
        yield made


def bare_csr() -> x509.CertificateSigningRequest:
    """No subject and no SANs: the token alone decides the names."""
    return x509.CertificateSigningRequestBuilder().subject_name(x509.Name([])).sign(
        ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())


@FUZZ
@given(subject=NAME, sans=st.lists(NAME, max_size=4), not_before=TIME, not_after=TIME)
def test_token_names_and_times_never_make_a_500(ca: InProcessCA, subject: str, sans: list[str],
                                                not_before: str | None, not_after: str | None) -> None:
    if not subject:
        subject = "x.internal"
    try:
        issued = ca.authority.sign(bare_csr(), ca.token(subject, sans or None), not_before, not_after, CTX)
    except CAError as exc:
        assert exc.status < 500, (exc.status, exc.message)
        event(f"refused {exc.status}")
        return
    event("issued")
    names = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    record = ca.store.certificates.get(issued.certificate.serial_number)
    assert record is not None and record.der == issued.certificate.public_bytes(Encoding.DER)
    assert len(list(names)) >= 1


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=20)
FIELDS = st.fixed_dictionaries({}, optional={
    "csr": st.one_of(JSON, st.just("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----")),
    "ott": st.one_of(JSON, st.just("a.b.c"), st.just("eyJhbGciOiJub25lIn0.e30.")),
    "notBefore": TIME, "notAfter": TIME, "serial": JSON, "reasonCode": JSON, "reason": JSON, "passive": JSON})


@FUZZ
@given(path=st.sampled_from(["/1.0/sign", "/1.0/revoke", "/1.0/rekey", "/1.0/renew", "/sign", "/revoke"]),
       body=st.one_of(FIELDS, JSON, st.binary(max_size=64), st.just(b"[" * 50000), st.just(b'{"a":' * 5000)))
def test_the_step_api_answers_any_body_with_a_4xx(ca: InProcessCA, path: str, body: Any) -> None:
    client = testing.TestClient(create_app(ca.authority))
    raw = body if isinstance(body, bytes) else json.dumps(body)
    resp = client.simulate_post(path, body=raw, headers={"Content-Type": "application/json"})
    assert resp.status_code < 500, resp.text
    event(f"{path} {resp.status_code}")
    assert resp.json["status"] == resp.status_code


TEAM = """{"subject": {"commonName": {{ subject.commonName | tojson }}, "organization": {{ token.org | tojson }}},
  "sans": {{ sans | tojson }},
  "extensions": [{"id": "1.3.6.1.4.1.55555.1", "value": {{ token.team | asn1(token.kind) | tojson }}}]}"""


@pytest.fixture(scope="module")
def templated_ca() -> Iterator[InProcessCA]:
    with make_ca(options={"x509": {"template": TEAM}}) as made:
        yield made


@FUZZ
@given(team=JSON, org=JSON, kind=st.sampled_from(["utf8", "ia5", "printable", "integer", "boolean", "octets", "x"]))
def test_token_claims_a_template_uses_never_make_a_500(templated_ca: InProcessCA, team: Any, org: Any,
                                                       kind: str) -> None:
    ca = templated_ca
    try:
        ca.authority.sign(bare_csr(), ca.token("t.internal", team=team, org=org, kind=kind), None, None, CTX)
    except CAError as exc:
        assert exc.status < 500, (exc.status, exc.message)
        event(f"refused {exc.status}")
        return
    event("issued")


def test_a_lone_surrogate_in_a_token_name_is_refused_and_audited(ca: InProcessCA) -> None:
    """A token's JSON can carry "\\ud800" (no UTF-8 form); the refusal quotes the name into the audit record."""
    from joserfc import jws

    from appliance.provisioners import jose

    name = json.loads('"bad\\ud800.internal"')
    now = int(datetime.now(timezone.utc).timestamp())
    claims = {"iss": "admin", "sub": "x.internal", "aud": SIGN_AUDIENCE, "sans": [name], "iat": now, "nbf": now,
              "exp": now + 300, "jti": secrets.token_hex(16)}
    alg = jose.allowed_algorithms(ca.provisioner_key)[0]
    token = jws.serialize_compact({"alg": alg, "typ": "JWT", "kid": ca.kid}, json.dumps(claims).encode(),
                                  ca.provisioner_key, algorithms=[alg])  # json.dumps writes the \\ud800 escape
    with pytest.raises(CAError) as exc:
        ca.authority.sign(bare_csr(), token, None, None, CTX)
    assert exc.value.status < 500, exc.value.message
    assert ca.events()[-1]["decision"] == "denied"
