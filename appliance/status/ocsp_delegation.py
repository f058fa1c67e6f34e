"""Delegated OCSP responders (RFC 6960 §4.2.2.2): a certificate an intermediate issues to a key of its own, with
the OCSPSigning EKU and id-pkix-ocsp-nocheck, so responses need not be signed by the intermediate's key.

The responder key is created and used through kms like every CA key. `ca.json` lists them under
`ocsp.responders` (key URI + certificate file); the responder picks, per intermediate, a listed certificate
that this intermediate issued and that is valid now, and otherwise signs with the intermediate itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.audit import AuditEvent, JsonLinesAudit
from appliance.ca.active import ActiveIssuer
from appliance.ca.issuer import LeafProfile
from appliance.certutil import CertificateFileError, load_certificates
from appliance.config import CAConfig, ConfigError
from appliance.store import IntermediateRecord
from kms import KeySpec, create_key, open_key
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


def issue_responder_certificate(config: CAConfig, issuers: ActiveIssuer, rec: IntermediateRecord, key_uri: str, *,
                                lifetime: timedelta, spec: KeySpec = KeySpec.EC_P256, existing: bool = False,
                                now: datetime | None = None) -> x509.Certificate:
    """Create (or open) the responder key in kms and have the intermediate issue its certificate (recorded)."""
    now = now or datetime.now(UTC)
    if rec.certificate is None:
        raise ConfigError(f"intermediate {rec.name!r} has no certificate yet")
    config.apply_kms_environment()
    full = config.key_uri(key_uri)
    key = open_key(full) if existing else create_key(full, spec)
    issuer = issuers.issuer_for(rec)
    cn = issuer.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    name = f"{cn[0].value!s} OCSP Responder" if cn else "OCSP Responder"
    not_after = min(now + lifetime, issuer.certificate.not_valid_after_utc)
    extensions = (
        x509.Extension(x509.ExtendedKeyUsage.oid, False, x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING])),
        x509.Extension(x509.OCSPNoCheck.oid, False, x509.OCSPNoCheck()),  # relying parties do not check it
    )
    profile = LeafProfile(common_name=name, public_key=key.public_key(), not_before=now - timedelta(minutes=1),
                          not_after=not_after, server_auth=False, client_auth=False, extra_extensions=extensions)
    cert = issuer.issue(profile, provisioner=PROVISIONER, request_id=None)
    JsonLinesAudit(config.resolve(config.audit.path)).record(AuditEvent(
        action="x509.sign.ocsp-responder", decision="allowed", provisioner=PROVISIONER, subject=name,
        serial=str(cert.serial_number), details={"issuer": issuer.id, "key": key_uri}))
    return cert
