"""ACME Renewal Information (RFC 9773): when should the holder of a certificate renew it?

The certificate is named by `base64url(AKI keyIdentifier) "." base64url(serial DER content octets)`. The
suggested window starts at two thirds of the lifetime (where certbot and lego renew by default) and lasts a
tenth of it; a revoked certificate's window is already open (it lies in the past: renew now).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from appliance.acme import jws
from appliance.acme.objects import rfc3339
from appliance.acme.problems import Problem
from appliance.store import CertificateRecord, CertificateStatus, RevocationRecord

RETRY_AFTER = 6 * 3600  # seconds: how often clients should ask again (RFC 9773 §4.3)


@dataclass(frozen=True)
class CertID:
    key_identifier: bytes
    serial: int


def parse_cert_id(text: str) -> CertID:
    aki, dot, serial = text.partition(".")
    if not dot or not aki or not serial:
        raise Problem("malformed", "the certificate identifier must be base64url(AKI) \".\" base64url(serial)")
    key_id = jws.b64decode(aki, "the certificate identifier's key identifier")
    serial_bytes = jws.b64decode(serial, "the certificate identifier's serial")
    if not serial_bytes or len(serial_bytes) > 21 or serial_bytes[0] & 0x80:
        raise Problem("malformed", "the certificate identifier's serial is not a positive DER INTEGER's content")
    return CertID(key_id, int.from_bytes(serial_bytes, "big"))


def cert_id(key_identifier: bytes, serial: int) -> str:
    """The identifier of a certificate (what a client computes), for tests and logs."""
    length = serial.bit_length() // 8 + 1  # DER: a leading zero octet keeps it positive
    return f"{jws.b64encode(key_identifier)}.{jws.b64encode(serial.to_bytes(length, 'big'))}"


def window(rec: CertificateRecord, revocation: RevocationRecord | None, now: datetime) -> dict[str, object]:
    if revocation is not None:
        start, end = now - timedelta(hours=1), now
    else:
        lifetime = rec.not_after - rec.not_before
        start = rec.not_before + lifetime * 2 / 3
        end = start + lifetime / 10
    return {"suggestedWindow": {"start": rfc3339(start), "end": rfc3339(end)}}


def check(rec: CertificateRecord | None, cid: CertID) -> CertificateRecord:
    """The record the identifier names: issued by the intermediate whose key identifier it carries."""
    if rec is None or rec.status is not CertificateStatus.ISSUED or rec.issuer != cid.key_identifier.hex():
        raise Problem("malformed", "no certificate issued by this CA has that identifier", 404)
    return rec
