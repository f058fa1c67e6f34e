"""The CA proper: build a leaf from a decided profile and have the KMS sign it, recorded first.

Order matters (Boulder's rule): the serial and the to-be-signed body are handed to the caller's `record`
*before* the HSM is asked for a signature, so a crash at any point leaves at worst a reservation whose TBS
is on record, never a signed certificate the CA does not know about. The certificate is built once: the
recording happens inside the signing call, on exactly the bytes the KMS then signs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from appliance import metrics
from appliance.ca import tbs
from appliance.ca.failpoints import failpoint
from appliance.ca.urls import CertificateURLs, for_issuer
from appliance.certutil import verify_signature
from appliance.errors import CAError, ServiceUnavailable
from appliance.names import RequestedNames
from kms import default_hash
from kms.cacerts import new_serial
from kms.errors import BackendUnavailable, KMSError
from kms.signer import CAKey


@dataclass(frozen=True)
class LeafProfile:
    """What policy decided the certificate holds; the issuer adds nothing a client chose."""

    common_name: str
    public_key: CertificatePublicKeyTypes
    not_before: datetime
    not_after: datetime
    names: RequestedNames = RequestedNames()
    ext_key_usage: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.SERVER_AUTH,
                                                        ExtendedKeyUsageOID.CLIENT_AUTH)
    key_usage: x509.KeyUsage | None = None  # None: what fits the key type (see key_usage)
    subject_extra: tuple[x509.NameAttribute, ...] = ()  # attributes before the CN (a template's)
    extra_extensions: tuple[x509.Extension[x509.ExtensionType], ...] = field(default=())

    def subject(self) -> x509.Name:
        cn = [x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)] if self.common_name else []
        return x509.Name([*self.subject_extra, *cn])

    def subject_text(self) -> str:
        return self.subject().rfc4514_string()


Record = Callable[[int, bytes], None]


KEY_USAGE_FIELDS = {"digitalSignature": "digital_signature", "contentCommitment": "content_commitment",
                    "keyEncipherment": "key_encipherment", "dataEncipherment": "data_encipherment",
                    "keyAgreement": "key_agreement", "encipherOnly": "encipher_only", "decipherOnly": "decipher_only"}


def key_usage(public_key: object, names: tuple[str, ...] | None = None) -> x509.KeyUsage:
    """The named usages (RFC 5280 names; ValueError for a combination X.509 forbids), by default
    digitalSignature, plus keyEncipherment where RSA key transport is possible (RFC 5280 §4.2.1.3)."""
    if names is None:
        names = ("digitalSignature", "keyEncipherment") if isinstance(public_key, rsa.RSAPublicKey) \
            else ("digitalSignature",)
    unknown = set(names) - set(KEY_USAGE_FIELDS)
    if unknown:
        raise ValueError(f"unknown key usage {sorted(unknown)}; known: {sorted(KEY_USAGE_FIELDS)}")
    flags = {field: name in names for name, field in KEY_USAGE_FIELDS.items()}
    return x509.KeyUsage(key_cert_sign=False, crl_sign=False, **flags)


class Issuer:
    """One intermediate: its KMS key adapter and its certificate."""

    def __init__(self, key: CAKey, certificate: x509.Certificate, *, issuer_id: str | None = None,
                 chain: Sequence[x509.Certificate] = (), urls: CertificateURLs | None = None):
        self.key = key
        self.certificate = certificate
        self.chain = (certificate, *chain)  # what follows a leaf it signs: itself, then any cross-certificate
        self.hash = default_hash(key)
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self.id = issuer_id or ski.digest.hex()
        self._url_extensions = _url_extensions(for_issuer(urls, self.id)) if urls else ()

    def _builder(self, p: LeafProfile, serial: int) -> x509.CertificateBuilder:
        b = (x509.CertificateBuilder()
             .subject_name(p.subject())
             .issuer_name(self.certificate.subject)
             .public_key(p.public_key)
             .serial_number(serial)
             .not_valid_before(p.not_before)
             .not_valid_after(p.not_after)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(p.key_usage or key_usage(p.public_key), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(p.public_key), critical=False)
             .add_extension(self._aki, critical=False))
        if p.ext_key_usage:
            b = b.add_extension(x509.ExtendedKeyUsage(list(p.ext_key_usage)), critical=False)
        names = p.names.general_names()
        if names:
            # An empty subject needs a critical SAN (RFC 5280 §4.2.1.6).
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=not p.common_name)
        for value in self._url_extensions:
            b = b.add_extension(value, critical=False)
        for ext in p.extra_extensions:
            b = b.add_extension(ext.value, critical=ext.critical)
        return b

    def record_and_sign(self, profile: LeafProfile, record: Record) -> x509.Certificate:
        """Build the certificate once; hand `record` its serial and to-be-signed bytes before the KMS is
        asked (Boulder's rule: nothing is signed that is not on record), then sign exactly those bytes.

        `record` raising stops everything before any signature. The signature is verified before the
        certificate is returned (a faulty signer is caught here); a signing failure is a CAError (503 when
        the backend is unavailable) and what was recorded stays recorded for the caller to abandon.
        """
        serial = new_serial()
        builder = self._builder(profile, serial)
        backend = metrics.backend_of(self.key)

        def on_sign(data: bytes, real: Callable[[], bytes]) -> bytes:
            record(serial, data)
            failpoint("issuer.before-sign")
            return metrics.timed_signature(backend, real)

        try:
            cert = builder.sign(tbs.proxy(self.key, on_sign), self.hash)
            verify_signature(self.key.public_key(), cert.signature, cert.tbs_certificate_bytes,
                             cert.signature_hash_algorithm, cert.signature_algorithm_parameters)
        except BackendUnavailable as exc:
            raise ServiceUnavailable(f"signing backend unavailable: {exc}") from None
        except (KMSError, InvalidSignature) as exc:
            if isinstance(exc, InvalidSignature):
                metrics.signature_rejected(backend)
            raise CAError(f"signing failed: {exc}") from None
        failpoint("issuer.after-sign")
        return cert


def _url_extensions(urls: CertificateURLs) -> tuple[x509.ExtensionType, ...]:
    """CRL distribution point and AIA (OCSP, caIssuers), built once per intermediate."""
    out: list[x509.ExtensionType] = []
    if urls.crl:
        out.append(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(urls.crl)], relative_name=None, reasons=None,
            crl_issuer=None)]))
    access = [x509.AccessDescription(oid, x509.UniformResourceIdentifier(url)) for oid, url in (
        (AuthorityInformationAccessOID.OCSP, urls.ocsp),
        (AuthorityInformationAccessOID.CA_ISSUERS, urls.ca_issuers)) if url]
    if access:
        out.append(x509.AuthorityInformationAccess(access))
    return tuple(out)
