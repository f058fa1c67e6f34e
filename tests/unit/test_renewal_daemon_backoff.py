"""What the renewal daemon does after a failure, and rekey's file handling: pure decisions, no network.

`after_failure` is the whole policy: a CA that cannot answer is retried within a minute, a CA that
refuses a valid certificate is asked again at most hourly, and an expired certificate the CA refuses
ends the daemon. The rekey helpers are checked on real files in a temporary directory.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from appliance.client.http import ClientError
from appliance.client.keys import LeafKey
from appliance.client.rekey import RekeyFiles, finish_interrupted_rekey, key_options_like, rekey_csr
from appliance.client.renewal import (
    MAX_BACKOFF,
    REFUSED_BACKOFF,
    Backoff,
    CannotRenew,
    RenewError,
    after_failure,
    refused,
)

NOW = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
CRT = Path("/etc/ssl/svc.crt")


def cert(key: LeafKey, not_before: datetime, not_after: datetime, name: str = "svc.corp") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name), x509.DNSName(f"alt.{name}")]),
                           critical=False)
            .sign(key, algorithm))


KEY = ec.generate_private_key(ec.SECP256R1())
VALID = cert(KEY, NOW - timedelta(hours=16), NOW + timedelta(hours=8))  # 2/3 into a 24 h lifetime
EXPIRED = cert(KEY, NOW - timedelta(hours=25), NOW - timedelta(hours=1))

UNREACHABLE = ClientError("cannot reach the CA at https://ca:9000: Connection refused")
REVOKED = ClientError("the CA refused POST /renew (401): certificate 7 was revoked", 401)


def test_what_counts_as_a_refusal():
    assert refused(REVOKED) and refused(ClientError("no", 403)) and refused(ClientError("bad", 400))
    for transient in (UNREACHABLE, ClientError("x", 500), ClientError("x", 503), ClientError("x", 429),
                      ClientError("x", 408), RenewError("cannot read"), OSError("disk")):
        assert not refused(transient), transient


def test_an_unreachable_ca_is_retried_with_doubling_delays_capped_at_a_minute():
    backoff, delays = Backoff(), []
    for _ in range(10):
        retry = after_failure(UNREACHABLE, CRT, VALID, NOW, backoff)
        assert not retry.refused and "retrying in" in retry.message
        delays.append(retry.delay)
        backoff = retry.backoff
    assert delays[:7] == [1, 2, 4, 8, 16, 32, 60] and set(delays[6:]) == {MAX_BACKOFF}
    assert after_failure(ClientError("down", 503), CRT, VALID, NOW, Backoff()).delay == 1


def test_a_transient_failure_never_sleeps_through_the_remaining_validity():
    ending = cert(KEY, NOW - timedelta(seconds=50), NOW + timedelta(seconds=20))
    assert after_failure(UNREACHABLE, CRT, ending, NOW, Backoff(transient=60)).delay == 5


def test_an_expired_certificate_is_still_retried_while_the_ca_cannot_answer():
    """The CA may grant a grace period after expiry; only its refusal is final. No 1-second hammering."""
    retry = after_failure(UNREACHABLE, CRT, EXPIRED, NOW, Backoff(transient=32))
    assert retry.delay == 32 and retry.backoff.transient == MAX_BACKOFF


def test_a_refusal_of_a_valid_certificate_backs_off_from_a_minute_to_an_hour():
    backoff, delays = Backoff(), []
    for _ in range(9):
        retry = after_failure(REVOKED, CRT, VALID, NOW, backoff)
        assert retry.refused
        delays.append(retry.delay)
        backoff = retry.backoff
    assert delays[:7] == [60, 120, 240, 480, 960, 1920, 3600] and delays[-1] == REFUSED_BACKOFF[1]
    message = after_failure(REVOKED, CRT, VALID, NOW, Backoff()).message
    assert "refuses to renew /etc/ssl/svc.crt" in message and "was revoked" in message
    assert "hsmca certificate" in message and "picks it up" in message


def test_a_refusal_shortly_before_expiry_asks_again_before_it_but_never_within_a_minute():
    soon = cert(KEY, NOW - timedelta(hours=2), NOW + timedelta(minutes=20))
    assert after_failure(REVOKED, CRT, soon, NOW, Backoff(refused=3600)).delay == 300
    last = cert(KEY, NOW - timedelta(hours=2), NOW + timedelta(seconds=30))
    assert after_failure(REVOKED, CRT, last, NOW, Backoff(refused=3600)).delay == REFUSED_BACKOFF[0]


def test_the_two_backoffs_are_independent():
    retry = after_failure(REVOKED, CRT, VALID, NOW, Backoff(transient=16, refused=240))
    assert retry.backoff == Backoff(transient=16, refused=480)
    retry = after_failure(UNREACHABLE, CRT, VALID, NOW, Backoff(transient=16, refused=240))
    assert retry.backoff == Backoff(transient=32, refused=240)


@pytest.mark.parametrize("status", [401, 403])
def test_an_expired_certificate_the_ca_refuses_ends_the_daemon(status: int):
    exc = ClientError(f"the CA refused POST /renew ({status}): certificate 7 expired at ...", status)
    with pytest.raises(CannotRenew) as raised:
        after_failure(exc, CRT, EXPIRED, NOW, Backoff())
    message = str(raised.value)
    assert "expired at" in message and "refuses to renew it" in message and f"({status})" in message
    assert "hsmca certificate" in message and "start the renewal daemon again" in message


# --- rekey helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize("current, given, expected", [
    (ec.generate_private_key(ec.SECP384R1()), (None, None, None), ("EC", "P-384", None)),
    (ec.generate_private_key(ec.SECP256R1()), ("ec", "P-521", None), ("EC", "P-521", None)),
    (rsa.generate_private_key(65537, 3072), (None, None, None), ("RSA", None, 3072)),
    (rsa.generate_private_key(65537, 2048), ("RSA", None, 4096), ("RSA", None, 4096)),
    (ed25519.Ed25519PrivateKey.generate(), (None, None, None), ("OKP", "Ed25519", None)),
    (ec.generate_private_key(ec.SECP384R1()), ("RSA", None, None), ("RSA", None, None)),
    (rsa.generate_private_key(65537, 2048), ("EC", None, None), ("EC", None, None)),
])
def test_the_new_key_is_of_the_current_kind_unless_told(current: LeafKey, given: tuple[str | None, str | None,
                                                        int | None], expected: tuple[str, str | None, int | None]):
    assert key_options_like(current, *given) == expected


def test_the_rekey_csr_names_exactly_what_the_certificate_names():
    new_key = ed25519.Ed25519PrivateKey.generate()
    csr = rekey_csr(VALID, new_key)
    assert csr.is_signature_valid and csr.subject == VALID.subject and csr.public_key() == new_key.public_key()
    san = x509.SubjectAlternativeName
    assert (csr.extensions.get_extension_for_class(san).value == VALID.extensions.get_extension_for_class(san).value)


def pem_key(key: LeafKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_cert(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def pair(tmp_path: Path) -> RekeyFiles:
    crt, key = tmp_path / "svc.crt", tmp_path / "svc.key"
    crt.write_bytes(pem_cert(VALID))
    key.write_bytes(pem_key(KEY))
    return RekeyFiles(crt, key, crt, key)


def test_a_rekey_that_died_between_the_renames_is_finished(pair: RekeyFiles):
    new_key = ec.generate_private_key(ec.SECP256R1())
    new = cert(new_key, NOW, NOW + timedelta(hours=24))
    pair.key.write_bytes(pem_key(new_key))  # step 3 done: the new key is in place
    pair.staged_crt.write_bytes(pem_cert(new))  # step 4 not: the new certificate is still staged
    assert finish_interrupted_rekey(pair) == [new]
    assert pair.crt.read_bytes() == pem_cert(new) and not pair.staged_crt.exists()


def test_a_rekey_that_died_before_the_renames_is_finished_with_the_staged_key(pair: RekeyFiles):
    new_key = ec.generate_private_key(ec.SECP256R1())
    new = cert(new_key, NOW, NOW + timedelta(hours=24))
    pair.staged_key.write_bytes(pem_key(new_key))
    pair.staged_crt.write_bytes(pem_cert(new))
    assert finish_interrupted_rekey(pair) == [new]
    assert pair.key.read_bytes() == pem_key(new_key) and pair.crt.read_bytes() == pem_cert(new)


def test_stale_staged_files_are_left_for_the_next_rekey_to_overwrite(pair: RekeyFiles):
    assert finish_interrupted_rekey(pair) is None  # nothing staged
    pair.staged_key.write_bytes(pem_key(ec.generate_private_key(ec.SECP256R1())))  # died before the CA answered
    assert finish_interrupted_rekey(pair) is None
    pair.staged_crt.write_bytes(pem_cert(cert(ec.generate_private_key(ec.SECP256R1()), NOW, NOW + timedelta(1))))
    assert finish_interrupted_rekey(pair) is None  # a certificate for neither key: never installed
    assert pair.crt.read_bytes() == pem_cert(VALID) and pair.key.read_bytes() == pem_key(KEY)
    pair.staged_crt.write_text("garbage")
    assert finish_interrupted_rekey(pair) is None
