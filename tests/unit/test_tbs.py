"""The capture/guard pair that lets the CA record a TBS before the key signs it."""

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from appliance.ca import tbs


class CountingKey(ec.EllipticCurvePrivateKey):
    """A software key that counts signatures (to show capture never signs)."""

    def __init__(self):
        self.inner = ec.generate_private_key(ec.SECP256R1())
        self.calls = 0

    def sign(self, data, alg):
        self.calls += 1
        return self.inner.sign(data, alg)

    def public_key(self):
        return self.inner.public_key()

    curve = property(lambda s: s.inner.curve)
    key_size = property(lambda s: s.inner.key_size)
    exchange = private_numbers = private_bytes = lambda *a: None

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


def _builder(key, serial=7):
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(timezone.utc)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(serial).not_valid_before(now).not_valid_after(now + timedelta(hours=1)))


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP384R1()),
                                  lambda: rsa.generate_private_key(65537, 2048),
                                  ed25519.Ed25519PrivateKey.generate])
def test_capture_then_guarded_sign_gives_the_recorded_tbs(make):
    key = make()
    alg = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    b = _builder(key)
    recorded = tbs.capture(key, lambda k: b.sign(k, alg))
    cert = b.sign(tbs.guarded(key, recorded), alg)
    assert cert.tbs_certificate_bytes == recorded


def test_capture_never_calls_the_real_key_and_guard_refuses_other_bytes():
    key = CountingKey()
    recorded = tbs.capture(key, lambda k: _builder(key).sign(k, hashes.SHA256()))
    assert key.calls == 0
    with pytest.raises(tbs.TBSMismatch):
        _builder(key, serial=8).sign(tbs.guarded(key, recorded), hashes.SHA256())
    assert key.calls == 0
    _builder(key).sign(tbs.guarded(key, recorded), hashes.SHA256())
    assert key.calls == 1
