"""Intermediates on the appliance, as the operator manages them: key and CSR in the KMS, install,
activate, retire. Which one signs a given request is `appliance.ca.active`'s job.

The database is the only source of truth for which intermediate is active: every worker and
every replica asks it (one indexed query per issuance), so `activate` takes effect everywhere
at once, and a scheduled activation at its time, with no restart and no message between them.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from datetime import datetime, timezone

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding

from appliance.ca.lint import name_findings
from appliance.certutil import load_certificates, parse_certificates, read_extensions
from appliance.config import CAConfig
from appliance.store import IntermediateRecord, IntermediateState, Store, StoreError, intermediate_state
from kms import KeySpec, create_key, default_hash, open_key, parse_key_uri
from kms.errors import KMSError
from kms.signer import spki_der

log = logging.getLogger(__name__)


class IntermediateError(Exception):
    """An operator's intermediate command cannot be done; the message says why."""


def key_id(public_key: object) -> str:
    """The intermediate's id: hex SubjectKeyIdentifier of its key (what `certificates.issuer` holds)."""
    return x509.SubjectKeyIdentifier.from_public_key(public_key).digest.hex()  # type: ignore[arg-type]


def stored_key_uri(uri: str) -> str:
    """The operator's URI as stored: never a PIN value (pin-source names a file, which is fine)."""
    try:
        parsed = parse_key_uri(uri)
    except KMSError as exc:
        raise IntermediateError(f"invalid key URI: {exc}") from None
    if "pin-value" in parsed.query:
        raise IntermediateError("the key URI carries pin-value; use pin-source=file:... or the kms.uri of ca.json")
    return str(parsed)


def make_csr(config: CAConfig, store: Store, uri: str, subject: str, *, name: str | None = None,
             spec: KeySpec = KeySpec.EC_P256, use_existing: bool = False,
             now: datetime | None = None) -> tuple[bytes, IntermediateRecord]:
    """Create the key inside the KMS (or open it), sign a CSR with it, record it as awaiting its certificate."""
    try:
        dn = x509.Name.from_rfc4514_string(subject)
    except ValueError as exc:
        raise IntermediateError(f"--subject {subject!r} is not an RFC 4514 name "
                                f"({str(exc) or 'expected NAME=value pairs such as CN=Corp Issuing CA'})") from None
    if not dn.rdns:
        raise IntermediateError("--subject cannot be empty")
    stored = stored_key_uri(uri)
    parsed = parse_key_uri(stored)
    label = name or parsed.label or parsed.path.get("", "").rstrip("/").rpartition("/")[2]
    if not label:
        raise IntermediateError("give --name, or name the key in its URI (object=LABEL, …/keys/NAME)")
    if any(r.name == label for r in store.intermediates.list()):
        raise IntermediateError(f"an intermediate named {label!r} is already recorded; choose another name (--name)")
    config.apply_kms_environment()
    full = config.key_uri(stored)
    try:
        key = open_key(full) if use_existing else create_key(full, spec)
        csr = x509.CertificateSigningRequestBuilder().subject_name(dn).sign(key, default_hash(key))
    except KMSError as exc:
        raise IntermediateError(f"{type(exc).__name__}: {exc}") from None
    public = key.public_key()
    rec = IntermediateRecord(
        id=key_id(public), name=label, key_uri=stored, public_key=spki_der(public),
        csr=csr.public_bytes(Encoding.DER), certificate=None, subject=dn.rfc4514_string(), not_before=None,
        not_after=None, activate_at=None, retired_at=None, created_at=now or _now(), installed_at=None)
    try:
        store.intermediates.add(rec)
    except StoreError as exc:
        raise IntermediateError(str(exc)) from None
    return csr.public_bytes(Encoding.PEM), rec


def own_name_problems(config: CAConfig, cert: x509.Certificate) -> list[str]:
    """The CA's own names (`dnsNames`, which its HTTPS certificate carries) that `cert`'s name constraints
    refuse, each sentence naming the constraint; empty when they all fit."""
    names: list[x509.GeneralName] = []
    for name in config.dnsNames:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return [f"the CA's own {f.message}" for f in name_findings(names, None, cert)]


def install(config: CAConfig, store: Store, pem: bytes, *, activate_at: datetime | None,
            now: datetime | None = None, chain: bytes | None = None) -> IntermediateRecord:
    """Accept the ceremony's certificate for a recorded key: a CA, issued by this CA's root, for that key.

    `chain` (PEM): certificates that lead from it to this CA's root, served after it; in a root
    rollover, the cross-certificate of the new root that signed it.
    """
    now = now or _now()
    try:
        certs = parse_certificates(pem)
    except ValueError as exc:
        raise IntermediateError(f"not a certificate: {exc}") from None
    cert = certs[0]
    try:
        bc = read_extensions(cert).get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        bc = None
    except ValueError as exc:
        raise IntermediateError(f"the certificate's extensions cannot be read: {exc}") from None
    if bc is None or not bc.ca:
        raise IntermediateError("the certificate is not a CA certificate (BasicConstraints CA:TRUE is missing)")
    roots = load_certificates(config.resolve(config.root))
    try:
        extra = parse_certificates(chain) if chain else []
    except ValueError as exc:
        raise IntermediateError(f"--chain holds no certificate: {exc}") from None
    path = [cert, *extra]
    if not all(_issued_by(a, b) for a, b in zip(path, path[1:], strict=False)) \
            or not any(_issued_by(path[-1], root) for root in roots):
        what = "the certificate and its --chain do" if extra else "the certificate does"
        raise IntermediateError(f"{what} not lead to this CA's root ({config.root}); clients trusting the root "
                                "would reject its chains (after a root rollover, give the cross-certificate "
                                "with --chain)")
    if cert.not_valid_after_utc <= now:
        raise IntermediateError(f"the certificate expired at {cert.not_valid_after_utc}")
    if activate_at is not None and activate_at < cert.not_valid_before_utc:
        raise IntermediateError(f"--activate-at {activate_at} is before the certificate is valid "
                                f"({cert.not_valid_before_utc})")
    if activate_at is not None and activate_at >= cert.not_valid_after_utc:
        raise IntermediateError(f"--activate-at {activate_at} is not before the certificate expires "
                                f"({cert.not_valid_after_utc})")
    spki = spki_der(cert.public_key())
    try:
        rec = next((r for r in store.intermediates.list() if r.public_key == spki), None)
        if rec is None:
            raise IntermediateError("no recorded intermediate key matches this certificate: make its CSR with "
                                    "`hsmca intermediate csr` on this CA first")
        rec = store.intermediates.install(
            rec.id, cert.public_bytes(Encoding.DER), not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc, subject=cert.subject.rfc4514_string(), activate_at=None,
            now=now, chain=b"".join(c.public_bytes(Encoding.PEM) for c in extra) or None)
        return activate(store, rec.id, activate_at) if activate_at is not None else rec
    except StoreError as exc:
        raise IntermediateError(str(exc)) from None


def activate(store: Store, ident: str, at: datetime, now: datetime | None = None) -> IntermediateRecord:
    """Schedule `ident` to take over at `at`, and retire its predecessors at that same instant.

    Which one is active is decided by one query (latest activation that has come, not retired),
    so workers switch atomically at `at`; recording the predecessors' retirement means retiring
    the new one later never silently brings an old one back. Re-scheduling a pending hand-over
    moves the predecessors' retirement with it, so there is never a moment without an active one.
    """
    now = now or _now()
    rec = store.intermediates.find(ident)
    if rec.not_before is not None and at < rec.not_before:
        raise IntermediateError(f"{rec.name!r} is not valid before {rec.not_before}; activate it at or after that")
    if rec.not_after is not None and at >= rec.not_after:
        raise IntermediateError(f"{rec.name!r} expires at {rec.not_after}; it cannot be activated at {at}")
    active = store.intermediates.active_id(now)
    if active is not None and active[0] == rec.id and at > now:
        raise IntermediateError(f"{rec.name!r} is active already; to hand over later, activate its successor "
                                "at that time")
    previous = rec.activate_at if rec.activate_at is not None and rec.activate_at > now else None
    rec = store.intermediates.schedule_activation(rec.id, at)
    assert rec.activate_at is not None
    for other in store.intermediates.list():
        if other.id == rec.id or other.certificate is None or other.activate_at is None \
                or other.activate_at > rec.activate_at:
            continue
        tied = previous is not None and other.retired_at == previous  # retired for the earlier schedule
        if other.retired_at is None or other.retired_at > rec.activate_at or tied:
            store.intermediates.retire(other.id, rec.activate_at)
    return rec


def retire(store: Store, ident: str, at: datetime, *, force: bool = False,
           now: datetime | None = None) -> IntermediateRecord:
    """Stop issuing from `ident` at `at`; refuses to leave no active intermediate unless `force`.

    Retiring a pending intermediate before its scheduled activation cancels that hand-over: the
    predecessors it was going to retire keep serving.
    """
    now = now or _now()
    rec = store.intermediates.find(ident)
    if rec.activate_at is not None and rec.activate_at > now and at <= rec.activate_at:
        for other in store.intermediates.list():
            if other.id != rec.id and other.retired_at == rec.activate_at:
                store.intermediates.cancel_retirement(other.id)
        return store.intermediates.retire(rec.id, at)
    active = store.intermediates.active_id(at)
    if active is not None and active[0] == rec.id and not force:
        others = [r for r in store.intermediates.list() if r.id != rec.id and r.certificate is not None
                  and r.activate_at is not None and r.activate_at <= at
                  and (r.retired_at is None or r.retired_at > at)]
        if not others:
            raise IntermediateError(f"{rec.name!r} is the only active intermediate at {at}: activate another "
                                    "first, or pass --force to stop issuance")
    return store.intermediates.retire(rec.id, at)


def bootstrap(config: CAConfig, store: Store, now: datetime | None = None) -> IntermediateRecord | None:
    """A CA made before intermediates were recorded (or by `hsmca init`): its ca.json intermediate, active."""
    if store.intermediates.list():
        return None
    if not config.crt or not config.key:
        return None
    cert = load_certificates(config.resolve(config.crt))[0]
    stored = stored_key_uri(config.key)
    rec = IntermediateRecord(
        id=key_id(cert.public_key()), name="intermediate_ca", key_uri=stored, public_key=spki_der(cert.public_key()),
        csr=None, certificate=cert.public_bytes(Encoding.DER), subject=cert.subject.rfc4514_string(),
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        activate_at=cert.not_valid_before_utc, retired_at=None, created_at=now or _now(), installed_at=now or _now())
    store.intermediates.add(rec)
    log.info("recorded the intermediate of ca.json (%s) as active", rec.subject)
    return rec


@dataclass(frozen=True)
class Listed:
    record: IntermediateRecord
    state: IntermediateState
    issued: int


def listing(store: Store, now: datetime | None = None) -> list[Listed]:
    now = now or _now()
    active = store.intermediates.active(now)
    counts = store.certificates.count_issued_by_issuer()
    return [Listed(r, intermediate_state(r, active.id if active else None, now), counts.get(r.id, 0))
            for r in store.intermediates.list()]


def _issued_by(cert: x509.Certificate, root: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(root)
        return True
    except (ValueError, TypeError, InvalidSignature):
        return False


def _now() -> datetime:
    return datetime.now(timezone.utc)
