"""CA certificate profiles (RFC 5280): the root and the intermediates, signed through a CA key.

They live in kms/ because the offline ceremony makes the same certificates as `hsmca init`, and
the ceremony may import kms/ but never the online service.
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ObjectIdentifier

from kms.signer import CAKey, default_hash, spki_der

CAPublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey


KEY_USAGES = ("digitalSignature", "keyCertSign", "cRLSign")


@dataclass(frozen=True)
class CAProfile:
    """What a CA certificate carries beyond its key and names (RFC 5280 §4.2).

    The ceremony plan fills one in; `hsmca init` uses the defaults. `digitalSignature` is in the
    default key usages so the CA can sign OCSP responses itself; a plan may leave it out.
    """

    path_length: int | None = 0
    key_usage: Sequence[str] = KEY_USAGES
    name_constraints: x509.NameConstraints | None = None
    name_constraints_critical: bool = True
    crl_urls: Sequence[str] = ()
    ocsp_urls: Sequence[str] = ()
    ca_issuers_urls: Sequence[str] = ()
    ext_key_usage: Sequence[ObjectIdentifier] = ()

    def __post_init__(self) -> None:
        unknown = set(self.key_usage) - set(KEY_USAGES)
        if unknown:
            raise ValueError(f"key usages {sorted(unknown)} do not belong on a CA certificate; "
                             f"choose from {', '.join(KEY_USAGES)}")
        if "keyCertSign" not in self.key_usage:
            raise ValueError("a CA certificate needs the keyCertSign key usage")
        if self.path_length is not None and self.path_length < 0:
            raise ValueError("path length cannot be negative")


def new_serial() -> int:
    """A random positive 128-bit serial (RFC 5280 §4.1.2.2; CA/B BR want ≥ 64 random bits)."""
    serial = 0
    while serial == 0:
        serial = secrets.randbits(128)
    return serial


def root_certificate(key: CAKey, subject: x509.Name, not_before: datetime.datetime,
                     not_after: datetime.datetime, *, path_length: int | None = 1,
                     profile: CAProfile | None = None) -> x509.Certificate:
    """A self-signed root for `key` (signed through it, so inside the HSM).

    `profile`, when given, decides the extensions (and its path length wins over `path_length`).
    """
    _check_validity(not_before, not_after)
    profile = profile or CAProfile(path_length=path_length)
    public = key.public_key()
    ski = x509.SubjectKeyIdentifier.from_public_key(public)
    aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    builder = _ca_builder(subject, subject, public, not_before, not_after, profile, ski) \
        .add_extension(aki, critical=False)
    return builder.sign(key, default_hash(key))


def intermediate_certificate(issuer_key: CAKey, issuer_cert: x509.Certificate, public_key: CAPublicKey,
                             subject: x509.Name, not_before: datetime.datetime,
                             not_after: datetime.datetime, *,
                             path_length: int | None = 0,
                             profile: CAProfile | None = None) -> x509.Certificate:
    """A CA certificate for `public_key`, issued by `issuer_cert` and signed through `issuer_key`.

    Refuses what would make a chain that validators reject: an issuer key that is not the
    certificate's, an issuer that is no CA, a path length it does not allow, a validity it
    does not cover.
    """
    _check_validity(not_before, not_after)
    profile = profile or CAProfile(path_length=path_length)
    path_length = profile.path_length
    if spki_der(issuer_key.public_key()) != spki_der(issuer_cert.public_key()):
        raise ValueError("the issuer key does not belong to the issuer certificate")
    try:
        bc = issuer_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("the issuer certificate has no BasicConstraints: it is not a CA") from None
    if not bc.ca:
        raise ValueError("the issuer certificate is not a CA certificate")
    if bc.path_length is not None and (path_length is None or path_length >= bc.path_length):
        raise ValueError(f"the issuer allows path length {bc.path_length}; an intermediate "
                         f"under it needs path_length < {bc.path_length}, not {path_length}")
    # Certificates keep whole seconds; compare as they will be written.
    if not_before.replace(microsecond=0) < issuer_cert.not_valid_before_utc \
            or not_after.replace(microsecond=0) > issuer_cert.not_valid_after_utc:
        raise ValueError("the intermediate's validity must lie within the issuer's "
                         f"({issuer_cert.not_valid_before_utc} to {issuer_cert.not_valid_after_utc})")
    try:
        issuer_ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        issuer_ski = x509.SubjectKeyIdentifier.from_public_key(issuer_cert.public_key())
    ski = x509.SubjectKeyIdentifier.from_public_key(public_key)
    builder = _ca_builder(subject, issuer_cert.subject, public_key, not_before, not_after,
                          profile, ski) \
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
                       critical=False)
    return builder.sign(issuer_key, default_hash(issuer_key))


def _ca_builder(subject: x509.Name, issuer: x509.Name, public_key: CAPublicKey,
                not_before: datetime.datetime, not_after: datetime.datetime,
                profile: CAProfile, ski: x509.SubjectKeyIdentifier) -> x509.CertificateBuilder:
    usages = set(profile.key_usage)
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer)
               .public_key(public_key)
               .serial_number(new_serial())
               .not_valid_before(not_before)
               .not_valid_after(not_after)
               .add_extension(x509.BasicConstraints(ca=True, path_length=profile.path_length), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature="digitalSignature" in usages,
                   content_commitment=False, key_encipherment=False, data_encipherment=False,
                   key_agreement=False, key_cert_sign=True, crl_sign="cRLSign" in usages,
                   encipher_only=False, decipher_only=False), critical=True)
               .add_extension(ski, critical=False))
    if profile.name_constraints is not None:
        builder = builder.add_extension(profile.name_constraints, critical=profile.name_constraints_critical)
    if profile.crl_urls:
        builder = builder.add_extension(x509.CRLDistributionPoints([
            x509.DistributionPoint([x509.UniformResourceIdentifier(u) for u in profile.crl_urls],
                                   relative_name=None, reasons=None, crl_issuer=None)]), critical=False)
    access = [x509.AccessDescription(AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(u))
              for u in profile.ocsp_urls]
    access += [x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS, x509.UniformResourceIdentifier(u))
               for u in profile.ca_issuers_urls]
    if access:
        builder = builder.add_extension(x509.AuthorityInformationAccess(access), critical=False)
    if profile.ext_key_usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(profile.ext_key_usage)), critical=False)
    return builder


def _check_validity(not_before: datetime.datetime, not_after: datetime.datetime) -> None:
    if not_before.tzinfo is None or not_after.tzinfo is None:
        raise ValueError("validity datetimes must be timezone-aware (UTC)")
    if not_after <= not_before:
        raise ValueError("not_after must be later than not_before")

