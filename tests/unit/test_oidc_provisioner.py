"""The OIDC provisioner's checks and its key cache, against a small OpenID provider served over real HTTP here
(discovery document and key set only; the whole sign-in against a real provider is in
tests/integration/test_oidc_provisioner.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import ECKey, RSAKey
from pydantic import ValidationError

from appliance.config import CAConfig, OIDCProvisionerConfig
from appliance.errors import BadRequest, Forbidden, ServiceUnavailable, Unauthorized
from appliance.provisioners import Provisioners, jose
from appliance.provisioners import oidc_keys as keys_module
from appliance.provisioners.base import TokenCredential
from appliance.provisioners.oidc import OIDCProvisioner
from appliance.provisioners.oidc_keys import ProviderKeys
from appliance.provisioners.request import CSRRule

CLIENT = "hsmca-cli"


class Provider:
    """What the CA fetches from a provider: its discovery document and key set, with counters."""

    def __init__(self) -> None:
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)]
        self.fetches = {"discovery": 0, "jwks": 0}
        self.cache_control = "public, max-age=600"
        self.jwks_body: bytes | None = None  # replaces the key set's body when set
        self.delay = 0.0
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/.well-known/openid-configuration":
                    provider.fetches["discovery"] += 1
                    body = json.dumps({"issuer": provider.issuer, "jwks_uri": provider.issuer + "/jwks",
                                       "authorization_endpoint": provider.issuer + "/auth",
                                       "token_endpoint": provider.issuer + "/token"}).encode()
                elif self.path == "/jwks":
                    provider.fetches["jwks"] += 1
                    body = provider.jwks_body or json.dumps(
                        {"keys": [{**k.as_dict(private=False), "alg": "RS256", "use": "sig"} for k in provider.keys]}
                    ).encode()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", provider.cache_control)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                for i in range(0, len(body), 4096):
                    time.sleep(provider.delay)
                    self.wfile.write(body[i:i + 4096])
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def id_token(self, claims: dict[str, Any] | None = None, *, key: RSAKey | None = None,
                 header: dict[str, Any] | None = None, drop: tuple[str, ...] = ()) -> str:
        now = int(time.time())
        body = {"iss": self.issuer, "aud": CLIENT, "sub": "u-1", "iat": now, "exp": now + 300,
                "email": "alice@example.com", "email_verified": True, "nonce": f"n-{time.monotonic_ns()}",
                "groups": ["ops"]}
        body.update(claims or {})
        for name in drop:
            body.pop(name, None)
        signer = key or self.keys[0]
        return jose.sign_token(signer, body, kid=str(signer.kid), header=header)


@pytest.fixture()
def provider() -> Iterator[Provider]:
    p = Provider()
    yield p
    p.server.shutdown()
    p.server.server_close()


def config(provider: Provider, **extra: Any) -> OIDCProvisionerConfig:
    return OIDCProvisionerConfig.model_validate({
        "type": "OIDC", "name": "sso", "clientID": CLIENT, "clientSecret": "not-secret",
        "configurationEndpoint": provider.issuer, **extra})


CSR_KEY = ec.generate_private_key(ec.SECP256R1())


def credential(token: str, cn: str = "alice@example.com", sans: tuple[x509.GeneralName, ...] = ()) -> TokenCredential:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, cn)]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return TokenCredential(token=token, csr=builder.sign(CSR_KEY, hashes.SHA256()), audiences=frozenset())


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_a_user_gets_the_names_step_ca_derives_from_the_e_mail(provider: Provider) -> None:
    p = OIDCProvisioner(config(provider, domains=["Example.com"], groups=["ops"]))
    token = provider.id_token({"email": "alice@EXAMPLE.com"})
    request = p.authorize(credential(token), now())
    assert request.common_name == "alice@example.com" and request.csr_rule is CSRRule.TOKEN
    assert request.names.as_strings() == ["email:alice@example.com", f"uri:{provider.issuer}#u-1"]
    assert request.token is not None and request.token.jti.startswith("oidc:n-")
    assert request.audit.subject == "alice@example.com" and request.audit.details["admin"] is False
    assert request.template_data["token"]["groups"] == ["ops"]


def test_an_admin_gets_the_names_of_the_csr(provider: Provider) -> None:
    p = OIDCProvisioner(config(provider, admins=["root@Example.com"], domains=["example.com"]))
    request = p.authorize(credential(provider.id_token({"email": "root@example.COM"}), cn="svc.internal",
                                     sans=(x509.DNSName("svc.internal"),)), now())
    assert request.csr_rule is CSRRule.NONE and request.names.as_strings() == ["dns:svc.internal"]
    assert request.audit.details["admin"] is True


def test_a_token_without_a_nonce_is_spent_by_its_hash(provider: Provider) -> None:
    p = OIDCProvisioner(config(provider))
    token = provider.id_token(drop=("nonce",))
    first, second = (p.authorize(credential(token), now()).token for _ in range(2))
    assert first is not None and second is not None and first.jti == second.jti
    assert first.jti.startswith("oidc-sha256:")


@pytest.mark.parametrize(("claims", "drop", "extra", "reason"), [
    ({"iss": "https://evil.example"}, (), {}, "issuer 'https://evil.example' is not the provider's"),
    ({"aud": "other-app"}, (), {}, "is for ['other-app'], not for client id 'hsmca-cli'"),
    ({"azp": "other-app"}, (), {}, "authorized party (azp) 'other-app'"),
    ({"aud": [CLIENT, "other-app"]}, (), {}, "several audiences must name its authorized party"),
    ({"exp": int(time.time()) - 3600}, (), {}, "token expired"),
    ({"nbf": int(time.time()) + 3600}, (), {}, "not valid before"),
    ({}, ("iat",), {}, "no 'iat' claim"),
    ({"sub": ""}, (), {}, "subject (sub) cannot be empty"),
    ({"email_verified": False}, (), {}, "has not verified the e-mail address"),
    ({}, ("email_verified",), {}, "has not verified the e-mail address"),
    ({"email": "mallory@other.org"}, (), {"domains": ["example.com"]}, "not in the allowed domains"),
    ({"email": "alice@example.com.evil.org"}, (), {"domains": ["example.com"]}, "not in the allowed domains"),
    ({}, ("email",), {"domains": ["example.com"]}, "the ID token has no e-mail"),
    ({"groups": ["dev"]}, (), {"groups": ["ops"]}, "hold none of the allowed groups"),
    ({"groups": "ops"}, (), {"groups": ["ops"]}, "hold none of the allowed groups"),
    ({"email": ["a@example.com"]}, (), {}, "email claim is not an e-mail address"),
])
def test_refusals_say_why(provider: Provider, claims: dict[str, Any], drop: tuple[str, ...], extra: dict[str, Any],
                          reason: str) -> None:
    p = OIDCProvisioner(config(provider, **extra))
    with pytest.raises(Unauthorized, match=reason.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
                       .replace("]", r"\]")):
        p.authorize(credential(provider.id_token(claims, drop=drop)), now())


def test_a_token_signed_by_another_key_or_algorithm_is_refused(provider: Provider) -> None:
    p = OIDCProvisioner(config(provider))
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"}, private=True)
    with pytest.raises(Unauthorized, match="not signed by a key the OpenID provider publishes"):
        p.authorize(credential(provider.id_token(key=stranger)), now())
    # The published key says RS256: the same key with PS256 is refused (the algorithm comes from the key).
    with pytest.raises(Unauthorized, match="not signed by a key"):
        p.authorize(credential(provider.id_token(header={"alg": "PS256"})), now())
    header, body, _ = provider.id_token().split(".")
    import base64

    unsigned = base64.urlsafe_b64encode(json.dumps({"alg": "none", "kid": "k1"}).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthorized, match="not signed by a key"):
        p.authorize(credential(f"{unsigned}.{body}."), now())


def test_an_unknown_kid_refetches_the_key_set_at_most_once_per_interval(provider: Provider) -> None:
    clock = [1000.0]
    p = OIDCProvisioner(config(provider), keys=ProviderKeys(provider.issuer, clock=lambda: clock[0]))
    p.authorize(credential(provider.id_token()), now())
    assert provider.fetches == {"discovery": 1, "jwks": 1}
    bogus = RSAKey.generate_key(2048, parameters={"kid": "bogus"}, private=True)
    with pytest.raises(Unauthorized):  # just fetched: an unknown kid does not fetch again at once
        p.authorize(credential(provider.id_token(key=bogus)), now())
    assert provider.fetches["jwks"] == 1
    clock[0] += keys_module.REFETCH_AT_MOST_EVERY
    for _ in range(5):  # a flood of tokens with a kid the provider does not have
        with pytest.raises(Unauthorized):
            p.authorize(credential(provider.id_token(key=bogus)), now())
    assert provider.fetches["jwks"] == 2  # one refetch, then the interval holds
    # The provider rotates: its new key is fetched once the interval has passed.
    provider.keys.insert(0, RSAKey.generate_key(2048, parameters={"kid": "k2"}, private=True))
    with pytest.raises(Unauthorized):
        p.authorize(credential(provider.id_token()), now())
    clock[0] += keys_module.REFETCH_AT_MOST_EVERY
    p.authorize(credential(provider.id_token()), now())
    assert provider.fetches["jwks"] == 3
    # The cache lasts max-age (600 s here) for known keys.
    clock[0] += 599
    p.authorize(credential(provider.id_token()), now())
    assert provider.fetches["jwks"] == 3
    clock[0] += 2
    p.authorize(credential(provider.id_token()), now())
    assert provider.fetches == {"discovery": 1, "jwks": 4}


def test_an_unreachable_provider_is_a_503_and_cached_keys_stay_in_use(provider: Provider) -> None:
    clock = [0.0]
    p = OIDCProvisioner(config(provider), keys=ProviderKeys(provider.issuer, clock=lambda: clock[0]))
    p.authorize(credential(provider.id_token()), now())
    provider.server.shutdown()
    provider.server.server_close()
    clock[0] += 10_000  # the cache has expired, the provider is down: the keys held still verify
    p.authorize(credential(provider.id_token()), now())
    down = OIDCProvisioner(config(provider))
    with pytest.raises(ServiceUnavailable, match="OpenID provider unavailable: cannot fetch the discovery document"):
        down.authorize(credential(provider.id_token()), now())
    with pytest.raises(ServiceUnavailable, match="could not be fetched recently"):  # no fetch per request
        down.authorize(credential(provider.id_token()), now())


@pytest.mark.parametrize(("body", "reason"), [
    (b"{" * 100_000, "is not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"keys": "no"}', "has no 'keys' list"),
    (b'{"keys": [{"kty": "oct", "k": "AAAA"}]}', "holds no signing key"),
    (b" " * (300 * 1024), "larger than 256 KiB"),
])
def test_a_bad_key_set_is_refused_with_a_503(provider: Provider, body: bytes, reason: str) -> None:
    provider.jwks_body = body
    with pytest.raises(ServiceUnavailable, match=reason):
        OIDCProvisioner(config(provider)).authorize(credential(provider.id_token()), now())


def test_a_provider_that_trickles_is_cut_off(provider: Provider, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keys_module, "READ_TIMEOUT", 0.5)
    provider.jwks_body = b" " * (40 * 1024) + b'{"keys": []}'
    provider.delay = 0.1  # 4 KiB every 0.1 s: each read is quick, the whole is not
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="took longer than"):
        OIDCProvisioner(config(provider)).authorize(credential(provider.id_token()), now())
    assert time.monotonic() - started < 3


def test_private_keys_and_other_uses_in_the_key_set_are_not_used(provider: Provider) -> None:
    key = provider.keys[0]
    provider.jwks_body = json.dumps({"keys": [{**key.as_dict(private=True), "alg": "RS256"},
                                              {**key.as_dict(private=False), "use": "enc"}]}).encode()
    with pytest.raises(ServiceUnavailable, match="holds no signing key"):
        OIDCProvisioner(config(provider)).authorize(credential(provider.id_token()), now())


def test_tokens_reach_the_provisioner_of_their_client_id(provider: Provider) -> None:
    jwk = ECKey.generate_key("P-256", private=True)
    cfg = CAConfig.model_validate({
        "root": "r", "crt": "c", "key": "pkcs11:object=x", "address": ":9000", "dnsNames": ["ca.internal"],
        "db": {"type": "sqlite", "dataSource": "x"},
        "authority": {"provisioners": [
            {"type": "JWK", "name": "admin", "key": {**jwk.as_dict(private=False), "kid": "j1"}},
            config(provider).model_dump(), {**config(provider).model_dump(), "name": "sso2", "clientID": "b"}]}})
    provisioners = Provisioners.from_config(cfg.authority.provisioners)
    _, sso, sso2 = provisioners
    assert provisioners.for_token(provider.id_token()) is sso
    assert provisioners.for_token(provider.id_token({"aud": ["x", "b"], "azp": "b"})) is sso2
    with pytest.raises(Unauthorized, match=r"audience 'other-app' is none of the OIDC client ids \['b', 'hsmca-cli'\]"):
        provisioners.for_token(provider.id_token({"aud": "other-app"}))
    listed = sso.describe(with_encrypted_key=False)
    assert listed == {"type": "OIDC", "name": "sso", "clientID": CLIENT, "clientSecret": "not-secret",
                      "configurationEndpoint": provider.issuer}


@pytest.mark.parametrize(("extra", "reason"), [
    ({"configurationEndpoint": "http://idp.example.com"}, "https URL"),
    ({"configurationEndpoint": "ftp://127.0.0.1/"}, "https URL"),
    ({"clientID": ""}, "at least 1 character"),
    ({"admins": ["root"]}, "admins must be e-mail addresses"),
    ({"domains": ["@example.com"]}, "domains must be domain names"),
    ({"groups": [""]}, "groups cannot hold an empty name"),
    ({"listenAddress": "127.0.0.1"}, "HOST:PORT"),
    ({"sshOptions": {}}, "Extra inputs"),
])
def test_bad_oidc_configuration_is_refused_naming_the_field(extra: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        OIDCProvisionerConfig.model_validate({"type": "OIDC", "name": "sso", "clientID": "c",
                                              "configurationEndpoint": "https://idp.example.com", **extra})


def test_a_nested_token_is_a_400_not_a_crash(provider: Provider) -> None:
    import base64

    nested = base64.urlsafe_b64encode(b"[" * 100_000).rstrip(b"=").decode()
    with pytest.raises(BadRequest, match="nested too deeply"):
        OIDCProvisioner(config(provider)).authorize(credential(f"{nested}.{nested}.x"), now())


def test_a_slow_provider_holds_up_one_request_not_the_others(provider: Provider) -> None:
    """The fetch happens outside the lock: while one request waits for the provider, the others use the keys held
    (or get a 503 at once when none are), instead of queueing behind it."""
    clock = [0.0]
    keys = ProviderKeys(provider.issuer, clock=lambda: clock[0])
    p = OIDCProvisioner(config(provider), keys=keys)
    p.authorize(credential(provider.id_token()), now())
    clock[0] += 10_000  # the cached key set has expired: the next request refetches it
    provider.delay = 1.5  # and the provider answers slowly
    slow = threading.Thread(target=p.authorize, args=(credential(provider.id_token()), now()))
    slow.start()
    time.sleep(0.3)
    started = time.monotonic()
    p.authorize(credential(provider.id_token()), now())  # the keys held, at once
    assert time.monotonic() - started < 0.5
    cold = OIDCProvisioner(config(provider), keys=ProviderKeys(provider.issuer))
    racing = threading.Thread(target=cold.authorize, args=(credential(provider.id_token()), now()))
    racing.start()
    time.sleep(0.3)
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match="being fetched"):
        cold.authorize(credential(provider.id_token()), now())
    assert time.monotonic() - started < 0.5
    slow.join(10)
    racing.join(10)


CLAIM_VALUES = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.floats(allow_nan=True), st.text(max_size=40),
                         st.lists(st.text(max_size=10), max_size=3), st.dictionaries(st.text(max_size=5),
                                                                                     st.integers(), max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(claims=st.dictionaries(st.sampled_from(["iss", "aud", "azp", "sub", "iat", "exp", "nbf", "email",
                                               "email_verified", "nonce", "groups"]), CLAIM_VALUES, max_size=6),
       header=st.dictionaries(st.sampled_from(["kid", "typ", "crit", "x5c"]), CLAIM_VALUES, max_size=2))
def test_hostile_claims_get_a_reason_never_a_crash(provider: Provider, claims: dict[str, Any],
                                                   header: dict[str, Any]) -> None:
    """Tokens as an attacker writes them, byte by byte (RS256 by the provider's own key, any header and claims):
    a 400/401/403 with a reason, never another exception."""
    p = OIDCProvisioner(config(provider, domains=["example.com"], groups=["ops"]))
    full_header = {"alg": "RS256", "kid": "k1", **header}
    body = {"iss": provider.issuer, "aud": CLIENT, "sub": "u", "iat": int(time.time()), "exp": int(time.time()) + 60,
            **claims}
    signing_input = f"{b64(json.dumps(full_header).encode())}.{b64(json.dumps(body).encode())}"
    private = provider.keys[0].private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    signature = private.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    try:
        p.authorize(credential(f"{signing_input}.{b64(signature)}"), now())
    except (Unauthorized, BadRequest, Forbidden):
        pass


def b64(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_the_provider_is_reached_through_the_proxy_variables(provider: Provider,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP_PROXY/HTTPS_PROXY are honoured (an appliance reaches the provider only through its proxy): a small
    forward proxy here relays the discovery document and the key set, and counts them."""
    import urllib.request

    relayed: list[str] = []

    class Proxy(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            relayed.append(self.path)  # an absolute URI, as clients send to a forward proxy
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            with opener.open(self.path, timeout=5) as upstream:
                body = upstream.read()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{proxy.server_address[1]}")
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        OIDCProvisioner(config(provider)).authorize(credential(provider.id_token()), now())
    finally:
        proxy.shutdown()
        proxy.server_close()
    assert relayed == [f"{provider.issuer}/.well-known/openid-configuration", f"{provider.issuer}/jwks"]
