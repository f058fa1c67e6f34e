"""The OCSP responder of a running `hsmca serve`, asked by `openssl ocsp` and by cryptography-built requests.

The acceptance case revokes with `hsmca revoke` (through the API). Elsewhere `revoke_here` writes the
revocation to the CA's database and rewrites this host's revocation stamp, which is what the API's revoke does
after its commit; a bare `RevocationStore.revoke` plays a revocation made by another replica (no stamp here). The KMS
signature count comes from `/metrics` (`hsmca_kms_sign_seconds_count`, every process merged).
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from appliance.certutil import load_certificates
from appliance.ra.pipeline import STEPS
from appliance.status.ocsp import UNKNOWN_SIGNATURES_BURST, UNKNOWN_SIGNATURES_PER_SECOND
from appliance.status.stamp import POLL_SECONDS, bump, stamp_path
from appliance.store import Store
from tests import der_surgery
from tests.integration.conftest import DevCA, Server, hsmca, issue_through, make_ca, start_server, wait_for
from tests.unit.test_metrics import parse, value

pytestmark = pytest.mark.slow

OCSP_REQUEST = {"Content-Type": "application/ocsp-request"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> DevCA:
    ca = make_ca(tmp_path_factory.mktemp("ocsp-ca"))
    ca.edit_config(lambda c: c.setdefault("server", {}).update(housekeepingInterval="1s"))
    return ca


@pytest.fixture(scope="module")
def server(ca: DevCA) -> Iterator[Server]:
    s = start_server(ca)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def store(ca: DevCA) -> Iterator[Store]:
    config = ca.config
    with Store.from_config(config.db.model_dump(), config.base_dir) as s:
        yield s


def leaf_of(path: Path) -> tuple[x509.Certificate, Path]:
    """The leaf alone (the issued file holds the chain)."""
    cert = load_certificates(path)[0]
    out = path.with_suffix(".leaf.pem")
    out.write_bytes(cert.public_bytes(Encoding.PEM))
    return cert, out


def openssl_ocsp(ca: DevCA, leaf: Path, url: str, *extra: str) -> str:
    """`openssl ocsp` as a relying party runs it; `extra` goes before -cert (where a -sha256 must be)."""
    done = subprocess.run(["openssl", "ocsp", "-issuer", str(ca.intermediate), *extra, "-cert", str(leaf),
                           "-url", url, "-CAfile", str(ca.root)], capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def request_der(ca: DevCA, cert: x509.Certificate, algorithm: hashes.HashAlgorithm | None = None,
                nonce: bytes | None = None) -> bytes:
    issuer = load_certificates(ca.intermediate)[0]
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def post(url: str, der: bytes, session: requests.Session | None = None) -> requests.Response:
    """One OCSP POST (with `session`, on its keep-alive connection: the same listener process, whose memory
    then holds what it answered; `hsmca serve` runs server.httpWorkers of them)."""
    resp = (session or requests).post(url, data=der, headers=OCSP_REQUEST, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/ocsp-response"
    return resp


def kms_signatures(server: Server) -> float:
    return value(parse(requests.get(f"{server.http_url}/metrics", timeout=10).text), "hsmca_kms_sign_seconds_count")


def wait_stored(store: Store, serial: int, timeout: float = 30) -> None:
    wait_for(lambda: store.ocsp.cached(serial) is not None, timeout, f"a stored OCSP response for {serial}")


def revoke_here(ca: DevCA, store: Store, serial: int, reason_code: int) -> None:
    """A revocation committed on this host, as the API's revoke makes it (database, then stamp)."""
    store.revocations.revoke(serial, reason_code=reason_code, source="test")
    bump(stamp_path(ca.base))


def test_openssl_sees_good_then_revoked_with_the_reason_at_once(server: Server, ca: DevCA, store: Store) -> None:
    cert, leaf = leaf_of(issue_through(server, "good.example"))
    out = openssl_ocsp(ca, leaf, f"{server.http_url}/ocsp")
    assert "Response verify OK" in out and f"{leaf}: good" in out, out
    out = openssl_ocsp(ca, leaf, f"{server.http_url}/ocsp", "-sha256")  # a SHA-256 CertID
    assert "Response verify OK" in out and f"{leaf}: good" in out, out
    wait_stored(store, cert.serial_number)  # the first SHA-1 request's

    for _ in range(3):  # in the listener's memory by now
        assert f"{leaf}: good" in openssl_ocsp(ca, leaf, f"{server.http_url}/ocsp", "-no_nonce")
    hsmca(ca, "revoke", str(cert.serial_number), "--reason-code", "1", "--reason", "key on a stolen laptop",
          "--ca-url", server.url, "--root", str(ca.root), "--password-file", str(ca.password_file))
    out = openssl_ocsp(ca, leaf, f"{server.http_url}/ocsp")
    assert "Response verify OK" in out and f"{leaf}: revoked" in out and "Reason: keyCompromise" in out, out
    out = openssl_ocsp(ca, leaf, f"{server.url.replace('localhost', '127.0.0.1')}/1.0/ocsp",
                       "-VAfile", str(ca.intermediate))  # HTTPS listener too (openssl does not check its TLS)
    assert f"{leaf}: revoked" in out, out


def test_get_form_with_url_encoded_base64(server: Server, ca: DevCA, tmp_path: Path) -> None:
    cert, leaf = leaf_of(issue_through(server, "get.example"))
    der = request_der(ca, cert)
    encoded = base64.b64encode(der).decode()
    for path in (quote(encoded, safe=""), encoded):  # RFC 5019 url-encodes; some clients do not
        resp = requests.get(f"{server.http_url}/ocsp/{path}", timeout=30)
        assert resp.status_code == 200 and resp.headers["Content-Type"] == "application/ocsp-response"
        control = resp.headers["Cache-Control"]
        assert "public" in control and "no-transform" in control and "max-age=" in control, control
        max_age = int(control.split("max-age=")[1].split(",")[0])
        assert 23 * 3600 < max_age <= 24 * 3600
        assert resp.headers["Last-Modified"] and resp.headers["Expires"] and resp.headers["ETag"]
        out_file = tmp_path / "resp.der"
        out_file.write_bytes(resp.content)
        done = subprocess.run(["openssl", "ocsp", "-respin", str(out_file), "-issuer", str(ca.intermediate),
                               "-cert", str(leaf), "-CAfile", str(ca.root)], capture_output=True, text=True,
                              timeout=60)
        assert "Response verify OK" in done.stderr + done.stdout and f"{leaf}: good" in done.stdout, done
    https = requests.get(f"{server.url}/ocsp/{quote(encoded, safe='')}", verify=str(ca.root), timeout=30)
    assert ocsp.load_der_ocsp_response(https.content).certificate_status == ocsp.OCSPCertStatus.GOOD


def test_base64_with_slash_and_plus_routes(server: Server, ca: DevCA) -> None:
    """Requests whose base64 holds `/`, `//`, `+` and ends in `/` (found by varying the nonce)."""
    cert, _ = leaf_of(issue_through(server, "b64.example"))
    wanted = {"/": False, "//": False, "+": False, "end/": False}
    for _ in range(5000):
        der = request_der(ca, cert, nonce=secrets.token_bytes(16 + secrets.randbelow(3)))  # some lengths pad
        text = base64.b64encode(der).decode()
        kinds = [k for k in ("/", "//", "+") if k in text] + (["end/"] if text.endswith("/") else [])
        if not kinds or all(wanted[k] for k in kinds):
            continue
        for k in kinds:
            wanted[k] = True
        for path in (quote(text, safe=""), text):
            resp = requests.get(f"{server.http_url}/ocsp/{path}", timeout=30)
            got = ocsp.load_der_ocsp_response(resp.content)
            assert got.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL, (path, resp.content)
            assert got.serial_number == cert.serial_number
        if all(wanted.values()):
            break
    assert all(wanted.values()), wanted


def test_tampered_and_unknown_and_foreign_requests(server: Server, ca: DevCA, tmp_path: Path) -> None:
    cert, _ = leaf_of(issue_through(server, "other.example"))
    der = request_der(ca, cert)
    tampered = der[:2] + b"\x31" + der[3:]  # the inner SEQUENCE tag becomes a SET
    resp = post(f"{server.http_url}/ocsp", tampered)
    assert ocsp.load_der_ocsp_response(resp.content).response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    (tmp_path / "bad.der").write_bytes(resp.content)
    done = subprocess.run(["openssl", "ocsp", "-respin", str(tmp_path / "bad.der"), "-resp_text"],
                          capture_output=True, text=True, timeout=60)
    assert "malformedrequest" in (done.stdout + done.stderr).lower(), done
    truncated = post(f"{server.http_url}/ocsp", der[:-5])
    assert ocsp.load_der_ocsp_response(truncated.content).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST
    garbage = requests.get(f"{server.http_url}/ocsp/not*base64", timeout=30)
    assert ocsp.load_der_ocsp_response(garbage.content).response_status == \
        ocsp.OCSPResponseStatus.MALFORMED_REQUEST

    issuer = load_certificates(ca.intermediate)[0]
    name_hash, key_hash = _hashes(issuer)
    unknown = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, secrets.randbits(126) + 1, hashes.SHA1()).build().public_bytes(Encoding.DER)
    got = ocsp.load_der_ocsp_response(post(f"{server.http_url}/ocsp", unknown).content)
    assert got.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert got.certificate_status == ocsp.OCSPCertStatus.UNKNOWN
    assert got.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest

    other_key = ec.generate_private_key(ec.SECP256R1())
    other = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    foreign = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        _digest(other.public_bytes()), x509.SubjectKeyIdentifier.from_public_key(other_key.public_key()).digest,
        cert.serial_number, hashes.SHA1()).build().public_bytes(Encoding.DER)
    got = ocsp.load_der_ocsp_response(post(f"{server.http_url}/ocsp", foreign).content)
    assert got.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED

    big = requests.post(f"{server.http_url}/ocsp", data=b"\x30" * 5000, headers=OCSP_REQUEST, timeout=30)
    assert big.status_code == 413


def test_two_nonces_are_a_malformed_request_on_both_listeners(server: Server, ca: DevCA) -> None:
    cert, _ = leaf_of(issue_through(server, "nonces.example"))
    der = der_surgery.ocsp_request_with_two_nonces(cert, load_certificates(ca.intermediate)[0])
    encoded = quote(base64.b64encode(der).decode(), safe="")
    for base, verify in ((server.http_url, True), (server.url, str(ca.root)), (f"{server.url}/1.0", str(ca.root))):
        for resp in (requests.post(f"{base}/ocsp", data=der, headers=OCSP_REQUEST, verify=verify, timeout=30),
                     requests.get(f"{base}/ocsp/{encoded}", verify=verify, timeout=30)):
            assert resp.status_code == 200, (base, resp.text)
            status = ocsp.load_der_ocsp_response(resp.content).response_status
            assert status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST, (base, resp.request.method)


def test_the_first_request_signs_once_and_later_ones_cost_no_kms_signature(
        server: Server, ca: DevCA, store: Store) -> None:
    cert, leaf = leaf_of(issue_through(server, "cached.example"))
    before = kms_signatures(server)
    time.sleep(2.5)  # two housekeeping rounds (1 s): nothing pre-signed (ocsp.presign is off by default)
    assert store.ocsp.cached(cert.serial_number) is None and kms_signatures(server) == before
    der = request_der(ca, cert)
    session = requests.Session()  # one listener process (see `post`)
    assert post(f"{server.http_url}/ocsp", der, session).headers["X-OCSP-Cache"] == "miss"
    assert kms_signatures(server) == before + 1
    assert store.ocsp.cached(cert.serial_number) is not None  # stored: every process and replica reads it
    for _ in range(5):
        resp = post(f"{server.http_url}/ocsp", der)  # a new connection: either listener process
        assert resp.headers["X-OCSP-Cache"] in ("hit", "memory")  # the database's copy, then the listener's
        get = session.get(f"{server.http_url}/ocsp/{quote(base64.b64encode(der).decode(), safe='')}", timeout=30)
        assert get.headers["X-OCSP-Cache"] in ("hit", "memory") and get.content == resp.content
    out = openssl_ocsp(ca, leaf, f"{server.http_url}/ocsp", "-no_nonce")
    assert f"{leaf}: good" in out, out
    assert kms_signatures(server) == before + 1

    # A nonce is ignored by default (RFC 5019): still the cached, nonce-less response.
    with_nonce = post(f"{server.http_url}/ocsp", request_der(ca, cert, nonce=b"0123456789abcdef"), session)
    assert with_nonce.headers["X-OCSP-Cache"] == "memory"  # found by its CertID
    with pytest.raises(x509.ExtensionNotFound):
        ocsp.load_der_ocsp_response(with_nonce.content).extensions.get_extension_for_class(x509.OCSPNonce)
    assert kms_signatures(server) == before + 1

    revoke_here(ca, store, cert.serial_number, 4)  # superseded
    got = ocsp.load_der_ocsp_response(post(f"{server.http_url}/ocsp", der, session).content)
    assert got.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert got.revocation_reason == x509.ReasonFlags.superseded
    # Housekeeping signs the CRL that lists it within seconds: a signature of its own, counted by the same metric,
    # so wait for it before counting what OCSP signed.
    issuer = store.certificates.get(cert.serial_number).issuer  # type: ignore[union-attr]
    wait_for(lambda: (store.crls.latest_info(issuer) or _NO_CRL).revision == store.revocations.revision(issuer),
             30, "the CRL listing the revocation")
    signed = kms_signatures(server)
    assert signed == before + 3  # the good response, the revoked one (this request's), the CRL
    for _ in range(3):
        again = post(f"{server.http_url}/ocsp", der)
        assert again.headers["X-OCSP-Cache"] in ("hit", "memory")
    assert kms_signatures(server) == signed


def test_made_up_serials_do_not_make_the_kms_sign_at_their_rate(server: Server, ca: DevCA) -> None:
    issuer = load_certificates(ca.intermediate)[0]
    name_hash, key_hash = _hashes(issuer)
    ders = [ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, secrets.randbits(126) + 1, hashes.SHA1()).build().public_bytes(Encoding.DER)
        for _ in range(600)]
    before, started = kms_signatures(server), time.monotonic()
    statuses: dict[str, int] = {}
    with ThreadPoolExecutor(8) as pool:
        for resp in pool.map(lambda der: post(f"{server.http_url}/ocsp", der), ders):
            got = ocsp.load_der_ocsp_response(resp.content)
            name = "unknown" if got.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL \
                else got.response_status.name.lower()
            statuses[name] = statuses.get(name, 0) + 1
    signed = kms_signatures(server) - before
    listeners = 2  # server.httpWorkers, each with its own budget
    budget = listeners * (UNKNOWN_SIGNATURES_BURST + UNKNOWN_SIGNATURES_PER_SECOND * (time.monotonic() - started))
    assert signed == statuses.get("unknown", 0) <= budget, (signed, statuses)
    assert statuses["unauthorized"] == 600 - signed


_NO_CRL = SimpleNamespace(revision=-1)


def _digest(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA1())
    h.update(data)
    return h.finalize()


def _hashes(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    return _digest(issuer.subject.public_bytes()), \
        x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest


def test_hsmca_ocsp_command(server: Server, ca: DevCA, store: Store) -> None:
    path = issue_through(server, "cli.example")  # leaf then intermediate: the issuer comes from the file
    cert = load_certificates(path)[0]
    url = f"{server.http_url}/ocsp"
    done = hsmca(ca, "ocsp", str(path), "--url", url, "--nonce")
    assert f"{path}: good" in done.stdout and f"responder:   {url}" in done.stdout, done.stdout
    revoke_here(ca, store, cert.serial_number, 5)
    done = hsmca(ca, "ocsp", str(path), "--url", url, "--issuer", str(ca.intermediate), check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{path}: revoked" in done.stdout and "cessation_of_operation" in done.stdout, done.stdout
    other = make_ca(ca.base.parent / "other-ca")  # an issuer this CA does not answer for
    done = hsmca(ca, "ocsp", str(path), "--url", url, "--issuer", str(other.intermediate), check=False)
    assert done.returncode == 1 and "refused: unauthorized" in done.stderr, done.stdout + done.stderr


def test_delegated_responder_made_by_the_cli_signs_and_openssl_accepts_it(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "delegated-ca")
    made = hsmca(ca, "ocsp-responder", "pkcs11:object=ocsp-responder", "--lifetime", "720h")
    assert "Added to ocsp.responders" in made.stdout, made.stdout
    entry = ca.config.ocsp.responders[0]
    responder = load_certificates(ca.config.resolve(entry.certificate))[0]
    ekus = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(ekus) == [x509.oid.ExtendedKeyUsageOID.OCSP_SIGNING]
    responder.extensions.get_extension_for_class(x509.OCSPNoCheck)
    events = [e for e in ca.audit_events() if e["action"] == "x509.sign.ocsp-responder"]
    assert len(events) == 1 and events[0]["serial"] == str(responder.serial_number)
    assert events[0]["details"]["steps"] == list(STEPS)
    server = start_server(ca)
    try:
        path = issue_through(server, "delegated.example")
        cert, leaf = leaf_of(path)
        out = openssl_ocsp(ca, leaf, f"{server.http_url}/ocsp")
        assert "Response verify OK" in out and f"{leaf}: good" in out, out
        got = ocsp.load_der_ocsp_response(post(f"{server.http_url}/ocsp", request_der(ca, cert)).content)
        assert got.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(responder.public_key()).digest
        assert got.certificates == [responder]
        done = hsmca(ca, "ocsp", str(path), "--url", f"{server.http_url}/ocsp")  # the client checks delegation
        assert f"{path}: good" in done.stdout, done.stdout
    finally:
        server.stop()


def stamp_settled(ca: DevCA, timeout: float = 15) -> None:
    """Wait until the revocation stamp has stopped changing. After a revocation each listener process's poll
    sees the database's revocation epoch move and rewrites the stamp once more, within POLL_SECONDS; that
    empties the memories again, so a test counting memory answers starts after it."""
    path = stamp_path(ca.base)
    last, since = path.read_bytes(), time.monotonic()
    deadline = since + timeout
    while time.monotonic() - since < 1.5 * POLL_SECONDS:
        assert time.monotonic() < deadline, f"the revocation stamp kept changing for {timeout} s"
        time.sleep(0.05)
        current = path.read_bytes()
        if current != last:
            last, since = current, time.monotonic()


def test_the_listener_answers_repeats_from_memory_and_forgets_at_a_revocation(
        server: Server, ca: DevCA, store: Store) -> None:
    stamp_settled(ca)  # the earlier tests' revocations
    cert, _ = leaf_of(issue_through(server, "memory.example"))
    url = f"{server.http_url}/ocsp"
    session = requests.Session()
    for algorithm in (hashes.SHA1(), hashes.SHA256()):  # SHA-256 CertIDs are signed once, then remembered
        der = request_der(ca, cert, algorithm)
        first = post(url, der, session)
        before = kms_signatures(server)
        for _ in range(3):
            again = post(url, der, session)
            assert again.headers["X-OCSP-Cache"] == "memory" and again.content == first.content
        get = session.get(f"{url}/{quote(base64.b64encode(der).decode(), safe='')}", timeout=30)
        assert get.headers["X-OCSP-Cache"] == "memory" and get.content == first.content
        assert "max-age=" in get.headers["Cache-Control"] and get.headers["ETag"] and get.headers["Expires"]
        assert kms_signatures(server) == before
    der = request_der(ca, cert)
    revoke_here(ca, store, cert.serial_number, 1)
    got = post(url, der, session)
    assert got.headers["X-OCSP-Cache"] != "memory"  # the revocation emptied that process's memory
    assert ocsp.load_der_ocsp_response(got.content).certificate_status == ocsp.OCSPCertStatus.REVOKED
    for _ in range(4):  # and every other listener process's: whichever a new connection reaches
        got = post(url, der)
        assert ocsp.load_der_ocsp_response(got.content).certificate_status == ocsp.OCSPCertStatus.REVOKED


def test_a_revocation_by_another_replica_reaches_the_memory_within_the_poll(
        server: Server, ca: DevCA, store: Store) -> None:
    stamp_settled(ca)  # the earlier tests' revocations
    cert, _ = leaf_of(issue_through(server, "replica.example"))
    url = f"{server.http_url}/ocsp"
    der = request_der(ca, cert)
    session = requests.Session()
    post(url, der, session)
    assert post(url, der, session).headers["X-OCSP-Cache"] == "memory"
    store.revocations.revoke(cert.serial_number, reason_code=1, source="another replica")  # no stamp on this host
    revoked_at = time.monotonic()
    while True:
        status = ocsp.load_der_ocsp_response(post(url, der, session).content).certificate_status
        if status == ocsp.OCSPCertStatus.REVOKED:
            break
        assert time.monotonic() - revoked_at < POLL_SECONDS + 4, "still good long after the poll interval"
        time.sleep(0.05)
