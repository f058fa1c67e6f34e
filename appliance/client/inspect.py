"""`hsmca inspect`: what a certificate, a chain or a CSR holds, for people and for scripts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from appliance.certutil import general_name_text


class InspectError(Exception):
    """The file is not a certificate or a CSR (PEM or DER)."""


def _key(public_key: Any) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return f"EC {public_key.curve.name} ({public_key.key_size} bits)"
    if isinstance(public_key, rsa.RSAPublicKey):
        return f"RSA {public_key.key_size} bits"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    return type(public_key).__name__


def _sans(exts: x509.Extensions) -> list[str]:
    try:
        san = exts.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return ([f"DNS:{v}" for v in san.get_values_for_type(x509.DNSName)]
            + [f"IP:{v}" for v in san.get_values_for_type(x509.IPAddress)]
            + [f"email:{v}" for v in san.get_values_for_type(x509.RFC822Name)]
            + [f"URI:{v}" for v in san.get_values_for_type(x509.UniformResourceIdentifier)])


def _distribution_points(points: x509.CRLDistributionPoints | x509.FreshestCRL) -> str:
    out = []
    for point in points:
        parts = [general_name_text(n) for n in point.full_name or ()]
        if point.relative_name is not None:
            parts.append(f"relativeName:{point.relative_name.rfc4514_string()}")
        if point.reasons:
            parts.append("reasons:" + "|".join(sorted(r.value for r in point.reasons)))
        if point.crl_issuer:
            parts.append("CRLissuer:" + "|".join(general_name_text(n) for n in point.crl_issuer))
        out.append(" ".join(parts))
    return ", ".join(out)


def _access(descriptions: x509.AuthorityInformationAccess | x509.SubjectInformationAccess) -> str:
    return ", ".join(f"{_oid_name(d.access_method)} - {general_name_text(d.access_location)}" for d in descriptions)


def _oid_name(oid: x509.ObjectIdentifier) -> str:
    return oid._name if oid._name != "Unknown OID" else oid.dotted_string


def _extensions(exts: x509.Extensions) -> dict[str, str]:
    out: dict[str, str] = {}
    for ext in exts:
        name = _oid_name(ext.oid)
        v: Any = ext.value
        if isinstance(v, x509.KeyUsage):
            text = ", ".join(k for k in ("digital_signature", "content_commitment", "key_encipherment",
                                         "data_encipherment", "key_agreement", "key_cert_sign", "crl_sign")
                             if getattr(v, k))
        elif isinstance(v, x509.ExtendedKeyUsage):
            text = ", ".join(o._name for o in v)
        elif isinstance(v, x509.BasicConstraints):
            text = f"CA:{str(v.ca).upper()}" + (f", pathlen:{v.path_length}" if v.path_length is not None else "")
        elif isinstance(v, x509.SubjectKeyIdentifier):
            text = v.digest.hex(":")
        elif isinstance(v, x509.AuthorityKeyIdentifier):
            text = (v.key_identifier or b"").hex(":")
        elif isinstance(v, x509.SubjectAlternativeName):
            text = ", ".join(_sans(exts))
        elif isinstance(v, (x509.CRLDistributionPoints, x509.FreshestCRL)):
            text = _distribution_points(v)
        elif isinstance(v, (x509.AuthorityInformationAccess, x509.SubjectInformationAccess)):
            text = _access(v)
        else:
            text = repr(v)
        out[name] = text + (" (critical)" if ext.critical else "")
    return out


def describe_certificate(cert: x509.Certificate) -> dict[str, Any]:
    return {
        "kind": "certificate",
        "serial": str(cert.serial_number),
        "serialHex": format(cert.serial_number, "x"),
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "notBefore": cert.not_valid_before_utc.isoformat(),
        "notAfter": cert.not_valid_after_utc.isoformat(),
        "publicKey": _key(cert.public_key()),
        "signatureAlgorithm": cert.signature_algorithm_oid._name,
        "sans": _sans(cert.extensions),
        "extensions": _extensions(cert.extensions),
        "sha256": cert.fingerprint(hashes.SHA256()).hex(),
    }


def describe_csr(csr: x509.CertificateSigningRequest) -> dict[str, Any]:
    return {
        "kind": "certificate request",
        "subject": csr.subject.rfc4514_string(),
        "publicKey": _key(csr.public_key()),
        "signatureValid": csr.is_signature_valid,
        "sans": _sans(csr.extensions),
    }


def load_any(path: Path) -> list[dict[str, Any]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InspectError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return [describe_certificate(c) for c in x509.load_pem_x509_certificates(data)]
        if b"CERTIFICATE REQUEST-----" in data:
            return [describe_csr(x509.load_pem_x509_csr(data))]
    except ValueError as exc:
        raise InspectError(f"{path} holds a malformed PEM block: {exc}") from None
    for loader in (x509.load_der_x509_certificate, x509.load_der_x509_csr):
        try:
            obj = loader(data)
        except ValueError:
            continue
        return [describe_certificate(obj) if isinstance(obj, x509.Certificate) else describe_csr(obj)]
    raise InspectError(f"{path} is not a certificate or a certificate request (PEM or DER)")


def render_text(items: list[dict[str, Any]]) -> str:
    lines: list[str] = []
    for i, item in enumerate(items):
        if len(items) > 1:
            lines.append(f"[{i}] {item['kind']}")
        for key, value in item.items():
            if key == "kind" and len(items) > 1:
                continue
            if isinstance(value, dict):
                lines.append(f"  {key}:")
                lines += [f"    {k}: {v}" for k, v in value.items()]
            elif isinstance(value, list):
                lines.append(f"  {key}: {', '.join(value) if value else '-'}")
            else:
                lines.append(f"  {key}: {value}")
    return "\n".join(lines)
