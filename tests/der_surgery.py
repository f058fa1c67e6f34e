"""DER that no well-behaved library writes, for the tests that try what an attacker would send.

cryptography refuses to build a CSR or OCSP request with an extension twice, or a certificate whose key or
extension it cannot read, so these take a well-formed structure apart and put it back together wrong.
(Hand-written for the tests: just enough DER to do that.)
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

SEQUENCE, CONTEXT_0, CONTEXT_2, BIT_STRING, OID = 0x30, 0xA0, 0xA2, 0x03, 0x06


def tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    if n < 0x80:
        return bytes([tag, n]) + body
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + body


def split(der: bytes) -> list[tuple[int, bytes]]:
    """The (tag, body) of each element in a run of DER elements."""
    out = []
    while der:
        tag, first = der[0], der[1]
        if first < 0x80:
            start, n = 2, first
        else:
            k = first & 0x7F
            start, n = 2 + k, int.from_bytes(der[2:2 + k], "big")
        out.append((tag, der[start:start + n]))
        der = der[start + n:]
    return out


def join(parts: list[tuple[int, bytes]]) -> bytes:
    return b"".join(tlv(t, b) for t, b in parts)


def csr_with_a_duplicate_extension(name: str, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A CSR for `name` whose extension request holds its SAN twice, correctly signed (DER)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
           .sign(key, hashes.SHA256()))
    [(_, request)] = split(csr.public_bytes(serialization.Encoding.DER))
    info, algorithm, _signature = split(request)
    version, subject, spki, (attr_tag, attributes) = split(info[1])
    [(_, attribute)] = split(attributes)
    oid, (set_tag, values) = split(attribute)
    [(_, extensions)] = split(values)
    doubled = extensions + extensions
    attribute = join([oid, (set_tag, tlv(SEQUENCE, doubled))])
    new_info = tlv(SEQUENCE, join([version, subject, spki, (attr_tag, tlv(SEQUENCE, attribute))]))
    signature = key.sign(new_info, ec.ECDSA(hashes.SHA256()))
    return tlv(SEQUENCE, new_info + join([algorithm]) + tlv(BIT_STRING, b"\x00" + signature))


def csr_pem(der: bytes) -> str:
    import base64

    body = base64.encodebytes(der).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


def ocsp_request_with_two_nonces(cert: x509.Certificate, issuer: x509.Certificate) -> bytes:
    """An OCSP request for `cert` carrying the nonce extension twice."""
    der = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
           .add_extension(x509.OCSPNonce(b"n" * 16), critical=False).build()
           .public_bytes(serialization.Encoding.DER))
    [(_, request)] = split(der)
    [(_, tbs)] = split(request)
    request_list, (ext_tag, wrapped) = split(tbs)
    [(_, extensions)] = split(wrapped)
    tbs = join([request_list, (ext_tag, tlv(SEQUENCE, extensions + extensions))])
    return tlv(SEQUENCE, tlv(SEQUENCE, tbs))


def with_unknown_key_algorithm(cert: x509.Certificate) -> bytes:
    """`cert` (an EC key) with its key's algorithm OID changed to one no library knows, same length (its
    signature no longer verifies; the tests using it are refused before that matters)."""
    ec_public_key = tlv(OID, bytes.fromhex("2a8648ce3d0201"))  # 1.2.840.10045.2.1
    unknown = tlv(OID, bytes.fromhex("2a8648ce3d0209"))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert ec_public_key in der
    return der.replace(ec_public_key, unknown, 1)


def with_garbled_san(cert: x509.Certificate) -> bytes:
    """`cert` with its SubjectAlternativeName's value replaced by bytes that are not a GeneralNames."""
    san_oid = tlv(OID, bytes([0x55, 0x1D, 0x11]))
    der = cert.public_bytes(serialization.Encoding.DER)
    at = der.index(san_oid)
    # The extension is SEQUENCE { OID, [BOOLEAN], OCTET STRING { GeneralNames } }: keep its length, spoil the inside.
    start = der.index(b"\x04", at + len(san_oid)) + 2
    return der[:start] + b"\x01\x01\xff" + b"\x00" * (der[start - 1] - 3) + der[start + der[start - 1]:]
