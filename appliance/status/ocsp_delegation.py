"""Delegated OCSP responders (RFC 6960 §4.2.2.2): a certificate an intermediate issues to a key of its own, with
the OCSPSigning EKU and id-pkix-ocsp-nocheck, so responses need not be signed by the intermediate's key.

The responder key is created and used through kms like every CA key. `ca.json` lists them under
`ocsp.responders` (key URI + certificate file); the responder picks, per intermediate, a listed certificate
that this intermediate issued and that is valid now, and otherwise signs with the intermediate itself.
The certificate is issued through the one pipeline (`Authority.issue_ocsp_responder_certificate`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.certutil import CertificateFileError, load_certificates
from appliance.config import CAConfig
from kms import open_key
from kms.signer import CAKey

log = logging.getLogger(__name__)

PROVISIONER = "hsmca:ocsp-responder"  # how its issuance is recorded and audited


@dataclass(frozen=True)
class Delegate:
    certificate: x509.Certificate
    key_uri: str  # as written in ca.json (merged with kms.uri when opened)


def load_delegates(config: CAConfig) -> list[Delegate]:
    """The responders of ca.json whose certificate file reads; a bad entry is logged and skipped."""
    found = []
    for entry in config.ocsp.responders:
        try:
            cert = load_certificates(config.resolve(entry.certificate))[0]
        except (CertificateFileError, OSError, IndexError) as exc:
            log.error("OCSP responder certificate %s unusable, signing with the intermediate instead: %s",
                      entry.certificate, exc)
            continue
        found.append(Delegate(cert, entry.key))
    return found


def delegate_for(delegates: list[Delegate], issuer: x509.Certificate, now: datetime) -> Delegate | None:
    """A listed responder certificate that `issuer` signed for OCSPSigning and that is valid at `now`."""
    for d in delegates:
        cert = d.certificate
        if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc or cert.issuer != issuer.subject:
            continue
        try:
            cert.verify_directly_issued_by(issuer)
            ekus = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            continue
        if ExtendedKeyUsageOID.OCSP_SIGNING in ekus:
            return d
    return None


def open_delegate_key(config: CAConfig, delegate: Delegate) -> CAKey:
    config.apply_kms_environment()
    return open_key(config.key_uri(delegate.key_uri))
