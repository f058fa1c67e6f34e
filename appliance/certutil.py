"""Small certificate helpers shared by the server, `init` and the client commands."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.x509 import ocsp


class CertificateFileError(Exception):
    """A certificate file is missing or holds no PEM certificate."""


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(Path(path).read_bytes())
    except OSError as exc:
        raise CertificateFileError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise CertificateFileError(f"{path} holds no valid PEM certificate: {exc}") from None
    return certs


def parse_certificates(data: bytes) -> list[x509.Certificate]:
    """PEM (one or more) or a single DER certificate; ValueError when it is neither."""
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the DER, as step prints and `/root/{sha256}` expects."""
    return cert.fingerprint(hashes.SHA256()).hex()


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def verify_signature(public: object, signature: bytes, data: bytes, algorithm: hashes.HashAlgorithm | None,
                     parameters: object) -> None:
    """InvalidSignature unless `signature` is the issuer key's over `data` (ECDSA, RSA PKCS#1/PSS, Ed25519)."""
    if isinstance(public, ec.EllipticCurvePublicKey) and algorithm is not None:
        public.verify(signature, data, ec.ECDSA(algorithm))
    elif isinstance(public, rsa.RSAPublicKey) and algorithm is not None:
        pad = parameters if isinstance(parameters, padding.PSS) else padding.PKCS1v15()
        public.verify(signature, data, pad, algorithm)
    elif isinstance(public, ed25519.Ed25519PublicKey):
        public.verify(signature, data)
    else:
        raise InvalidSignature(f"cannot check a signature by a {type(public).__name__}")


def read_extensions(obj: x509.Certificate | x509.CertificateSigningRequest | ocsp.OCSPRequest) -> x509.Extensions:
    """The extensions of a certificate, CSR or OCSP request that came from outside; ValueError saying why when
    they cannot be read (cryptography's DuplicateExtension, for an OID present twice, is not a ValueError)."""
    try:
        return obj.extensions
    except x509.DuplicateExtension as exc:
        raise ValueError(f"extension {exc.oid.dotted_string} appears twice") from None


def der(tag: int, body: bytes) -> bytes:
    """A DER TLV with a definite length of any size. (Hand-written: cryptography has no DER writer; the CRL
    entries, the lint's wrapper and the templates' ASN.1 values need only this.)"""
    n = len(body)
    if n < 0x80:
        return bytes((tag, n)) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((tag, 0x80 | len(size))) + size + body


_NAME_PREFIX: dict[type, str] = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email",
                                 x509.UniformResourceIdentifier: "URI"}


def general_name_text(name: x509.GeneralName) -> str:
    """openssl's spelling (`DNS:a.example`, `URI:http://…`), for people: error messages and `hsmca inspect`."""
    prefix = _NAME_PREFIX.get(type(name))
    if prefix is not None:
        return f"{prefix}:{name.value}"
    if isinstance(name, x509.DirectoryName):
        return f"dirName:{name.value.rfc4514_string()}"
    if isinstance(name, x509.RegisteredID):
        return f"RID:{name.value.dotted_string}"
    if isinstance(name, x509.OtherName):
        return f"othername:{name.type_id.dotted_string}"
    return repr(name)
