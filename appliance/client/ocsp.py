"""Ask an OCSP responder about one certificate and check the answer the way a relying party must.

The response must be signed by the issuer itself, or by a certificate the issuer gave the OCSPSigning EKU
(RFC 6960 §4.2.2.2); it must be about the certificate asked for, and current (thisUpdate not in the future,
nextUpdate not passed, with a few minutes of clock skew).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from appliance.certutil import verify_signature

SKEW = timedelta(minutes=5)
TIMEOUT = 15.0


class OCSPCheckError(Exception):
    """No trustworthy answer: the responder is unreachable, refused, or its response does not check out."""


@dataclass(frozen=True)
class OCSPResult:
    status: str  # good | revoked | unknown
    this_update: datetime
    next_update: datetime | None
    revocation_time: datetime | None
    revocation_reason: str | None
    url: str


def ocsp_url(cert: x509.Certificate) -> str | None:
    """The first OCSP URL of the certificate's Authority Information Access, if it has one."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return None
    for desc in aia:
        if desc.access_method == AuthorityInformationAccessOID.OCSP and \
                isinstance(desc.access_location, x509.UniformResourceIdentifier):
            return desc.access_location.value
    return None


def check(cert: x509.Certificate, issuer: x509.Certificate, url: str, *, nonce: bool = False,
          now: datetime | None = None) -> OCSPResult:
    """POST a SHA-1 CertID request for `cert` to `url` and return the verified answer."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())
    sent_nonce = secrets.token_bytes(16) if nonce else None
    if sent_nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(sent_nonce), critical=False)
    try:
        resp = requests.post(url, data=builder.build().public_bytes(Encoding.DER), timeout=TIMEOUT,
                             headers={"Content-Type": "application/ocsp-request"})
    except requests.RequestException as exc:
        raise OCSPCheckError(f"cannot reach the OCSP responder at {url}: {exc}") from None
    if resp.status_code != 200:
        raise OCSPCheckError(f"the OCSP responder at {url} answered HTTP {resp.status_code}")
    try:
        answer = ocsp.load_der_ocsp_response(resp.content)
    except ValueError as exc:
        raise OCSPCheckError(f"the responder at {url} sent no OCSP response: {exc}") from None
    if answer.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise OCSPCheckError(f"the OCSP responder refused: {answer.response_status.name.lower()}")
    _verify(answer, issuer)
    asked = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, answer.hash_algorithm).build()
    if (answer.serial_number, answer.issuer_name_hash, answer.issuer_key_hash) != \
            (asked.serial_number, asked.issuer_name_hash, asked.issuer_key_hash):
        raise OCSPCheckError("the response is about another certificate")
    if sent_nonce is not None:
        try:
            echoed = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        except x509.ExtensionNotFound:
            echoed = None
        if echoed is not None and echoed != sent_nonce:  # absent is fine: RFC 5019 responders ignore it
            raise OCSPCheckError("the response carries another nonce than the one sent (a replay?)")
    moment = now or datetime.now(UTC)
    if answer.this_update_utc > moment + SKEW:
        raise OCSPCheckError(f"the response's thisUpdate ({answer.this_update_utc}) is in the future")
    if answer.next_update_utc is not None and answer.next_update_utc < moment - SKEW:
        raise OCSPCheckError(f"the response expired at {answer.next_update_utc} (nextUpdate)")
    status = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked",
              ocsp.OCSPCertStatus.UNKNOWN: "unknown"}[answer.certificate_status]
    reason = answer.revocation_reason.name if answer.revocation_reason is not None else None
    return OCSPResult(status, answer.this_update_utc, answer.next_update_utc, answer.revocation_time_utc,
                      reason, url)


def _verify(answer: ocsp.OCSPResponse, issuer: x509.Certificate) -> None:
    """The signer is the issuer, or a delegated responder certificate the issuer signed for OCSPSigning."""
    signer = issuer
    if not _is_signer(answer, issuer):
        delegated = [c for c in answer.certificates if _is_signer(answer, c)]
        if not delegated:
            raise OCSPCheckError("the response is signed neither by the issuer nor by a responder it names")
        signer = delegated[0]
        try:
            signer.verify_directly_issued_by(issuer)
            ekus = signer.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except (ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            raise OCSPCheckError("the delegated responder's certificate is not one the issuer signed for OCSP") \
                from None
        if ExtendedKeyUsageOID.OCSP_SIGNING not in ekus:
            raise OCSPCheckError("the delegated responder's certificate lacks the OCSPSigning usage")
    try:
        verify_signature(signer.public_key(), answer.signature, answer.tbs_response_bytes,
                         answer.signature_hash_algorithm, None)
    except InvalidSignature:
        raise OCSPCheckError("the response's signature does not verify") from None


def _is_signer(answer: ocsp.OCSPResponse, cert: x509.Certificate) -> bool:
    if answer.responder_key_hash is not None:
        return answer.responder_key_hash == x509.SubjectKeyIdentifier.from_public_key(
            cert.public_key()).digest
    return answer.responder_name == cert.subject
