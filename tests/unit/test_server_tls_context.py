"""ServerContext: one SSLContext per worker, rebuilt when the files are replaced, never from a torn pair."""

from __future__ import annotations

import ssl
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.atomic_file import write_atomically
from appliance.config import TLSOptions
from appliance.serving.tls import ServerContext, renewal_due


def self_signed(name: str) -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(minutes=2)).sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def test_context_is_cached_reloaded_and_never_built_from_a_torn_pair(tmp_path: Path):
    crt, key = tmp_path / "server.crt", tmp_path / "server.key"
    first_crt, first_key = self_signed("one")
    write_atomically(crt, first_crt, 0o644)
    write_atomically(key, first_key, 0o600)
    ctx = ServerContext(crt, key, crt, TLSOptions())
    first = ctx.get()
    assert ctx.get() is first  # no rebuild per handshake
    assert first.verify_mode == ssl.CERT_OPTIONAL

    second_crt, second_key = self_signed("two")
    write_atomically(key, second_key, 0o600)  # the key is replaced first, as the renewer does
    assert ctx.get() is first  # new key with the old certificate: keep serving the old pair
    write_atomically(crt, second_crt, 0o644)
    second = ctx.get()
    assert second is not first and ctx.get() is second
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def test_renewal_is_due_at_two_thirds_of_the_lifetime(tmp_path: Path):
    crt = tmp_path / "server.crt"
    pem, _ = self_signed("due")
    crt.write_bytes(pem)
    cert = x509.load_pem_x509_certificate(pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    assert renewal_due(crt) == start + (end - start) * 2 / 3
    assert renewal_due(tmp_path / "missing.crt") <= datetime.now(timezone.utc)
