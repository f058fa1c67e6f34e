"""Intermediate CAs in the database: recorded, installed, scheduled and retired.

The active intermediate is never a stored flag: it is whichever installed, unretired intermediate
has the latest activation time not after `now`, chosen by one SELECT. So a scheduled switch takes
effect at its time with no writer, and every worker and replica sharing the database agrees.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import sqlalchemy as sa
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_der_public_key
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from kms.signer import spki_der

from .engine import Repository
from .errors import IntermediateExists, IntermediateNotFound, InvalidTransition, StoreError
from .records import (
    MAX_BLOB_LENGTH,
    MAX_ISSUER_LENGTH,
    MAX_KEY_URI_LENGTH,
    MAX_NAME_LENGTH,
    MAX_SUBJECT_LENGTH,
    IntermediateRecord,
    check_text,
    utc,
)
from .schema import intermediates

MIN_ID_PREFIX = 8  # hex digits; shorter prefixes are too likely to be ambiguous or typos
_HEX = re.compile(r"[0-9a-f]+")
_AMBIGUOUS_SHOWN = 5

_c = intermediates.c


class IntermediateStore(Repository):
    """The intermediates table, over the Store's transactions."""

    # -- writes ----------------------------------------------------------------------------------

    def add(self, rec: IntermediateRecord) -> None:
        """Record a new intermediate, usually awaiting its certificate; IntermediateExists on a clash."""
        row = _new_row(rec, _moment(None))
        try:
            with self._write("recording an intermediate") as conn:
                # Checked first for a clear message; the constraints still decide a race.
                _refuse_clash(conn, rec)
                conn.execute(_INSERT, row)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError):
                with self._read("reading intermediates") as conn:
                    _refuse_clash(conn, rec)
            raise

    def install(
        self,
        id: str,
        certificate_der: bytes,
        *,
        not_before: datetime,
        not_after: datetime,
        subject: str,
        activate_at: datetime | None,
        now: datetime | None = None,
        chain: bytes | None = None,
    ) -> IntermediateRecord:
        """Attach the signed certificate (same DER again: only reschedules; another DER: refused).

        `chain` (PEM) is served after it, e.g. the cross-certificate of a root rollover.
        """
        check_text(id, "id", MAX_ISSUER_LENGTH)
        cert = _load_certificate(certificate_der)
        start, end = _validity(not_before, not_after)
        check_text(subject, "subject", MAX_SUBJECT_LENGTH)
        at = None if activate_at is None else utc(activate_at, "activate_at")
        moment = _moment(now)
        with self._write("installing an intermediate's certificate") as conn:
            row = _locked(conn, id)
            values: dict[str, Any] = {}
            if row.certificate is not None:
                if bytes(row.certificate) != certificate_der:
                    raise InvalidTransition(
                        f"intermediate {row.name!r} already has another certificate installed; "
                        "a new certificate needs a new key (add another intermediate)"
                    )
            else:
                _check_certificate(cert, bytes(row.public_key))
                values = {"certificate": certificate_der, "not_before": start, "not_after": end,
                          "subject": subject, "installed_at": moment, "chain": _check_chain(chain)}
            if at is not None:
                _refuse_retired(row, moment)
                values["activate_at"] = max(at, moment)
            if not values:
                return _record(row)
            conn.execute(intermediates.update().where(_c.id == row.id).values(**values))
            return _record(_locked(conn, row.id))

    def schedule_activation(self, id: str, at: datetime) -> IntermediateRecord:
        """Make an installed, unretired intermediate active from `at` (a past time means now)."""
        # A time already past is recorded as now: readers before this commit did not see the
        # activation, and the latest activation wins, so a back-dated one could lose to the
        # intermediate it was meant to replace.
        check_text(id, "id", MAX_ISSUER_LENGTH)
        when = utc(at, "at")
        moment = _moment(None)
        with self._write("scheduling an intermediate's activation") as conn:
            row = _locked(conn, id)
            if row.certificate is None:
                raise InvalidTransition(
                    f"intermediate {row.name!r} has no certificate yet; install its certificate first"
                )
            _refuse_retired(row, moment)
            conn.execute(
                intermediates.update().where(_c.id == row.id).values(activate_at=max(when, moment))
            )
            return _record(_locked(conn, row.id))

    def retire(self, id: str, at: datetime) -> IntermediateRecord:
        """Stop using the intermediate from `at`; a retirement already passed is final."""
        check_text(id, "id", MAX_ISSUER_LENGTH)
        when = utc(at, "at")
        moment = _moment(None)
        with self._write("retiring an intermediate") as conn:
            row = _locked(conn, id)
            if row.retired_at is not None and row.retired_at <= moment:
                return _record(row)  # already retired: the recorded time stays
            conn.execute(intermediates.update().where(_c.id == row.id).values(retired_at=when))
            return _record(_locked(conn, row.id))

    def cancel_retirement(self, id: str) -> IntermediateRecord:
        """Withdraw a retirement still in the future (InvalidTransition once it has happened)."""
        check_text(id, "id", MAX_ISSUER_LENGTH)
        moment = _moment(None)
        with self._write("cancelling a retirement") as conn:
            row = _locked(conn, id)
            _refuse_retired(row, moment)
            conn.execute(intermediates.update().where(_c.id == row.id).values(retired_at=None))
            return _record(_locked(conn, row.id))

    # -- reads -----------------------------------------------------------------------------------

    def get(self, id: str) -> IntermediateRecord | None:
        """The intermediate with exactly this id, or None."""
        if not isinstance(id, str):
            raise TypeError(f"id must be a str, not {type(id).__name__}")
        if not id or len(id) > MAX_ISSUER_LENGTH:
            return None
        with self._read("reading an intermediate") as conn:
            row = conn.execute(sa.select(intermediates).where(_c.id == id)).one_or_none()
        return None if row is None else _record(row)

    def find(self, name_or_id_prefix: str) -> IntermediateRecord:
        """By name, id or unique id prefix (>= 8 hex digits); ValueError when ambiguous."""
        # Ids may be given as printed by openssl (upper case, colon separated). An ambiguous prefix
        # lists the candidates, so a typo never picks the wrong key.
        query = check_text(name_or_id_prefix, "name or id", MAX_NAME_LENGTH)
        hex_id = query.replace(":", "").lower()
        is_hex = _HEX.fullmatch(hex_id) is not None
        with self._read("finding an intermediate") as conn:
            exact = conn.execute(
                sa.select(intermediates).where(sa.or_(_c.name == query, _c.id == hex_id))
            ).all()
            if exact:
                # A name wins over an id, should an operator have named one after another's key.
                return _record(next((r for r in exact if r.name == query), exact[0]))
            rows: Sequence[Row[Any]] = []
            if is_hex and len(hex_id) >= MIN_ID_PREFIX:
                rows = conn.execute(
                    sa.select(intermediates)
                    .where(_c.id.startswith(hex_id, autoescape=True))
                    .order_by(_c.id)
                    .limit(_AMBIGUOUS_SHOWN + 1)
                ).all()
        if len(rows) == 1:
            return _record(rows[0])
        if rows:
            shown = ", ".join(f"{r.id} ({r.name})" for r in rows[:_AMBIGUOUS_SHOWN])
            more = ", …" if len(rows) > _AMBIGUOUS_SHOWN else ""
            raise ValueError(f"{query!r} matches several intermediates: {shown}{more}; give more of the id")
        hint = f" (an id prefix needs at least {MIN_ID_PREFIX} hex digits)" if is_hex and len(hex_id) < MIN_ID_PREFIX \
            else ""
        raise IntermediateNotFound(f"no intermediate is named {query!r} or has an id starting with it{hint}")

    def active(self, now: datetime | None = None) -> IntermediateRecord | None:
        """The intermediate to sign with at `now`, decided by one SELECT (same answer everywhere)."""
        # Installed, activation time reached, not (yet) retired; the latest activation wins, the id
        # breaks a tie so that the answer never depends on the backend's row order.
        with self._read("reading the active intermediate") as conn:
            row = conn.execute(_ACTIVE, {"now": _moment(now)}).one_or_none()
        return None if row is None else _record(row)

    def active_id(self, now: datetime | None = None) -> tuple[str, datetime | None] | None:
        """(id, not_after) of `active(now)`, without reading its certificate (per issuance)."""
        # The caller keeps the certificate and key per id.
        with self._read("reading the active intermediate") as conn:
            row = conn.execute(_ACTIVE_ID, {"now": _moment(now)}).one_or_none()
        return None if row is None else (row.id, row.not_after)

    # Last: below this method, `list` in an annotation would name it, not the builtin (mypy says so).
    def list(self) -> list[IntermediateRecord]:
        """Every intermediate, oldest first."""
        with self._read("listing intermediates") as conn:
            rows = conn.execute(sa.select(intermediates).order_by(_c.created_at, _c.id)).all()
        return [_record(r) for r in rows]


def _active_query(select: sa.Select[Any]) -> sa.Select[Any]:
    """Built once (a bound `now`): this runs for every certificate issued."""
    now = sa.bindparam("now", type_=_c.activate_at.type)
    return (
        select
        .where(
            _c.certificate.is_not(None),
            _c.activate_at <= now,
            sa.or_(_c.retired_at.is_(None), _c.retired_at > now),
        )
        .order_by(_c.activate_at.desc(), _c.id.desc())
        .limit(1)
    )


# -- helpers ---------------------------------------------------------------------------------

_INSERT = intermediates.insert()


def _moment(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else utc(now, "now")


def _new_row(rec: IntermediateRecord, moment: datetime) -> dict[str, Any]:
    """Validate a new record completely before the insert, so bad input never looks like an outage."""
    if not isinstance(rec, IntermediateRecord):
        raise TypeError(f"expected an IntermediateRecord, not {type(rec).__name__}")
    check_text(rec.id, "id", MAX_ISSUER_LENGTH)
    if not _HEX.fullmatch(rec.id):
        raise ValueError("id must be the lowercase hex of the key's SubjectKeyIdentifier")
    check_text(rec.name, "name", MAX_NAME_LENGTH)
    if rec.name != rec.name.strip():
        raise ValueError("name must not start or end with white space")
    _check_key_uri(rec.key_uri)
    public_key = _spki(_check_der(rec.public_key, "public_key"))
    if rec.csr is not None:
        _check_der(rec.csr, "csr")
    check_text(rec.subject, "subject", MAX_SUBJECT_LENGTH)
    row: dict[str, Any] = {
        "id": rec.id,
        "name": rec.name,
        "key_uri": rec.key_uri,
        "public_key": rec.public_key,
        "csr": rec.csr,
        "certificate": None,
        "subject": rec.subject,
        "not_before": None,
        "not_after": None,
        "activate_at": None,
        "retired_at": None if rec.retired_at is None else utc(rec.retired_at, "retired_at"),
        "created_at": utc(rec.created_at, "created_at"),
        "installed_at": None,
        "chain": None,
    }
    if rec.certificate is None:
        if any(v is not None for v in (rec.not_before, rec.not_after, rec.activate_at, rec.installed_at)):
            raise ValueError("validity, activate_at and installed_at come with a certificate; it has none")
        return row
    # Recorded with its certificate already (e.g. an intermediate made before the database knew any).
    _check_certificate(_load_certificate(rec.certificate), public_key)
    if rec.not_before is None or rec.not_after is None:
        raise ValueError("a certificate comes with its not_before and not_after")
    row["certificate"] = rec.certificate
    row["chain"] = _check_chain(rec.chain)
    row["not_before"], row["not_after"] = _validity(rec.not_before, rec.not_after)
    row["installed_at"] = moment if rec.installed_at is None else utc(rec.installed_at, "installed_at")
    if rec.activate_at is not None:
        row["activate_at"] = max(utc(rec.activate_at, "activate_at"), moment)
    return row


def _check_chain(chain: bytes | None) -> bytes | None:
    """PEM certificates, or nothing; checked here so a bad chain is the caller's error, not a 503."""
    if chain is None:
        return None
    try:
        if not x509.load_pem_x509_certificates(chain):
            raise ValueError("no certificate")
    except ValueError as exc:
        raise ValueError(f"chain must be PEM certificates: {exc}") from None
    return chain


def _check_key_uri(uri: object) -> None:
    """The database is readable by more people than the HSM's PIN should be."""
    text = check_text(uri, "key_uri", MAX_KEY_URI_LENGTH)
    if "pin-value" in unquote(text).lower():
        raise ValueError("key_uri must not carry a PIN (pin-value); use pin-source=file:… instead")


def _check_der(value: object, field: str) -> bytes:
    if not isinstance(value, bytes):
        raise TypeError(f"{field} must be DER bytes, not {type(value).__name__}")
    if not value or len(value) > MAX_BLOB_LENGTH:
        raise ValueError(f"{field} must be non-empty DER of at most {MAX_BLOB_LENGTH} bytes")
    return value


def _spki(der: bytes) -> bytes:
    """The SubjectPublicKeyInfo re-encoded, so that two encodings of one key compare equal."""
    try:
        return spki_der(load_der_public_key(der))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"public_key is not a SubjectPublicKeyInfo this CA can use: {exc}") from None


def _load_certificate(der: object) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(_check_der(der, "certificate"))
    except ValueError as exc:
        raise ValueError(f"certificate is not valid DER: {exc}") from None


def _check_certificate(cert: x509.Certificate, public_key: bytes) -> None:
    """The certificate must be a CA certificate for this intermediate's key.

    The id is derived from the key, so the key match is what ties the certificate to the id
    (its subjectKeyIdentifier extension may use another method and is not compared).
    """
    try:
        spki = spki_der(cert.public_key())
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise ValueError("certificate is not a CA certificate (no basicConstraints)") from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"certificate cannot be read: {exc}") from None
    if spki != _spki(public_key):
        raise ValueError("certificate is for another key than this intermediate's")
    if not constraints.ca:
        raise ValueError("certificate is not a CA certificate (basicConstraints cA is false)")


def _validity(not_before: object, not_after: object) -> tuple[datetime, datetime]:
    start, end = utc(not_before, "not_before"), utc(not_after, "not_after")
    if end < start:
        raise ValueError("not_after is before not_before")
    return start, end


def _refuse_retired(row: Row[Any], moment: datetime) -> None:
    if row.retired_at is not None and row.retired_at <= moment:
        raise InvalidTransition(
            f"intermediate {row.name!r} was retired at {row.retired_at.isoformat()}; "
            "retired intermediates are not re-activated"
        )


def _refuse_clash(conn: Connection, rec: IntermediateRecord) -> None:
    rows = conn.execute(
        sa.select(_c.id, _c.name).where(sa.or_(_c.id == rec.id, _c.name == rec.name))
    ).all()
    same_key = [r for r in rows if r.id == rec.id]
    if same_key:
        raise IntermediateExists(f"an intermediate with id {rec.id} is already recorded, named {same_key[0].name!r}")
    if rows:
        raise IntermediateExists(f"an intermediate named {rec.name!r} is already recorded, with id {rows[0].id}")


def _locked(conn: Connection, id: str) -> Row[Any]:
    """The row, locked against concurrent changes until the transaction ends (SQLite: already)."""
    row = conn.execute(sa.select(intermediates).where(_c.id == id).with_for_update()).one_or_none()
    if row is None:
        raise IntermediateNotFound(f"no intermediate with id {id}")
    return row


def _record(row: Row[Any]) -> IntermediateRecord:
    return IntermediateRecord(
        id=row.id,
        name=row.name,
        key_uri=row.key_uri,
        public_key=bytes(row.public_key),
        csr=None if row.csr is None else bytes(row.csr),
        certificate=None if row.certificate is None else bytes(row.certificate),
        subject=row.subject,
        not_before=row.not_before,
        not_after=row.not_after,
        activate_at=row.activate_at,
        retired_at=row.retired_at,
        created_at=row.created_at,
        installed_at=row.installed_at,
        chain=None if row.chain is None else bytes(row.chain),
    )


_ACTIVE = _active_query(sa.select(intermediates))
_ACTIVE_ID = _active_query(sa.select(_c.id, _c.not_after))
