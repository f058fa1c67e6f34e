"""The OIDC provisioner against a real OpenID provider (node's oidc-provider, tests/oidc_provider) and a real
`hsmca serve` (SoftHSM keys, SQLite, the audit file).

The operator adds the provisioner with `hsmca provisioner add --type OIDC` (which fetches the provider's discovery
document); the user runs `hsmca certificate --provisioner sso`, which prints the provider's sign-in URL; the test is
the user's browser (tests/integration/oidc_idp.py: the provider's own login and consent pages, then the redirect
to the CLI's loopback listener). Refusals are 401s saying why, with no certificate row and one audit record.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import RSAKey

from appliance.provisioners import jose
from appliance.provisioners.oidc_keys import REFETCH_AT_MOST_EVERY
from tests.integration import oidc_idp
from tests.integration.conftest import HSMCA, DevCA, Server, hsmca, make_ca, openssl_verify_chain, start_server
from tests.integration.oidc_idp import IdP, browser_login, code_flow_id_token, native_client, start_idp
from tests.integration.refusals import assert_refused, counts, sign, ssh_certificate, ssh_sign

pytestmark = [pytest.mark.slow, pytest.mark.skipif(oidc_idp.available() is not None,
                                                    reason=oidc_idp.available() or "")]

CLIENT, SECRET = "hsmca-cli", "native-app-secret"
USERS = {
    "alice": {"email": "alice@example.com", "email_verified": True, "groups": ["ops"]},
    "mallory": {"email": "mallory@other.org", "email_verified": True, "groups": ["ops"]},
    "bob": {"email": "bob@example.com", "email_verified": False, "groups": ["ops"]},
}
PEM = serialization.Encoding.PEM


@dataclass
class World:
    ca: DevCA
    server: Server
    idp: IdP


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("oidc")
    # The provider is stopped whatever fails after it started (a failed set-up must not leave node running).
    with start_idp(base / "idp", clients=[native_client(CLIENT, SECRET), native_client("other-app", "other")],
                   users=USERS, keys=[oidc_idp.make_signing_key("key-1")]) as idp, socket.socket() as stuck:
        ca = make_ca(base / "ca")
        added = hsmca(ca, "provisioner", "add", "sso", "--type", "OIDC", "--client-id", CLIENT, "--client-secret",
                      SECRET, "--configuration-endpoint", idp.issuer, "--domain", "example.com", "--group", "ops")
        assert f"(signs in at {idp.issuer})" in added.stdout, added.stdout
        # A provider that accepts connections and never answers (the kernel completes the handshake for the
        # backlog).
        stuck.bind(("127.0.0.1", 0))
        stuck.listen(64)
        ca.edit_config(lambda cfg: cfg["authority"]["provisioners"].append({
            "type": "OIDC", "name": "stuck", "clientID": "stuck-client",
            "configurationEndpoint": f"http://127.0.0.1:{stuck.getsockname()[1]}"}))
        server = start_server(ca, workers=1)  # one worker: one key cache, so the provider's counters are exact
        try:
            yield World(ca, server, idp)
        finally:
            server.stop()


def id_token(idp: IdP, client: str, secret: str, login: str) -> str:
    """An ID token from the provider's real endpoints; each sign-in has its own nonce, as the CLI's do (the CA
    spends an ID token by its nonce)."""
    return code_flow_id_token(idp, client, secret, login, nonce=secrets.token_urlsafe(16))


def run_certificate(world: World, login: str, subject: str, name: str) -> subprocess.CompletedProcess[str]:
    """`hsmca certificate --provisioner sso`, signing in as `login` where the CLI says to."""
    crt, key = world.ca.base / f"{name}.crt", world.ca.base / f"{name}.key"
    return run_signing_in(world, login, "certificate", subject, str(crt), str(key), "--force")


def run_signing_in(world: World, login: str, *args: str) -> subprocess.CompletedProcess[str]:
    """An `hsmca` command with `--provisioner sso`, the test acting as the browser the printed URL is opened in."""
    proc = subprocess.Popen([HSMCA, *args, "--provisioner", "sso",
                             "--ca-url", world.server.url, "--root", str(world.ca.root)],
                            cwd=world.ca.base, env={**world.ca.env(), "BROWSER": "", "DISPLAY": ""},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    shown: list[str] = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line:
                break
            shown.append(line)
            match = re.match(r"(https?://\S+/auth\?\S+)$", line.strip())
            url = match.group(1) if match else None
        assert url is not None, "".join(shown)
        landed = browser_login(url, login)
        assert landed.status_code == 200 and "Signed in" in landed.text, landed.text
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "".join(shown) + err)


def test_a_user_signs_in_and_gets_a_certificate_for_their_e_mail(world: World) -> None:
    before = counts(world.ca)
    done = run_certificate(world, "alice", "alice@example.com", "alice")
    assert done.returncode == 0, done.stderr
    crt = world.ca.base / "alice.crt"
    assert ": OK" in openssl_verify_chain(world.ca.root, crt)
    leaf = x509.load_pem_x509_certificates(crt.read_bytes())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.RFC822Name) == ["alice@example.com"]
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"{world.idp.issuer}#alice"]
    assert leaf.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "alice@example.com"
    assert counts(world.ca).get("issued", 0) == before.get("issued", 0) + 1
    event = [e for e in world.ca.audit_events() if e.get("provisioner") == "sso"][-1]
    assert event["decision"] == "allowed" and event["subject"] == "alice@example.com", event
    assert "eyJ" not in json.dumps(event)


def test_a_user_outside_the_domain_is_refused(world: World) -> None:
    before, events = counts(world.ca), len(world.ca.audit_events())
    done = run_certificate(world, "mallory", "mallory@other.org", "mallory")
    assert done.returncode != 0
    assert "the e-mail 'mallory@other.org' is not in the allowed domains ['example.com']" in done.stderr, done.stderr
    assert counts(world.ca) == before
    new = world.ca.audit_events()[events:]
    assert len(new) == 1 and new[0]["decision"] == "denied" and new[0]["status"] == 401, new


def test_an_e_mail_the_provider_did_not_verify_is_refused(world: World) -> None:
    ott = id_token(world.idp, CLIENT, SECRET, "bob")
    assert_refused(world, ott, "bob@example.com", 401, "has not verified the e-mail address 'bob@example.com'")


def test_a_token_for_another_client_id_is_refused(world: World) -> None:
    ott = id_token(world.idp, "other-app", "other", "alice")
    assert_refused(world, ott, "alice@example.com", 401, "the token's audience 'other-app' is none of the OIDC "
                                                         "client ids ['hsmca-cli', 'stuck-client']")


def test_an_id_token_is_used_once_and_the_csr_cannot_ask_for_more(world: World) -> None:
    ott = id_token(world.idp, CLIENT, SECRET, "alice")
    assert_refused(world, ott, "www.example.com", 403, "common name 'www.example.com' differs")
    assert_refused(world, ott, "alice@example.com", 401, "token already used")
    # A token minted by someone else with the provider's issuer and client id: not signed by the provider.
    forged = RSAKey.generate_key(2048, parameters={"kid": "key-1"}, private=True)
    now = int(time.time())
    token = jose.sign_token(forged, {"iss": world.idp.issuer, "aud": CLIENT, "sub": "alice", "iat": now,
                                     "exp": now + 300, "email": "alice@example.com", "email_verified": True,
                                     "groups": ["ops"]}, kid="key-1")
    assert_refused(world, token, "alice@example.com", 401, "not signed by a key the OpenID provider publishes")


def test_after_the_provider_rotates_its_key_the_new_key_is_fetched(world: World) -> None:
    idp = world.idp
    ok = sign(world.server, id_token(idp, CLIENT, SECRET, "alice"), "alice@example.com")
    assert ok.status_code == 201, ok.text  # the key set is cached now
    idp.restart([oidc_idp.make_signing_key("key-2"), *idp.keys])  # same issuer; the new key signs
    assert idp.stats()["jwks"] == 0
    time.sleep(REFETCH_AT_MOST_EVERY)  # the CA's last fetch is at least this long ago
    token = id_token(idp, CLIENT, SECRET, "alice")
    assert jose.peek(token)[0]["kid"] == "key-2"
    resp = sign(world.server, token, "alice@example.com")
    assert resp.status_code == 201, resp.text  # the unknown kid made the CA fetch the key set again
    assert idp.stats()["jwks"] == 1
    # A flood of tokens naming keys the provider does not have makes no fetch within the interval.
    stranger = RSAKey.generate_key(2048, parameters={"kid": "bogus"}, private=True)
    now = int(time.time())
    bogus = {"iss": idp.issuer, "aud": CLIENT, "sub": "alice", "iat": now, "exp": now + 300,
             "email": "alice@example.com", "email_verified": True, "groups": ["ops"]}
    for i in range(5):
        resp = sign(world.server, jose.sign_token(stranger, {**bogus, "nonce": f"bogus-{i}"}, kid="bogus"),
                    "alice@example.com")
        assert resp.status_code == 401 and "not signed by a key" in resp.json()["message"], resp.text
    assert idp.stats()["jwks"] == 1


def test_the_provisioner_is_listed_as_step_lists_it(world: World) -> None:
    listed = world.server.get("/provisioners").json()["provisioners"]
    sso = next(p for p in listed if p["name"] == "sso")
    assert sso == {"type": "OIDC", "name": "sso", "clientID": CLIENT, "clientSecret": SECRET,
                   "configurationEndpoint": world.idp.issuer, "domains": ["example.com"], "groups": ["ops"]}


def test_adding_a_provisioner_whose_provider_cannot_be_reached_fails_plainly(world: World, tmp_path: Path) -> None:
    done = hsmca(world.ca, "provisioner", "add", "broken", "--type", "OIDC", "--client-id", "x",
                 "--configuration-endpoint", "http://127.0.0.1:9", check=False)
    assert done.returncode == 1
    assert "cannot fetch the discovery document http://127.0.0.1:9/.well-known/openid-configuration" in done.stderr
    assert "the provisioner was not added" in done.stderr and "Traceback" not in done.stderr
    done = hsmca(world.ca, "provisioner", "add", "plain", "--type", "OIDC", "--client-id", "x",
                 "--configuration-endpoint", "http://idp.example.com", check=False)
    assert done.returncode == 1 and "https URL (http only on a loopback address)" in done.stderr, done.stderr


def test_a_provider_that_hangs_holds_up_one_request_and_stalls_no_one(world: World) -> None:
    """Tokens for a provisioner whose provider never answers: one request waits for the fetch's timeout, the others
    get a 503 at once, and other clients (a JWK token here) are served meanwhile."""
    from tests.integration.signing import sign_bodies

    key = RSAKey.generate_key(2048, parameters={"kid": "k"}, private=True)
    now = int(time.time())

    def stuck(i: int) -> tuple[int, str, float]:
        token = jose.sign_token(key, {"iss": "https://idp", "aud": "stuck-client", "sub": "x", "iat": now,
                                      "exp": now + 300, "nonce": f"stuck-{i}"}, kid="k")
        started = time.monotonic()
        resp = sign(world.server, token, "x@example.com")
        return resp.status_code, resp.json()["message"], time.monotonic() - started

    body = sign_bodies(world.server, ["bystander.internal"])[0]
    with ThreadPoolExecutor(8) as pool:
        waiting = [pool.submit(stuck, i) for i in range(6)]
        time.sleep(0.5)
        started = time.monotonic()
        resp = world.server.post("/1.0/sign", json=body)
        bystander = time.monotonic() - started
        results = [f.result(timeout=60) for f in waiting]
    assert resp.status_code == 201, resp.text
    assert bystander < 3, f"a JWK request took {bystander:.1f} s while the provider hung"
    assert all(status == 503 for status, _, _ in results), results
    slow = [r for r in results if r[2] > 2]
    assert len(slow) <= 1 and all("cannot fetch the discovery document" in r[1] for r in slow), results
    assert sum("being fetched" in message for _, message, _ in results) >= 5, results


def test_hsmca_token_signs_in_and_prints_the_id_token(world: World) -> None:
    done = run_signing_in(world, "alice", "token", "alice@example.com")
    assert done.returncode == 0, done.stderr
    header, claims = jose.peek(done.stdout.strip())
    assert claims["aud"] == CLIENT and claims["email"] == "alice@example.com" and claims["iss"] == world.idp.issuer
    assert len(claims["nonce"]) >= 32  # the CLI's own nonce, which it checked
    resp = sign(world.server, done.stdout.strip(), "alice@example.com")
    assert resp.status_code == 201, resp.text


def test_an_id_token_gets_an_ssh_user_certificate_for_the_e_mail(world: World) -> None:
    resp = ssh_sign(world.server, id_token(world.idp, CLIENT, SECRET, "alice"), certType="user")
    assert resp.status_code == 201, resp.text
    cert = ssh_certificate(resp.json()["crt"])
    assert cert.valid_principals == [b"alice", b"alice@example.com"] and cert.key_id == b"alice@example.com"
    host = ssh_sign(world.server, id_token(world.idp, CLIENT, SECRET, "alice"), certType="host", principals=["web"])
    assert host.status_code == 403 and "only the provisioner's admins" in host.json()["message"], host.text
    other = ssh_sign(world.server, id_token(world.idp, CLIENT, SECRET, "alice"), principals=["root"])
    assert other.status_code == 403 and "['root'] are not among" in other.json()["message"], other.text
