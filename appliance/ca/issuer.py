"""The CA proper: build a leaf from a decided profile, record it, have the KMS sign it.

Order matters (Boulder's rule): the serial and the to-be-signed body are stored *before* the HSM
is asked for a signature, so a crash at any point leaves at worst a reservation whose TBS is on
record, never a signed certificate the CA does not know about.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from appliance import metrics
from appliance.ca import tbs
from appliance.ca.failpoints import failpoint
from appliance.ca.urls import CertificateURLs, for_issuer
from appliance.errors import CAError, ServiceUnavailable, Unauthorized
from appliance.names import RequestedNames
from appliance.store import OneTimeToken, Reservation, Store, StoreError, TokenReplayed
from kms import default_hash
from kms.cacerts import new_serial
from kms.errors import BackendUnavailable, KMSError
from kms.signer import CAKey

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LeafProfile:
    """What policy decided the certificate holds; the issuer adds nothing a client chose."""

    common_name: str
    public_key: CertificatePublicKeyTypes
    not_before: datetime
    not_after: datetime
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[IPAddress, ...] = ()
    emails: tuple[str, ...] = ()
    uris: tuple[str, ...] = ()
    server_auth: bool = True
    client_auth: bool = True
    extra_extensions: tuple[x509.Extension[x509.ExtensionType], ...] = field(default=())

    def san_strings(self) -> list[str]:
        return RequestedNames(self.dns_names, self.ip_addresses, self.emails, self.uris).as_strings()


def _key_usage(public_key: object) -> x509.KeyUsage:
    # keyEncipherment only where RSA key transport is possible (RFC 5280 §4.2.1.3).
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                         crl_sign=False, encipher_only=False, decipher_only=False)


def _general_names(p: LeafProfile) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in p.dns_names]
    names += [x509.IPAddress(i) for i in p.ip_addresses]
    names += [x509.RFC822Name(e) for e in p.emails]
    names += [x509.UniformResourceIdentifier(u) for u in p.uris]
    return names


class Issuer:
    """One intermediate: its KMS key adapter, its certificate, and the store it records into."""

    def __init__(self, key: CAKey, certificate: x509.Certificate, store: Store, *, issuer_id: str | None = None,
                 chain: Sequence[x509.Certificate] = (), urls: CertificateURLs | None = None):
        self.key = key
        self.certificate = certificate
        self.chain = (certificate, *chain)  # what follows a leaf it signs: itself, then any cross-certificate
        self.store = store
        self.hash = default_hash(key)
        ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self.id = issuer_id or ski.digest.hex()
        self._url_extensions = _url_extensions(for_issuer(urls, self.id)) if urls else ()

    def _builder(self, p: LeafProfile, serial: int) -> x509.CertificateBuilder:
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, p.common_name)]) \
            if p.common_name else x509.Name([])
        ekus = ([ExtendedKeyUsageOID.SERVER_AUTH] if p.server_auth else []) + \
               ([ExtendedKeyUsageOID.CLIENT_AUTH] if p.client_auth else [])
        b = (x509.CertificateBuilder()
             .subject_name(subject)
             .issuer_name(self.certificate.subject)
             .public_key(p.public_key)
             .serial_number(serial)
             .not_valid_before(p.not_before)
             .not_valid_after(p.not_after)
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(_key_usage(p.public_key), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(p.public_key), critical=False)
             .add_extension(self._aki, critical=False))
        if ekus:
            b = b.add_extension(x509.ExtendedKeyUsage(ekus), critical=False)
        names = _general_names(p)
        if names:
            # An empty subject needs a critical SAN (RFC 5280 §4.2.1.6).
            b = b.add_extension(x509.SubjectAlternativeName(names), critical=not p.common_name)
        for value in self._url_extensions:
            b = b.add_extension(value, critical=False)
        for ext in p.extra_extensions:
            b = b.add_extension(ext.value, critical=ext.critical)
        return b

    def issue(self, p: LeafProfile, *, provisioner: str, request_id: str | None,
              token: OneTimeToken | None = None) -> x509.Certificate:
        """Reserve (burning `token` in the same transaction), sign through the KMS, record."""
        serial = new_serial()
        builder = self._builder(p, serial)
        to_be_signed = tbs.capture(self.key, lambda k: builder.sign(k, self.hash))
        try:
            self.store.certificates.reserve(Reservation(
                serial=serial, issuer=self.id, subject=builder_subject(p), sans=p.san_strings(),
                not_before=p.not_before, not_after=p.not_after, provisioner=provisioner,
                tbs=to_be_signed, request_id=request_id), token)
        except TokenReplayed:
            raise Unauthorized("token already used (one-time tokens cannot be replayed)") from None
        except StoreError as exc:
            raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None

        failpoint("issuer.before-sign")
        try:
            cert = builder.sign(tbs.guarded(self.key, to_be_signed), self.hash)
            self._check_signature(cert)
        except BackendUnavailable as exc:
            self._abandon(serial, f"signing backend unavailable: {exc}")
            raise ServiceUnavailable(f"signing backend unavailable: {exc}") from None
        except (KMSError, tbs.TBSMismatch, InvalidSignature) as exc:
            if isinstance(exc, InvalidSignature):
                metrics.signature_rejected(metrics.backend_of(self.key))
            self._abandon(serial, f"signing failed: {exc}")
            raise CAError(f"signing failed: {exc}") from None
        failpoint("issuer.after-sign")
        try:
            self.store.certificates.mark_issued(serial, cert.public_bytes(Encoding.DER))
        except StoreError as exc:
            # Signed but not marked issued: the certificate is never handed out, and the
            # reservation (with its TBS) is resolved by the housekeeping sweep.
            raise ServiceUnavailable(f"certificate database unavailable: {exc}") from None
        metrics.certificate_issued(provisioner)
        return cert

    def _check_signature(self, cert: x509.Certificate) -> None:
        """Verify what the HSM returned before anyone sees it (a faulty signer is caught here)."""
        pub = self.key.public_key()
        data, sig, alg = cert.tbs_certificate_bytes, cert.signature, cert.signature_hash_algorithm
        if isinstance(pub, ec.EllipticCurvePublicKey):
            assert alg is not None
            pub.verify(sig, data, ec.ECDSA(alg))
        elif isinstance(pub, rsa.RSAPublicKey):
            pad = cert.signature_algorithm_parameters
            assert alg is not None
            pub.verify(sig, data, pad if isinstance(pad, padding.PSS) else padding.PKCS1v15(), alg)
        elif isinstance(pub, ed25519.Ed25519PublicKey):
            pub.verify(sig, data)

    def _abandon(self, serial: int, reason: str) -> None:
        try:
            self.store.certificates.mark_abandoned(serial, reason)
        except StoreError:
            log.warning("could not mark reservation %s abandoned; the sweep will", serial)


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


def builder_subject(p: LeafProfile) -> str:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, p.common_name)]).rfc4514_string() \
        if p.common_name else ""

