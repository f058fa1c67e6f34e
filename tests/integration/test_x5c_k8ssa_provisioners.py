"""The X5C and K8sSA provisioners through a real `hsmca serve` (SoftHSM keys, SQLite, the audit file).

The test plays the other parties with keys it makes: the PKI whose certificates vouch for X5C tokens (a root, an
intermediate, device certificates), and the Kubernetes API server that signs service-account tokens. Provisioners
are added with `hsmca provisioner add` as an operator would, certificates obtained with `hsmca certificate` as a
client would, and each chain passes `openssl verify`. Every refusal is a 401/403 saying why, leaves no
certificate row and exactly one audit record.
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from joserfc.jwk import ECKey, OKPKey, RSAKey

from appliance.provisioners import jose
from tests.integration.conftest import DevCA, Server, hsmca, make_ca, openssl_verify_chain, start_server
from tests.integration.refusals import assert_refused, counts, sign, ssh_certificate, ssh_sign

NOW = datetime.now(timezone.utc)
CLUSTER_ISSUER = "https://kubernetes.default.svc.cluster.local"
PEM = serialization.Encoding.PEM

X5C_TEMPLATE = """{
  "subject": {"commonName": {{ subject.commonName | tojson }},
              "organizationalUnit": {{ authorizationCrt.subject.commonName | tojson }}},
  "sans": {{ sans | tojson }}
}"""
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# The README's K8sSA template: the certificate named after the service account and its namespace.
K8S_TEMPLATE = README.split("judges names that carry the namespace:")[1].split("```json")[1].split("```")[0]


# --- the PKI whose certificates vouch (X5C) ---------------------------------------------------------------------

Key = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def make_cert(cn: str, key: Key, issuer: x509.Certificate | None = None, issuer_key: Key | None = None, *,
              ca: bool = False, digital_signature: bool = True, eku: list[x509.ObjectIdentifier] | None = None,
              not_before: datetime = NOW - timedelta(minutes=5),
              not_after: datetime = NOW + timedelta(hours=2)) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer = issuer_key or key
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before).not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=digital_signature and not ca, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False, key_agreement=False,
                                            key_cert_sign=ca, crl_sign=ca, encipher_only=False,
                                            decipher_only=False), critical=True))
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), critical=False)
    return builder.sign(signer, None if isinstance(signer, ed25519.Ed25519PrivateKey) else hashes.SHA256())


def jwk_of(key: Key) -> jose.PublicKey:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return ECKey.import_key(key)
    if isinstance(key, rsa.RSAPrivateKey):
        return RSAKey.import_key(key)
    return OKPKey.import_key(key)


def der64(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


@dataclass
class Device:
    """A certificate (with its chain up to the root, leaf first) and its key, as files and objects."""

    chain: list[x509.Certificate]
    key: Key
    crt_file: Path
    key_file: Path

    def token(self, server: Server, subject: str, *, signer: Key | None = None, header: dict[str, Any] | None = None,
              **claims: Any) -> str:
        now = int(time.time())
        body = {"iss": "devices", "sub": subject, "sans": [subject], "aud": f"{server.url}/1.0/sign#x5c/devices",
                "iat": now, "nbf": now, "exp": now + 300, "jti": secrets.token_hex(16), **claims}
        body = {k: v for k, v in body.items() if v is not None}
        return jose.sign_token(jwk_of(signer or self.key), body,
                               header={"x5c": [der64(c) for c in self.chain], **(header or {})})


class PKI:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        self.root = make_cert("Devices Root", self.root_key, ca=True, not_after=NOW + timedelta(days=30))
        self.int_key = ec.generate_private_key(ec.SECP256R1())
        self.intermediate = make_cert("Devices Intermediate", self.int_key, self.root, self.root_key, ca=True,
                                      not_after=NOW + timedelta(days=30))
        (base / "devices-root.pem").write_bytes(self.root.public_bytes(PEM))

    def device(self, name: str, key: Key | None = None, *, root: tuple[x509.Certificate, Key] | None = None,
               **kw: Any) -> Device:
        key = key or ec.generate_private_key(ec.SECP256R1())
        issuer, issuer_key = root or (self.intermediate, self.int_key)
        leaf = make_cert(name, key, issuer, issuer_key, **kw)
        chain = [leaf] if root else [leaf, self.intermediate]
        crt, key_file = self.base / f"{name}.crt", self.base / f"{name}.key"
        crt.write_bytes(b"".join(c.public_bytes(PEM) for c in chain))
        key_file.write_bytes(key.private_bytes(PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return Device(chain, key, crt, key_file)


# --- the Kubernetes API server (K8sSA) ----------------------------------------------------------------------------

class Cluster:
    """Two service-account signing keys (an RSA and a P-256 one, as a cluster rotating keys has)."""

    def __init__(self, base: Path) -> None:
        self.rsa = rsa.generate_private_key(65537, 2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.keys_file = base / "sa.pub"
        self.keys_file.write_bytes(b"".join(k.public_key().public_bytes(
            PEM, serialization.PublicFormat.SubjectPublicKeyInfo) for k in (self.rsa, self.ec)))

    def legacy(self, namespace: str, account: str, key: Key | None = None) -> str:
        """A secret-based token as Kubernetes wrote them before 1.24: no audience, no expiry."""
        return jose.sign_token(jwk_of(key or self.rsa), {
            "iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{namespace}:{account}",
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": f"{account}-token-x7k2p",
            "kubernetes.io/serviceaccount/service-account.name": account,
            "kubernetes.io/serviceaccount/service-account.uid": "5e5c1a7e-7f9a-4d4b-8d0e-0c2a1b3c4d5e"},
            kid="sa-key-1")

    def bound(self, namespace: str, account: str, audience: str | list[str], *, key: Key | None = None,
              issuer: str = CLUSTER_ISSUER, lifetime: int = 3600, issued: int | None = None) -> str:
        """A projected (bound) token as the kubelet mounts it: audience, expiry, the pod it is bound to."""
        iat = issued if issued is not None else int(time.time())
        return jose.sign_token(jwk_of(key or self.ec), {
            "iss": issuer, "sub": f"system:serviceaccount:{namespace}:{account}", "aud": audience,
            "iat": iat, "nbf": iat, "exp": iat + lifetime,
            "kubernetes.io": {"namespace": namespace, "pod": {"name": f"{account}-5d9f7", "uid": "p-1"},
                              "serviceaccount": {"name": account, "uid": "s-1"}}}, kid="sa-key-2")


# --- the CA ---------------------------------------------------------------------------------------------------

@dataclass
class World:
    ca: DevCA
    server: Server
    pki: PKI
    cluster: Cluster


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("x5c-k8ssa")
    ca = make_ca(base / "ca")
    pki, cluster = PKI(base), Cluster(base)
    (base / "x5c.tpl").write_text(X5C_TEMPLATE)
    (base / "k8s.tpl").write_text(K8S_TEMPLATE)
    hsmca(ca, "provisioner", "add", "devices", "--type", "X5C", "--x5c-root", str(base / "devices-root.pem"),
          "--x509-template", str(base / "x5c.tpl"))
    hsmca(ca, "provisioner", "add", "cluster", "--type", "k8ssa", "--public-key", str(cluster.keys_file),
          "--issuer", CLUSTER_ISSUER, "--x509-template", str(base / "k8s.tpl"))

    def deny_blocked(cfg: dict[str, Any]) -> None:
        prov = next(p for p in cfg["authority"]["provisioners"] if p["name"] == "cluster")
        prov["policy"] = {"x509": {"deny": {"dns": ["*.blocked.svc"]}}}

    ca.edit_config(deny_blocked)
    server = start_server(ca, workers=1)
    try:
        yield World(ca, server, pki, cluster)
    finally:
        server.stop()


def leaf_of(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def certificate(world: World, subject: str, name: str, *args: str) -> Path:
    ca, server = world.ca, world.server
    crt, key = ca.base / f"{name}.crt", ca.base / f"{name}.key"
    hsmca(ca, "certificate", subject, str(crt), str(key), "--ca-url", server.url, "--root", str(ca.root),
          "--force", *args)
    verified = openssl_verify_chain(ca.root, crt)
    assert ": OK" in verified, verified
    return crt


# --- X5C --------------------------------------------------------------------------------------------------------

def test_x5c_certificate_end_to_end(world: World) -> None:
    device = world.pki.device("device-1", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    crt = certificate(world, "app.internal", "x5c-app", "--provisioner", "devices", "--san", "10.0.0.7",
                      "--x5c-cert", str(device.crt_file), "--x5c-key", str(device.key_file))
    leaf = leaf_of(crt)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "app.internal"
    # the template saw the certificate that vouched (step-ca's .AuthorizationCrt)
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "device-1"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["app.internal"] and len(san.get_values_for_type(x509.IPAddress))
    # the default lifetime (24h) is cut at the end of the certificate that vouched (2h)
    assert leaf.not_valid_after_utc <= device.chain[0].not_valid_after_utc
    events = [e for e in world.ca.audit_events() if e.get("provisioner") == "devices" and e["decision"] == "allowed"]
    assert events[-1]["details"]["x5cSubject"] == "CN=device-1"


def test_x5c_hsmca_token_with_rsa_and_ed25519_devices(world: World) -> None:
    for name, key in (("device-rsa", rsa.generate_private_key(65537, 2048)),
                      ("device-ed", ed25519.Ed25519PrivateKey.generate())):
        device = world.pki.device(name, key)
        ca, server = world.ca, world.server
        out = hsmca(ca, "token", "tok.internal", "--ca-url", server.url, "--root", str(ca.root), "--provisioner",
                    "devices", "--x5c-cert", str(device.crt_file), "--x5c-key", str(device.key_file))
        ott = out.stdout.strip()
        header, claims = jose.peek(ott)
        assert header["alg"] == ("RS256" if name == "device-rsa" else "EdDSA") and len(header["x5c"]) == 2
        assert claims["aud"] == f"{server.url}/1.0/sign#x5c/devices" and claims["iss"] == "devices"
        resp = sign(server, ott, "tok.internal")
        assert resp.status_code == 201, resp.text
        # a one-time token: the same token again is refused, with one audit record and no certificate
        assert_refused(world, ott, "tok.internal", 401, "already used")


def test_x5c_refusals(world: World) -> None:
    pki, server = world.pki, world.server
    good = pki.device("device-good")

    other_key = ec.generate_private_key(ec.SECP256R1())
    other_root = make_cert("Someone Else's Root", other_key, ca=True)
    stranger = pki.device("stranger", root=(other_root, other_key))
    assert_refused(world, stranger.token(server, "a.internal"), "a.internal", 401,
                   "does not verify to a root of provisioner 'devices'")

    expired = pki.device("expired", not_before=NOW - timedelta(days=2), not_after=NOW - timedelta(days=1))
    assert_refused(world, expired.token(server, "a.internal"), "a.internal", 401, "expired at")

    no_signing = pki.device("no-signing", digital_signature=False)
    assert_refused(world, no_signing.token(server, "a.internal"), "a.internal", 401, "does not allow digital sign")

    server_only = pki.device("server-only", eku=[ExtendedKeyUsageOID.SERVER_AUTH])
    assert_refused(world, server_only.token(server, "a.internal"), "a.internal", 401, "without clientAuth")

    forged = good.token(server, "a.internal", signer=ec.generate_private_key(ec.SECP256R1()))
    assert_refused(world, forged, "a.internal", 401, "not signed by the key of its x5c certificate")

    for aud in ("https://elsewhere.example/1.0/sign", f"{server.url}/1.0/sign#x5c/another",
                f"{server.url}/1.0/revoke"):
        assert_refused(world, good.token(server, "a.internal", aud=aud), "a.internal", 401, "audience")

    old = int(time.time()) - 3600
    assert_refused(world, good.token(server, "a.internal", iat=old, nbf=old, exp=old + 300), "a.internal", 401,
                   "token expired")
    # names beyond the token's, and a window beyond the certificate that vouched
    assert_refused(world, good.token(server, "a.internal"), "b.internal", 403, "differs from the token subject")
    before = counts(world.ca)
    resp = sign(server, good.token(server, "a.internal"), "a.internal", notAfter="48h")
    assert resp.status_code == 403 and "after the x5c certificate expires" in resp.json()["message"]
    assert counts(world.ca) == before


# --- K8sSA ------------------------------------------------------------------------------------------------------

def test_k8ssa_certificates_end_to_end_legacy_and_bound(world: World) -> None:
    ca, cluster = world.ca, world.cluster
    legacy = ca.base / "legacy-token"
    legacy.write_text(cluster.legacy("payments", "api") + "\n")
    crt = certificate(world, "api.payments.svc", "k8s-legacy", "--provisioner", "cluster",
                      "--k8ssa-token-path", str(legacy))
    leaf = leaf_of(crt)
    # the template named the certificate after the service account and its namespace
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api.payments.svc"
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "payments"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]

    bound = ca.base / "bound-token"
    bound.write_text(cluster.bound("web", "frontend", [CLUSTER_ISSUER, world.server.url]))
    crt = certificate(world, "ignored.example", "k8s-bound", "--provisioner", "cluster", "--token", str(bound))
    san = leaf_of(crt).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["frontend.web.svc"]
    # not single use (the pod presents its token until the kubelet rotates it), as in step-ca
    certificate(world, "again.example", "k8s-bound-2", "--provisioner", "cluster", "--token", str(bound))
    events = [e for e in ca.audit_events() if e.get("provisioner") == "cluster" and e["decision"] == "allowed"]
    assert events[-1]["details"]["serviceAccount"] == "system:serviceaccount:web:frontend"
    # without a token the client looks where a pod has it (as step), and asks for no password
    for provisioner, message in (("cluster", "/var/run/secrets/kubernetes.io/serviceaccount/token"),
                                 ("devices", "give --x5c-cert and --x5c-key")):
        done = hsmca(ca, "certificate", "x.svc", "x.crt", "x.key", "--ca-url", world.server.url, "--root",
                     str(ca.root), "--provisioner", provisioner, check=False, input="")
        assert done.returncode == 1 and message in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_k8ssa_refusals(world: World) -> None:
    cluster, url = world.cluster, world.server.url
    stranger = rsa.generate_private_key(65537, 2048)
    assert_refused(world, cluster.legacy("payments", "api", key=stranger), "x.svc", 401,
                   "not signed by any public key of provisioner 'cluster'")
    assert_refused(world, cluster.bound("web", "frontend", url, issued=int(time.time()) - 7200), "x.svc", 401,
                   "token expired")
    assert_refused(world, cluster.bound("web", "frontend", CLUSTER_ISSUER), "x.svc", 401,
                   "audience ['https://kubernetes.default.svc.cluster.local'] does not name this CA")
    assert_refused(world, cluster.bound("web", "frontend", url, issuer="https://other-cluster.example"), "x.svc",
                   401, "issuer 'https://other-cluster.example' is not one of provisioner 'cluster''s issuers")
    # the namespace reaches policy through the names the template derives from it
    assert_refused(world, cluster.legacy("blocked", "api"), "x.svc", 403, '"*.blocked.svc" denies')


# --- the commands -------------------------------------------------------------------------------------------------

def test_ssh_host_certificates_vouched_for_by_x5c_and_k8ssa(world: World) -> None:
    """X5C and K8sSA sign SSH host certificates (step-ca's rule), for the principals the token or request names."""
    server, pki, cluster = world.server, world.pki, world.cluster
    device = pki.device("host-device", eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    ssh_aud = f"{server.url}/1.0/ssh/sign#x5c/devices"
    ott = device.token(server, "web01.internal", aud=ssh_aud,
                       step={"ssh": {"certType": "host", "principals": ["web01.internal", "10.0.0.7"]}})
    resp = ssh_sign(server, ott, certType="host")
    assert resp.status_code == 201, resp.text
    cert: Any = ssh_certificate(resp.json()["crt"])
    assert cert.valid_principals == [b"web01.internal", b"10.0.0.7"] and cert.key_id == b"web01.internal"
    user = ssh_sign(server, device.token(server, "alice", aud=ssh_aud, step={"ssh": {"certType": "user"}}))
    assert user.status_code == 403 and "signs SSH host certificates only" in user.json()["message"], user.text
    no_step = ssh_sign(server, device.token(server, "web01.internal", aud=ssh_aud))
    assert no_step.status_code == 401 and "no step.ssh claim" in no_step.json()["message"], no_step.text
    # K8sSA: the pod's bound token, the principals the request names, judged by policy
    token = cluster.bound("web", "frontend", f"{server.url}/1.0/ssh/sign")
    resp = ssh_sign(server, token, certType="host", principals=["frontend.web.svc"])
    assert resp.status_code == 201, resp.text
    cert = ssh_certificate(resp.json()["crt"])
    assert cert.valid_principals == [b"frontend.web.svc"] and cert.key_id == b"system:serviceaccount:web:frontend"
    user = ssh_sign(server, token, certType="user", principals=["frontend"])
    assert user.status_code == 403 and "signs SSH host certificates only" in user.json()["message"], user.text
    bare = ssh_sign(server, token, certType="host")
    assert bare.status_code == 400 and "must name its principals" in bare.json()["message"], bare.text


def test_provisioner_add_list_remove(world: World, tmp_path: Path) -> None:
    ca = world.ca
    config = tmp_path / "ca.json"
    shutil.copy(ca.config_path, config)
    listed = hsmca(ca, "provisioner", "list", "--config", str(config)).stdout.splitlines()
    assert "X5C   devices" in listed and "K8sSA cluster" in listed
    hsmca(ca, "provisioner", "add", "more-devices", "--type", "X5C", "--x5c-roots",
          str(ca.base.parent / "devices-root.pem"), "--config", str(config))
    again = hsmca(ca, "provisioner", "add", "cluster-2", "--type", "K8sSA", "--public-key",
                  str(world.cluster.keys_file), "--config", str(config), check=False)
    assert again.returncode == 1 and "there is a K8sSA provisioner already" in again.stderr
    for args, message in [(["--type", "X5C"], "needs --x5c-root"), (["--type", "K8sSA"], "needs --public-key"),
                          (["--type", "X5C", "--x5c-root", str(world.cluster.keys_file)], "not a PEM file"),
                          (["--type", "X5C", "--x5c-root", str(ca.root), "--http01-port", "80"], "does not apply")]:
        done = hsmca(ca, "provisioner", "add", "bad", *args, "--config", str(config), check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
        assert message is None or message in done.stderr, done.stderr
    hsmca(ca, "provisioner", "remove", "cluster", "--config", str(config))
    bad = hsmca(ca, "provisioner", "add", "bad", "--type", "K8sSA", "--public-key", str(ca.base.parent / "x5c.tpl"),
                "--config", str(config), check=False)
    assert bad.returncode == 1 and "no PEM public key" in bad.stderr, bad.stderr
    hsmca(ca, "provisioner", "add", "cluster-2", "--type", "K8sSA", "--public-key", str(world.cluster.keys_file),
          "--audience", "hsmca", "--config", str(config))
    hsmca(ca, "provisioner", "remove", "devices", "--config", str(config))
    listed = hsmca(ca, "provisioner", "list", "--config", str(config)).stdout.splitlines()
    assert "X5C   more-devices" in listed and "K8sSA cluster-2" in listed
    assert not any(line.endswith((" devices", " cluster")) for line in listed)
    saved = json.loads(config.read_text())["authority"]["provisioners"]
    k8s = next(p for p in saved if p["name"] == "cluster-2")
    assert k8s["audiences"] == ["hsmca"] and base64.b64decode(k8s["publicKeys"]).count(b"BEGIN PUBLIC KEY") == 2
    # GET /provisioners lists them as step-ca does
    listed_api = world.server.get("/provisioners").json()["provisioners"]
    by_name = {p["name"]: p for p in listed_api}
    assert by_name["devices"]["type"] == "X5C" and "BEGIN CERTIFICATE" in base64.b64decode(
        by_name["devices"]["roots"]).decode()
    assert by_name["cluster"]["type"] == "K8sSA" and by_name["cluster"]["publicKeys"]
