"""The responder and the housekeeping refresher in this process: the dev CA's intermediate key in SoftHSM,
its SQLite database. (The HTTP side, with `openssl ocsp`, is test_ocsp.py.)"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from prometheus_client import REGISTRY

from appliance.ca.active import ActiveIssuer
from appliance.certutil import load_certificates
from appliance.config import CAConfig
from appliance.serving.ocsp_refresh import LEASE, OCSPRefresher
from appliance.status.ocsp import UNKNOWN_SIGNATURES_BURST, Answer, OCSPResponder
from appliance.store import Store
from tests.integration.conftest import DevCA
from tests.integration.signing import issue_in_process


@pytest.fixture(scope="module")
def config(dev_ca: DevCA) -> CAConfig:
    config = dev_ca.config
    config.apply_kms_environment()
    return config


@pytest.fixture
def store(config: CAConfig) -> Iterator[Store]:
    with Store.from_config(config.db.model_dump(), config.base_dir) as s:
        yield s


@pytest.fixture
def issuers(config: CAConfig, store: Store) -> ActiveIssuer:
    return ActiveIssuer(config, store)


def responder(config: CAConfig, store: Store, issuers: ActiveIssuer, **ocsp_block: object) -> OCSPResponder:
    changed = config.model_copy(update={"ocsp": config.ocsp.model_copy(update=ocsp_block)})
    return OCSPResponder(changed, store, issuers)


def issue(dev_ca: DevCA, name: str) -> x509.Certificate:
    return issue_in_process(dev_ca, [name])[0]


def request(dev_ca: DevCA, cert: x509.Certificate, nonce: bytes | None = None,
            algorithm: hashes.HashAlgorithm | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, load_certificates(dev_ca.intermediate)[0],
                                                        algorithm or hashes.SHA1())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(Encoding.DER)


def nonce_of(der: bytes) -> bytes | None:
    try:
        return ocsp.load_der_ocsp_response(der).extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
    except x509.ExtensionNotFound:
        return None


def test_nonce_is_ignored_by_default_and_echoed_when_asked(dev_ca: DevCA, config: CAConfig, store: Store,
                                                          issuers: ActiveIssuer) -> None:
    cert = issue(dev_ca, "nonce.internal")
    default = responder(config, store, issuers)
    first = default.respond(request(dev_ca, cert, b"n" * 16))
    assert first.status == "good" and not first.cached and nonce_of(first.der) is None
    again = default.respond(request(dev_ca, cert, b"m" * 16))
    assert again.cached and again.der == first.der

    echoing = responder(config, store, issuers, echoNonce=True)
    for n in (b"a" * 16, b"b" * 20):
        answer = echoing.respond(request(dev_ca, cert, n))
        assert not answer.cached and nonce_of(answer.der) == n
    assert echoing.respond(request(dev_ca, cert)).cached  # no nonce: the cache serves


def test_sha256_cert_ids_are_answered_in_kind(dev_ca: DevCA, config: CAConfig, store: Store,
                                              issuers: ActiveIssuer) -> None:
    cert = issue(dev_ca, "sha256.internal")
    answer = responder(config, store, issuers).respond(request(dev_ca, cert, algorithm=hashes.SHA256()))
    got = ocsp.load_der_ocsp_response(answer.der)
    assert answer.status == "good" and isinstance(got.hash_algorithm, hashes.SHA256)
    assert got.serial_number == cert.serial_number
    assert store.ocsp.cached(cert.serial_number) is None  # the cache holds SHA-1 CertIDs only


def test_refresher_presigns_new_certificates_and_resigns_past_half_validity(
        dev_ca: DevCA, config: CAConfig, store: Store, issuers: ActiveIssuer) -> None:
    resp = responder(config, store, issuers, validity="1h")
    refresher = OCSPRefresher(store, resp, batch=2, lease_ttl=timedelta(minutes=1),
                              reservation_timeout=timedelta(minutes=2), presign=True, holder="replica-a")
    first = refresher.run()  # whatever earlier tests left without a response
    assert first is not None and first.complete
    fresh = issue_in_process(dev_ca, [f"presign{i}.internal" for i in range(5)])
    done = refresher.run()
    assert done is not None and done.complete and done.presigned == 5 and done.resigned == 0  # batches of 2
    for cert in fresh:
        hit = resp.respond(request(dev_ca, cert))
        assert hit.cached and hit.status == "good"
    store.revocations.revoke(fresh[0].serial_number, reason_code=1, source="test")
    done = refresher.run()
    assert done is not None and done.presigned == 1 and done.statuses == {"revoked": 1}
    assert store.ocsp.cached(fresh[0].serial_number).status == "revoked"  # type: ignore[union-attr]

    # 31 minutes on, every 1-hour response is past half its validity: re-signed (and still cached).
    before = store.ocsp.cached(fresh[1].serial_number)
    done = refresher.run(datetime.now(UTC) + timedelta(minutes=31))
    assert done is not None and done.resigned >= 5
    row = store.ocsp.cached(fresh[1].serial_number)
    assert row is not None and before is not None and row.der != before.der  # a new signature

    # One replica at a time: another holder waits for the lease.
    other = OCSPRefresher(store, resp, batch=2, lease_ttl=timedelta(minutes=1),
                          reservation_timeout=timedelta(minutes=2), presign=True, holder="replica-b")
    assert other.run() is None
    store.leases.release(LEASE, "replica-a")
    assert other.run() is not None
    store.leases.release(LEASE, "replica-b")


def signatures() -> float:
    return REGISTRY.get_sample_value("hsmca_kms_sign_seconds_count", {"backend": "pkcs11"}) or 0.0


def test_by_default_the_refresher_keeps_fresh_only_the_responses_that_exist(
        dev_ca: DevCA, config: CAConfig, store: Store, issuers: ActiveIssuer) -> None:
    resp = responder(config, store, issuers, validity="1h")
    refresher = OCSPRefresher(store, resp, batch=50, lease_ttl=timedelta(minutes=1),
                              reservation_timeout=timedelta(minutes=2), holder="lazy")
    asked, unasked = issue_in_process(dev_ca, ["asked.internal", "unasked.internal"])
    before = signatures()
    first = resp.respond(request(dev_ca, asked))  # the first request signs and stores
    assert first.status == "good" and not first.cached and signatures() == before + 1
    assert resp.respond(request(dev_ca, asked)).cached and signatures() == before + 1
    done = refresher.run()
    assert done is not None and done.presigned == 0 and done.resigned == 0 and signatures() == before + 1
    assert store.ocsp.cached(unasked.serial_number) is None  # nobody asked: never signed
    done = refresher.run(datetime.now(UTC) + timedelta(minutes=31))  # past half the validity
    assert done is not None and done.presigned == 0 and done.resigned >= 1
    assert store.ocsp.cached(unasked.serial_number) is None
    row = store.ocsp.cached(asked.serial_number)
    assert row is not None and row.der != first.der
    store.leases.release(LEASE, "lazy")


def test_a_burst_of_first_requests_signs_once(dev_ca: DevCA, config: CAConfig, store: Store,
                                              issuers: ActiveIssuer) -> None:
    resp = responder(config, store, issuers)
    warm, *certs = issue_in_process(dev_ca, [f"burst{i}.internal" for i in range(4)])
    resp.respond(request(dev_ca, warm))  # the intermediates read, the key open: the bursts race for the signature
    for cert in certs:
        der = request(dev_ca, cert)
        before = signatures()
        start = threading.Barrier(16)

        def ask(_: int, der: bytes = der, start: threading.Barrier = start) -> Answer:
            start.wait()
            return resp.respond(der)

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(ask, range(16)))
        assert {a.status for a in answers} == {"good"} and len({a.der for a in answers}) == 1
        assert signatures() == before + 1  # without the single flight: 16 (measured)


def test_made_up_serials_cost_signatures_only_within_the_budget(
        dev_ca: DevCA, config: CAConfig, store: Store, issuers: ActiveIssuer) -> None:
    resp = responder(config, store, issuers)
    issuer = load_certificates(dev_ca.intermediate)[0]
    before = signatures()
    for serial in (2**200, 2**159, 0):  # beyond 20 octets, or not positive: no CA's
        out_of_range = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            *_hashes(issuer), serial, hashes.SHA1()).build().public_bytes(Encoding.DER)
        assert resp.respond(out_of_range).status == "unauthorized" and signatures() == before
    statuses: dict[str, int] = {}
    for _ in range(300):
        der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            *_hashes(issuer), secrets.randbits(127) + 1, hashes.SHA1()).build().public_bytes(Encoding.DER)
        answer = resp.respond(der)
        statuses[answer.status] = statuses.get(answer.status, 0) + 1
    signed = signatures() - before
    assert statuses.get("unknown", 0) == signed and statuses["unauthorized"] == 300 - signed, statuses
    assert UNKNOWN_SIGNATURES_BURST <= signed <= UNKNOWN_SIGNATURES_BURST + 5  # a few seconds' worth of refill


def _hashes(issuer: x509.Certificate) -> tuple[bytes, bytes]:
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(issuer.subject.public_bytes())
    return name_hash.finalize(), x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest


def test_unknown_serials_are_signed_once_per_process_for_a_while(dev_ca: DevCA, config: CAConfig, store: Store,
                                                                 issuers: ActiveIssuer) -> None:
    resp = responder(config, store, issuers)
    issuer = load_certificates(dev_ca.intermediate)[0]
    name_hash = hashes.Hash(hashes.SHA1())
    name_hash.update(issuer.subject.public_bytes())
    key_hash = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash.finalize(), key_hash, 2**120 + 77, hashes.SHA1()).build().public_bytes(Encoding.DER)
    first = resp.respond(der)
    assert first.status == "unknown"
    before = signatures()
    assert resp.respond(der).der == first.der and signatures() == before
    later = datetime.now(UTC) + timedelta(minutes=6)  # past the memo: signed again
    assert resp.respond(der, later).der != first.der and signatures() == before + 1
