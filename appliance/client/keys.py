"""Leaf keys and CSRs on the client (software keys: they belong to the service, not the CA)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from appliance.atomic_file import write_atomically
from appliance.names import split_sans

LeafKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
CURVES: dict[str, type[ec.EllipticCurve]] = {"P-256": ec.SECP256R1, "P-384": ec.SECP384R1,
                                             "P-521": ec.SECP521R1}


class KeyOptionError(ValueError):
    """An impossible --kty/--crv/--size combination."""


def generate_key(kty: str, crv: str | None, size: int | None) -> LeafKey:
    kty = kty.upper()
    if kty == "EC":
        curve = crv or "P-256"
        if curve not in CURVES or size:
            raise KeyOptionError(f"--kty EC takes --crv {'|'.join(CURVES)} and no --size")
        return ec.generate_private_key(CURVES[curve]())
    if kty == "RSA":
        if crv:
            raise KeyOptionError("--kty RSA takes --size, not --crv")
        bits = size or 2048
        if bits < 1024 or bits > 8192:
            raise KeyOptionError("--size must be between 1024 and 8192 for RSA")
        return rsa.generate_private_key(public_exponent=65537, key_size=bits)
    if kty == "OKP":
        if (crv or "Ed25519") != "Ed25519" or size:
            raise KeyOptionError("--kty OKP takes --crv Ed25519 only")
        return ed25519.Ed25519PrivateKey.generate()
    raise KeyOptionError(f"unknown --kty {kty!r}: EC, RSA or OKP")


def build_csr(key: LeafKey, subject: str, sans: list[str]) -> x509.CertificateSigningRequest:
    names = split_sans(sans)
    general: list[x509.GeneralName] = [x509.DNSName(d) for d in names.dns]
    general += [x509.IPAddress(ipaddress.ip_address(i)) for i in names.ips]
    general += [x509.RFC822Name(e) for e in names.emails]
    general += [x509.UniformResourceIdentifier(u) for u in names.uris]
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
    if general:
        builder = builder.add_extension(x509.SubjectAlternativeName(general), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def write_private_key(path: Path, key: LeafKey) -> None:
    """PKCS#8 PEM, mode 0600 from the first byte (never world-readable, even briefly)."""
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    write_atomically(path, data, 0o600)
