"""`hsmca provisioner add --type JWK` and `hsmca provisioner update`, as an operator runs them, and what a served CA
makes of the result after SIGHUP (real `hsmca serve`, SoftHSM, SQLite)."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.provisioners import jose
from tests.integration.conftest import DevCA, Server, hsmca, make_ca, openssl_verify_chain, start_server


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    return make_ca(tmp_path_factory.mktemp("provisioner-commands") / "ca")


@pytest.fixture(scope="module")
def served(ca: DevCA) -> Iterator[Server]:
    server = start_server(ca, workers=1)
    yield server
    server.stop()


def provisioners(ca: DevCA) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(ca.config_path.read_text())["authority"]["provisioners"]}


def reload(server: Server) -> None:
    seen = server.log().count("SIGHUP: ca.json reloaded")
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while server.log().count("SIGHUP: ca.json reloaded") == seen:
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)


def certificate(server: Server, name: str, *args: str) -> None:
    crt, key = server.ca.base / f"{name}.crt", server.ca.base / f"{name}.key"
    hsmca(server.ca, "certificate", name, str(crt), str(key), "--ca-url", server.url, "--root",
          str(server.ca.root), "--force", *args)
    assert ": OK" in openssl_verify_chain(server.ca.root, crt)


def test_a_jwk_provisioner_created_or_from_a_public_key_issues(ca: DevCA, served: Server, tmp_path: Path) -> None:
    password = tmp_path / "pw"
    password.write_text("team-a password\n")
    short = hsmca(ca, "provisioner", "add", "team-a", "--type", "JWK", "--create", "--password-file",
                  str(password), "--x509-max-dur", "2h", check=False)  # the built-in default lifetime is 24h
    assert short.returncode == 1 and "merged claims are contradictory" in short.stderr, short.stderr
    assert "--x509-default-dur" in short.stderr and "team-a" not in provisioners(ca)
    out = hsmca(ca, "provisioner", "add", "team-a", "--type", "JWK", "--create", "--password-file", str(password),
                "--x509-max-dur", "2h", "--x509-default-dur", "1h").stdout
    assert "Added JWK provisioner 'team-a'" in out
    made = provisioners(ca)["team-a"]
    assert made["key"]["kty"] == "EC" and "d" not in made["key"] and made["encryptedKey"].count(".") == 4
    assert made["claims"]["maxTLSCertDuration"] in ("2h", "2h0m")
    # The key pair stays the client's: ca.json gets the public half only.
    private = jose.generate_provisioner_key()
    (tmp_path / "team-b.pub.json").write_text(json.dumps(jose.public_jwk(private)))
    (tmp_path / "team-b.key.json").write_bytes(jose.private_jwk_json(private))
    hsmca(ca, "provisioner", "add", "team-b", "--type", "JWK", "--public-key", str(tmp_path / "team-b.pub.json"))
    assert "encryptedKey" not in provisioners(ca)["team-b"]
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(Encoding.PEM,
                                                                            PublicFormat.SubjectPublicKeyInfo)
    (tmp_path / "team-c.pem").write_bytes(pem)
    hsmca(ca, "provisioner", "add", "team-c", "--type", "JWK", "--public-key", str(tmp_path / "team-c.pem"))
    reload(served)
    certificate(served, "a.internal", "--provisioner", "team-a", "--password-file", str(password))
    certificate(served, "b.internal", "--provisioner", "team-b", "--provisioner-key", str(tmp_path / "team-b.key.json"))
    refused = hsmca(ca, "certificate", "c.internal", str(tmp_path / "c.crt"), str(tmp_path / "c.key"),
                    "--provisioner", "team-a", "--password-file", str(password), "--not-after", "3h",
                    "--ca-url", served.url, "--root", str(ca.root), check=False)
    assert refused.returncode != 0, refused.stdout
    assert 'exceeds the maximum 2h0m (provisioner "team-a" claims.maxTLSCertDuration)' in refused.stderr, refused.stderr


@pytest.mark.parametrize(("args", "says"), [
    (["--x509-max-dur", "48h"], "Updated"),
    (["--x509-max-dur", "1h"], "merged claims are contradictory"),
    (["--domain", "x.org"], "--domain does not apply to a JWK provisioner"),
    (["--public-key", "/nonexistent"], "cannot read /nonexistent"),
    (["--create", "--public-key", "/etc/hostname"], "give --create or --public-key, not both"),
    ([], "nothing to change"),
    (["--x509-max-dur", "soon"], "claims"),
    (["--x509-min-dur", "2h", "--x509-max-dur", "1h"], "claims"),
])
def test_update_a_jwk_provisioner(ca: DevCA, args: list[str], says: str) -> None:
    before = ca.config_path.read_text()
    done = hsmca(ca, "provisioner", "update", "admin", *args, check=False)
    output = done.stdout + done.stderr
    assert says in output and "Traceback" not in output, output
    if done.returncode != 0:
        assert ca.config_path.read_text() == before  # a refused update changes nothing


def test_update_oidc_k8ssa_and_acme_lists_and_claims(ca: DevCA, served: Server, tmp_path: Path) -> None:
    config = json.loads(ca.config_path.read_text())
    config["authority"]["provisioners"].append({"type": "OIDC", "name": "sso", "clientID": "cli",
                                                "configurationEndpoint": "https://idp.example.com",
                                                "domains": ["example.com"]})
    ca.config_path.write_text(json.dumps(config))
    hsmca(ca, "provisioner", "add", "acme", "--type", "ACME")
    # Lists: a flag adds, --remove-… removes, removing what is not there is refused by name.
    hsmca(ca, "provisioner", "update", "sso", "--domain", "example.org", "--remove-domain", "example.com",
          "--admin", "root@example.org", "--disable-renewal")
    sso = provisioners(ca)["sso"]
    assert sso["domains"] == ["example.org"] and sso["admins"] == ["root@example.org"]
    assert sso["claims"]["disableRenewal"] is True
    missing = hsmca(ca, "provisioner", "update", "sso", "--remove-group", "ops", check=False)
    assert missing.returncode == 1 and "group 'ops' is not in groups []" in missing.stderr
    wrong = hsmca(ca, "provisioner", "update", "sso", "--x5c-root", "/etc/hostname", check=False)
    assert wrong.returncode == 1 and "--x5c-root does not apply to a OIDC provisioner" in wrong.stderr
    unreachable = hsmca(ca, "provisioner", "update", "sso", "--configuration-endpoint", "http://127.0.0.1:9",
                        check=False)  # a changed provider is fetched, as `add` does
    assert unreachable.returncode == 1 and "cannot fetch the discovery document" in unreachable.stderr
    assert provisioners(ca)["sso"]["configurationEndpoint"] == "https://idp.example.com"
    hsmca(ca, "provisioner", "update", "acme", "--remove-challenge", "tls-alpn-01", "--require-eab")
    acme = provisioners(ca)["acme"]
    assert acme["challenges"] == ["http-01", "dns-01"] and acme["requireEAB"] is True
    bad = hsmca(ca, "provisioner", "update", "acme", "--challenge", "ftp-01", check=False)
    assert bad.returncode == 1 and "challenges.2: Input should be" in bad.stderr and "(got 'ftp-01')" in bad.stderr
    reload(served)
    listed = {p["name"]: p for p in served.get("/provisioners").json()["provisioners"]}
    assert listed["sso"]["domains"] == ["example.org"] and listed["acme"]["challenges"] == ["http-01", "dns-01"]
    nobody = hsmca(ca, "provisioner", "update", "nobody", "--x509-max-dur", "1h", check=False)
    assert nobody.returncode == 1 and "no provisioner named 'nobody'" in nobody.stderr
