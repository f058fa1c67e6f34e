"""The issuer records the to-be-signed bytes before the key signs them, in one build (software keys)."""

from datetime import datetime, timedelta, timezone

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from appliance.ca import tbs
from appliance.ca.issuer import Issuer, LeafProfile
from appliance.names import split_sans


class CountingKey(ec.EllipticCurvePrivateKey):
    """A software key that counts signatures (to show a refused record never reaches it)."""

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


def ca_certificate(key) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Intermediate")])
    now = datetime.now(timezone.utc)
    alg = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, alg))


def profile(name: str = "svc.internal") -> LeafProfile:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    return LeafProfile(common_name=name, public_key=ec.generate_private_key(ec.SECP256R1()).public_key(),
                       not_before=now, not_after=now + timedelta(hours=1), names=split_sans([name]))


@pytest.mark.parametrize("make", [lambda: ec.generate_private_key(ec.SECP384R1()),
                                  lambda: rsa.generate_private_key(65537, 2048),
                                  ed25519.Ed25519PrivateKey.generate])
def test_the_recorded_bytes_are_the_signed_certificate_s_tbs(make):
    key = make()
    issuer = Issuer(key, ca_certificate(key))
    seen: list[tuple[int, bytes]] = []
    cert = issuer.record_and_sign(profile(), lambda serial, data: seen.append((serial, data)))
    assert seen == [(cert.serial_number, cert.tbs_certificate_bytes)]
    cert.verify_directly_issued_by(issuer.certificate)


def test_a_refused_record_stops_the_signature():
    key = CountingKey()
    issuer = Issuer(key, ca_certificate(key.inner))
    before = key.calls

    def refuse(serial: int, data: bytes) -> None:
        raise RuntimeError("database down")

    with pytest.raises(RuntimeError, match="database down"):
        issuer.record_and_sign(profile(), refuse)
    assert key.calls == before
    issuer.record_and_sign(profile(), lambda serial, data: None)
    assert key.calls == before + 1


def test_recording_proxy_keeps_what_it_signed():
    key = ec.generate_private_key(ec.SECP256R1())
    seen: list[tuple[bytes, bytes]] = []
    signature = tbs.recording(key, seen).sign(b"data", ec.ECDSA(hashes.SHA256()))
    assert seen == [(b"data", signature)]
    key.public_key().verify(signature, b"data", ec.ECDSA(hashes.SHA256()))
