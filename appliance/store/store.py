"""The storage authority: each method is one short transaction over the certificate, token and
intermediate tables (the intermediates' queries live in intermediates.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Self

import sqlalchemy as sa
from cryptography import x509
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from . import crls as _crls
from . import intermediates as _intermediates
from . import leases as _leases
from . import migrate as _migrate
from . import ocsp as _ocsp
from . import revocations as _revocations
from .acme import ACMEStore
from .engine import DEFAULT_TIMEOUT, WRITE, create_engine, database_errors
from .errors import (
    CertificateNotFound,
    InvalidTransition,
    SerialCollision,
    StoreError,
    TokenReplayed,
)
from .records import (
    MAX_JTI_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REASON_LENGTH,
    MAX_SERIAL,
    CertificateRecord,
    CertificateStatus,
    IntermediateRecord,
    OneTimeToken,
    Reservation,
    check_reservation,
    check_serial,
    check_text,
    utc,
)
from .schema import certificates, used_tokens
from .urls import backend_of, normalise_url, url_from_config
from .writelock import SQLiteWriteLock

STALE_REASON = "reservation left by an interrupted issuance (worker crash?)"
MAX_LIST_LIMIT = 10_000
_CHUNK = 500  # serials per UPDATE ... IN (...), well inside every backend's parameter limit

RESERVED = CertificateStatus.RESERVED.value
ISSUED = CertificateStatus.ISSUED.value
ABANDONED = CertificateStatus.ABANDONED.value


class Store:
    """Certificates, used tokens and intermediates in SQLite, PostgreSQL or MySQL/MariaDB.

    Safe to share between threads; a forked worker drops the inherited pool by itself.
    """

    def __init__(self, url: str | sa.URL, *, echo: bool = False, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._url = normalise_url(url)
        self._timeout = timeout
        self._engine = create_engine(self._url, timeout=timeout, statement_timeout=timeout, echo=echo)
        self._serialise_writes = self.backend == "sqlite"  # see writelock.py
        self._write_lock_pid = 0
        self._write_lock_obj: AbstractContextManager[Any] = nullcontext()
        self.acme = ACMEStore(self._read, self._write)  # ACME accounts, nonces, orders (see acme.py)

    @property
    def _write_lock(self) -> AbstractContextManager[Any]:
        # A lock copied by fork may be held by a thread that does not exist in the child.
        if self._serialise_writes and self._write_lock_pid != os.getpid():
            database = self._url.database
            path = Path(database) if database and database != ":memory:" else None
            self._write_lock_obj, self._write_lock_pid = SQLiteWriteLock(path, self._timeout), os.getpid()
        return self._write_lock_obj

    @classmethod
    def from_config(
        cls, db: Mapping[str, Any], base_dir: Path, *, echo: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> Store:
        """Open the database named by ca.json's `db` block (relative sqlite paths from `base_dir`)."""
        return cls(url_from_config(db, base_dir), echo=echo, timeout=timeout)

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def url(self) -> str:
        """The database URL with any password masked, fit for logs and /health."""
        return self._url.render_as_string(hide_password=True)

    @property
    def backend(self) -> str:
        """`sqlite`, `postgresql` or `mysql` (MariaDB included)."""
        return backend_of(self._url)

    # -- life cycle -------------------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to this release's head; run by `hsmca db migrate`, safe to repeat."""
        # Its own engine without the statement limit: a migration may rewrite a large table.
        engine = create_engine(self._url, timeout=self._timeout, statement_timeout=None, pooled=False)
        try:
            with database_errors("migrating the schema", self._url):
                _migrate.upgrade(engine)
        finally:
            engine.dispose()

    def schema_revision(self) -> str | None:
        """The revision the database is at (None when it was never migrated)."""
        with self._read("reading the schema revision") as conn:
            return _migrate.current_revision(conn)

    def check_schema(self) -> None:
        """Raise StoreError unless the database is at the head revision this code expects."""
        with self._read("checking the schema revision") as conn:
            _migrate.check(conn)

    def ping(self) -> None:
        """Raise StoreUnavailable when the database does not answer (for /health)."""
        with self._read("checking the database") as conn:
            conn.execute(sa.text("SELECT 1")).scalar_one()

    def close(self) -> None:
        """Close pooled connections; the Store can still be used and reconnects on demand."""
        self._engine.dispose()

    # -- certificates -----------------------------------------------------------------------

    def reserve(self, rec: Reservation, token: OneTimeToken | None = None) -> None:
        """Record a serial and its TBS before signing, so no signed certificate goes unrecorded.

        With `token`, its id is burned in the same transaction: a token is used if and only if
        its certificate was reserved (and one commit is saved on the issuance path). A token
        already used raises TokenReplayed and records nothing.
        """
        check_reservation(rec)
        token_row = self._token_row(token) if token is not None else None
        row = {
            "serial": str(rec.serial),
            "issuer": rec.issuer,
            "subject": rec.subject,
            "sans": list(rec.sans),
            "not_before": rec.not_before,
            "not_after": rec.not_after,
            "provisioner": rec.provisioner,
            "tbs": rec.tbs,
            "der": None,
            "status": RESERVED,
            "reserved_at": _now(),
            "issued_at": None,
            "status_reason": None,
            "request_id": rec.request_id,
        }
        try:
            with self._write("reserving a serial") as conn:
                # Parameters passed apart from the statement: SQLAlchemy compiles it once.
                if token_row is not None:
                    conn.execute(_INSERT_TOKEN, token_row)
                conn.execute(_INSERT_CERTIFICATE, row)
        except StoreError as exc:
            # The primary keys are the only constraints valid input can break; confirm which.
            if isinstance(exc.__cause__, IntegrityError):
                if token is not None and self._token_exists(token.jti):
                    raise TokenReplayed(f"token {token.jti[:8]}… was already used") from None
                if self._serial_exists(rec.serial):
                    raise SerialCollision(f"serial {rec.serial} is already recorded") from None
            raise

    def mark_issued(self, serial: int, der: bytes) -> None:
        """Attach the signed certificate; its TBS must be the one reserved (and only from reserved).

        Repeating the call with the same certificate is a no-op, so a retry after a lost commit
        acknowledgement is harmless.
        """
        check_serial(serial)
        try:
            tbs = x509.load_der_x509_certificate(der).tbs_certificate_bytes
        except (ValueError, TypeError) as exc:
            raise StoreError(f"certificate for serial {serial} is not valid DER: {exc}") from None
        with self._write("recording an issued certificate") as conn:
            done = conn.execute(_MARK_ISSUED, {"m_serial": str(serial), "m_tbs": tbs, "m_der": der,
                                               "m_issued_at": _now()}).rowcount
            if done == 1:
                return
            found = conn.execute(
                sa.select(certificates.c.status, certificates.c.tbs, certificates.c.der).where(
                    certificates.c.serial == str(serial)
                )
            ).one_or_none()
        if found is None:
            raise CertificateNotFound(f"no reservation for serial {serial}")
        if found.status == ISSUED and found.der == der:
            return
        if found.status != RESERVED:
            raise InvalidTransition(f"certificate {serial} is {found.status}, not reserved")
        raise StoreError(
            f"certificate for serial {serial} was not signed over the reserved TBS; refused"
        )

    def mark_abandoned(self, serial: int, reason: str) -> None:
        """Close a reservation whose signature was refused or failed; the serial is never reused."""
        check_serial(serial)
        check_text(reason, "reason", MAX_REASON_LENGTH)
        with self._write("abandoning a reservation") as conn:
            done = conn.execute(
                certificates.update()
                .where(certificates.c.serial == str(serial), certificates.c.status == RESERVED)
                .values(status=ABANDONED, status_reason=reason)
            ).rowcount
            if done == 1:
                return
            status = conn.execute(
                sa.select(certificates.c.status).where(certificates.c.serial == str(serial))
            ).scalar_one_or_none()
        if status is None:
            raise CertificateNotFound(f"no reservation for serial {serial}")
        raise InvalidTransition(f"certificate {serial} is {status}, not reserved")

    def resolve_stale_reservations(
        self, older_than: timedelta, now: datetime | None = None
    ) -> list[int]:
        """Abandon reservations older than the cut-off (left by a crash) and return their serials.

        `older_than` must exceed the longest a signature may take, or a slow issuance would
        find its reservation abandoned and (rightly) fail.
        """
        if older_than <= timedelta(0):
            raise ValueError("older_than must be positive")
        cutoff = (utc(now, "now") if now is not None else _now()) - older_than
        stale = sa.and_(certificates.c.status == RESERVED, certificates.c.reserved_at < cutoff)
        with self._write("resolving stale reservations") as conn:
            # Locked rows (PostgreSQL, MySQL; SQLite holds the write lock already), so two
            # housekeepers never both claim the same serial.
            serials = [
                s for (s,) in conn.execute(
                    sa.select(certificates.c.serial).where(stale).with_for_update()
                )
            ]
            for start in range(0, len(serials), _CHUNK):
                conn.execute(
                    certificates.update()
                    .where(stale, certificates.c.serial.in_(serials[start:start + _CHUNK]))
                    .values(status=ABANDONED, status_reason=STALE_REASON)
                )
        return sorted(int(s) for s in serials)

    def get_certificate(self, serial: int) -> CertificateRecord | None:
        """The record for `serial`, or None (also for serials no certificate can carry)."""
        if isinstance(serial, bool) or not isinstance(serial, int):
            raise TypeError(f"serial must be an int, not {type(serial).__name__}")
        if not 0 < serial <= MAX_SERIAL:
            return None
        with self._read("reading a certificate") as conn:
            row = conn.execute(
                sa.select(certificates).where(certificates.c.serial == str(serial))
            ).one_or_none()
        return None if row is None else _record(row)

    def list_certificates(self, status: str | None = None, limit: int = 100) -> list[CertificateRecord]:
        """Most recently reserved first."""
        query = sa.select(certificates)
        if status is not None:
            query = query.where(certificates.c.status == CertificateStatus(status).value)
        if not 0 < limit <= MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}")
        query = query.order_by(certificates.c.reserved_at.desc(), certificates.c.serial).limit(limit)
        with self._read("listing certificates") as conn:
            rows = conn.execute(query).all()
        return [_record(row) for row in rows]

    def count_by_status(self) -> dict[str, int]:
        """Every status with its count (zeros included), for metrics and health."""
        with self._read("counting certificates") as conn:
            rows = conn.execute(
                sa.select(certificates.c.status, sa.func.count()).group_by(certificates.c.status)
            ).all()
        counts = {s.value: 0 for s in CertificateStatus}
        counts.update({status: int(n) for status, n in rows})
        return counts

    # -- one-time tokens --------------------------------------------------------------------

    def use_token(self, jti: str, provisioner: str, expires_at: datetime) -> bool:
        """True the first time a token id is presented, False ever after (across all replicas).

        Race-free because it is a bare INSERT on the primary key. Keep the row until the token
        can no longer be accepted: pass the expiry plus any clock-skew leeway as `expires_at`.
        """
        row = self._token_row(OneTimeToken(jti, provisioner, expires_at))
        try:
            with self._write("recording a one-time token") as conn:
                conn.execute(_INSERT_TOKEN, row)
        except StoreError as exc:
            if isinstance(exc.__cause__, IntegrityError) and self._token_exists(jti):
                return False
            raise
        return True

    def purge_expired_tokens(self, now: datetime | None = None) -> int:
        """Forget tokens whose `expires_at` is before `now`; returns how many."""
        moment = utc(now, "now") if now is not None else _now()
        with self._write("purging expired tokens") as conn:
            return int(
                conn.execute(used_tokens.delete().where(used_tokens.c.expires_at < moment)).rowcount
            )

    # -- intermediates (logic in intermediates.py) ------------------------------------------

    def add_intermediate(self, rec: IntermediateRecord) -> None:
        """Record a new intermediate, usually awaiting its certificate; IntermediateExists on a clash."""
        _intermediates.add(self._read, self._write, rec)

    def install_intermediate(
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
        return _intermediates.install(
            self._write, id, certificate_der, not_before=not_before, not_after=not_after,
            subject=subject, activate_at=activate_at, now=now, chain=chain,
        )

    def schedule_activation(self, id: str, at: datetime) -> IntermediateRecord:
        """Make an installed, unretired intermediate active from `at` (a past time means now)."""
        return _intermediates.schedule(self._write, id, at)

    def retire_intermediate(self, id: str, at: datetime) -> IntermediateRecord:
        """Stop using the intermediate from `at`; a retirement already passed is final."""
        return _intermediates.retire(self._write, id, at)

    def cancel_retirement(self, id: str) -> IntermediateRecord:
        """Withdraw a retirement still in the future (InvalidTransition once it has happened)."""
        return _intermediates.cancel_retirement(self._write, id)

    def get_intermediate(self, id: str) -> IntermediateRecord | None:
        """The intermediate with exactly this id, or None."""
        return _intermediates.get(self._read, id)

    def find_intermediate(self, name_or_id_prefix: str) -> IntermediateRecord:
        """By name, id or unique id prefix (>= 8 hex digits); ValueError when ambiguous."""
        return _intermediates.find(self._read, name_or_id_prefix)

    def list_intermediates(self) -> list[IntermediateRecord]:
        """Every intermediate, oldest first."""
        return _intermediates.list_all(self._read)

    def active_intermediate(self, now: datetime | None = None) -> IntermediateRecord | None:
        """The intermediate to sign with at `now`, decided by one SELECT (same answer everywhere)."""
        return _intermediates.active(self._read, now)

    def active_intermediate_id(self, now: datetime | None = None) -> tuple[str, datetime | None] | None:
        """(id, not_after) of `active_intermediate(now)`, without reading its certificate (per issuance)."""
        return _intermediates.active_id(self._read, now)

    def count_certificates_by_issuer(self) -> dict[str, int]:
        """Issued certificates per intermediate id, for `intermediate list`."""
        return _intermediates.count_issued_by_issuer(self._read)

    # -- helpers ----------------------------------------------------------------------------

    # -- revocations, leases (see revocations.py, leases.py) ---------------------------------------

    def revoke(self, serial: int, *, reason_code: int = 0, reason: str | None = None, source: str,
               at: datetime | None = None) -> _revocations.Revoked:
        """Revoke an issued certificate (idempotent: the first revocation stands)."""
        return _revocations.revoke(self._read, self._write, serial, reason_code=reason_code, reason=reason,
                                   source=source, at=at or _now())

    def get_revocation(self, serial: int) -> _revocations.RevocationRecord | None:
        return _revocations.get(self._read, serial)

    def revocation_revision(self, issuer: str) -> int:
        return _revocations.revision(self._read, issuer)

    def revocation_epoch(self) -> int:
        """A number that grows with every revocation of any intermediate (the sum of their revisions)."""
        return _revocations.epoch(self._read)

    def stream_revocations(self, issuer: str, *, expired_before: datetime | None = None
                           ) -> Iterator[_revocations.RevocationRecord]:
        return _revocations.stream(self._read, issuer, expired_before=expired_before)

    def take_lease(self, name: str, holder: str, ttl: timedelta, now: datetime | None = None) -> bool:
        return _leases.take(self._write, name, holder, ttl, now or _now())

    def release_lease(self, name: str, holder: str) -> None:
        _leases.release(self._write, name, holder)

    def lease_holder(self, name: str, now: datetime | None = None) -> str | None:
        return _leases.holder(self._read, name, now or _now())

    # -- CRLs (see crls.py) ------------------------------------------------------------------------

    def add_crl(self, rec: _crls.CRLRecord) -> None:
        """Store a signed CRL (CRLNumberTaken when its number is not above the issuer's highest)."""
        _crls.add(self._write, rec)

    def latest_crl_info(self, issuer: str) -> _crls.CRLInfo | None:
        """The issuer's current CRL without its bytes (cheap enough to poll every second)."""
        return _crls.latest_info(self._read, issuer)

    def get_crl(self, issuer: str, number: int) -> _crls.CRLRecord | None:
        return _crls.get(self._read, issuer, number)

    def next_crl_number(self, issuer: str) -> int:
        return _crls.next_number(self._read, issuer)

    def stream_crl_entries(self, issuer: str, *, expired_before: datetime | None = None
                           ) -> Iterator[tuple[int, datetime, int]]:
        """(serial, revoked_at as naive UTC, reason code) per revocation of `issuer`, lean enough for a
        million-entry CRL."""
        return _crls.entries(self._read, issuer, expired_before)

    def count_crls(self, issuer: str) -> int:
        return _crls.count(self._read, issuer)

    # -- pre-signed OCSP responses (see ocsp.py) ---------------------------------------------------

    def cached_ocsp_response(self, serial: int) -> _ocsp.CachedResponse | None:
        """The stored response for `serial`, with whether it is revoked now (one query, on every OCSP request)."""
        return _ocsp.cached(self._read, serial)

    def ocsp_status(self, serial: int) -> _ocsp.CertificateStatusRow | None:
        """Issuer, issuance and revocation of `serial` in one query (what a response says)."""
        return _ocsp.status(self._read, serial)

    def put_ocsp_response(self, serial: int, issuer: str, status: str, this_update: datetime,
                          next_update: datetime, der: bytes) -> bool:
        """Store or replace a response; False (nothing stored) for a "good" one of a revoked serial."""
        return _ocsp.put(self._write, serial, issuer, status, this_update, next_update, der)

    def ocsp_responses_due(self, before: datetime, limit: int, now: datetime | None = None) -> list[int]:
        """Unexpired certificates whose stored response's nextUpdate is before `before`, soonest first."""
        return _ocsp.due(self._read, before, now or _now(), limit)

    def certificates_without_ocsp_response(self, limit: int, *, reserved_since: datetime | None = None,
                                           now: datetime | None = None) -> list[int]:
        """Unexpired issued or revoked certificates with no stored response (what pre-signing covers)."""
        return _ocsp.missing(self._read, now or _now(), limit, reserved_since=reserved_since)

    def purge_expired_ocsp_responses(self, now: datetime | None = None) -> int:
        return _ocsp.purge_expired(self._write, now or _now())

    @staticmethod
    def _token_row(token: OneTimeToken) -> dict[str, Any]:
        check_text(token.jti, "jti", MAX_JTI_LENGTH)
        check_text(token.provisioner, "provisioner", MAX_NAME_LENGTH)
        return {"jti": token.jti, "provisioner": token.provisioner,
                "expires_at": utc(token.expires_at, "expires_at"), "used_at": _now()}

    def _serial_exists(self, serial: int) -> bool:
        with self._read("reading a certificate") as conn:
            return conn.execute(
                sa.select(certificates.c.serial).where(certificates.c.serial == str(serial))
            ).first() is not None

    def _token_exists(self, jti: str) -> bool:
        with self._read("reading a one-time token") as conn:
            return conn.execute(
                sa.select(used_tokens.c.jti).where(used_tokens.c.jti == jti)
            ).first() is not None

    @contextmanager
    def _read(self, what: str) -> Iterator[Connection]:
        with database_errors(what, self._url), self._engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write(self, what: str) -> Iterator[Connection]:
        with self._write_lock, database_errors(what, self._url), self._engine.connect() as conn:
            conn.execution_options(**{WRITE: True})
            with conn.begin():
                yield conn


_INSERT_CERTIFICATE = certificates.insert()
_INSERT_TOKEN = used_tokens.insert()
# Built once: constructing the statement cost more CPU than executing it on the issuance path.
_MARK_ISSUED = (
    certificates.update()
    .where(certificates.c.serial == sa.bindparam("m_serial"), certificates.c.status == RESERVED,
           certificates.c.tbs == sa.bindparam("m_tbs"))
    .values(status=ISSUED, der=sa.bindparam("m_der"), issued_at=sa.bindparam("m_issued_at"))
)


def _now() -> datetime:
    return datetime.now(UTC)


def _record(row: Row[Any]) -> CertificateRecord:
    return CertificateRecord(
        serial=int(row.serial),
        issuer=row.issuer,
        subject=row.subject,
        sans=tuple(row.sans),
        not_before=row.not_before,
        not_after=row.not_after,
        provisioner=row.provisioner,
        tbs=bytes(row.tbs),
        der=None if row.der is None else bytes(row.der),
        status=CertificateStatus(row.status),
        reserved_at=row.reserved_at,
        issued_at=row.issued_at,
        status_reason=row.status_reason,
        request_id=row.request_id,
    )
