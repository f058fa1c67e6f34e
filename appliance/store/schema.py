"""The tables as SQLAlchemy Core sees them; the migrations create exactly this (a test compares)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql
from sqlalchemy.engine import Dialect

from .records import (
    MAX_BLOB_LENGTH,
    MAX_ISSUER_LENGTH,
    MAX_JTI_LENGTH,
    MAX_NAME_LENGTH,
    MAX_REQUEST_ID_LENGTH,
)

# 20 octets hold a serial below 2**159, which has 48 decimal digits.
SERIAL_LENGTH = 48
SSH_SERIAL_LENGTH = 20  # an SSH certificate's serial is a uint64
STATUS_LENGTH = 16

# Explicit names so that later migrations can address constraints on every backend.
metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# InnoDB with a binary collation: a jti or serial must match byte for byte, not case-insensitively.
MYSQL_TABLE_ARGS: dict[str, Any] = {
    "mysql_engine": "InnoDB",
    "mysql_charset": "utf8mb4",
    "mysql_collate": "utf8mb4_bin",
}


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Stores UTC on every backend and hands back aware UTC datetimes.

    PostgreSQL keeps `timestamptz`; MySQL and SQLite have no zone, so the value is stored as naive
    UTC (MySQL with microseconds, which its plain DATETIME would drop).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.TIMESTAMP(timezone=True))
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(sa.DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("naive datetimes are not stored; pass an aware datetime")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# MySQL's plain BLOB stops at 64 KiB; MEDIUMBLOB holds MAX_BLOB_LENGTH (16 MiB).
BLOB = sa.LargeBinary(MAX_BLOB_LENGTH).with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")

certificates = sa.Table(
    "certificates",
    metadata,
    sa.Column("serial", sa.String(SERIAL_LENGTH), primary_key=True),
    sa.Column("issuer", sa.String(MAX_ISSUER_LENGTH), nullable=False),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("sans", sa.JSON(), nullable=False),
    sa.Column("not_before", UTCDateTime(), nullable=False),
    sa.Column("not_after", UTCDateTime(), nullable=False),
    sa.Column("provisioner", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("tbs", BLOB, nullable=False),
    sa.Column("der", BLOB, nullable=True),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),
    sa.Column("reserved_at", UTCDateTime(), nullable=False),
    sa.Column("issued_at", UTCDateTime(), nullable=True),
    sa.Column("status_reason", sa.Text(), nullable=True),
    sa.Column("request_id", sa.String(MAX_REQUEST_ID_LENGTH), nullable=True),
    sa.CheckConstraint(
        "status IN ('reserved', 'issued', 'abandoned')", name="ck_certificates_status"
    ),
    sa.Index("ix_certificates_status_reserved_at", "status", "reserved_at"),
    **MYSQL_TABLE_ARGS,
)

used_tokens = sa.Table(
    "used_tokens",
    metadata,
    sa.Column("jti", sa.String(MAX_JTI_LENGTH), primary_key=True),
    sa.Column("provisioner", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("used_at", UTCDateTime(), nullable=False),
    sa.Index("ix_used_tokens_expires_at", "expires_at"),
    **MYSQL_TABLE_ARGS,
)

# Intermediate CAs. Their state (pending, active, retired) is derived from the times at read time,
# so a scheduled switch needs no writer and every replica decides it with the same query.
intermediates = sa.Table(
    "intermediates",
    metadata,
    sa.Column("id", sa.String(MAX_ISSUER_LENGTH), primary_key=True),
    sa.Column("name", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("key_uri", sa.Text(), nullable=False),
    sa.Column("public_key", BLOB, nullable=False),
    sa.Column("csr", BLOB, nullable=True),
    sa.Column("certificate", BLOB, nullable=True),
    sa.Column("subject", sa.Text(), nullable=False),
    sa.Column("not_before", UTCDateTime(), nullable=True),
    sa.Column("not_after", UTCDateTime(), nullable=True),
    sa.Column("activate_at", UTCDateTime(), nullable=True),
    sa.Column("retired_at", UTCDateTime(), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("installed_at", UTCDateTime(), nullable=True),
    # PEM of the certificates served after the intermediate's own (a cross-certificate in a root rollover).
    sa.Column("chain", BLOB, nullable=True),
    # Bumped with every revocation of a certificate it issued; a CRL records the revision it covers.
    sa.Column("revocation_revision", sa.BigInteger(), nullable=False, server_default="0"),
    sa.UniqueConstraint("name", name="uq_intermediates_name"),
    sa.Index("ix_intermediates_activate_at", "activate_at"),
    **MYSQL_TABLE_ARGS,
)

# A CRL of a million entries is ~45 MB: LONGBLOB on MySQL (MariaDB's max_allowed_packet must exceed it).
LONG_BLOB = sa.LargeBinary(2**32 - 1).with_variant(mysql.LONGBLOB(), "mysql", "mariadb")

# SSH certificates (OpenSSH PROTOCOL.certkeys): reserved with the to-be-signed body before the KMS signs, as
# X.509 ones are; `ca_key` is the SHA-256 (hex) of the signing CA key's SSH blob, which a KRL is built per. A
# revocation is kept on the row itself: the KRL lists serials per CA key, nothing more.
ssh_certificates = sa.Table(
    "ssh_certificates",
    metadata,
    sa.Column("serial", sa.String(SSH_SERIAL_LENGTH), primary_key=True),
    sa.Column("cert_type", sa.String(8), nullable=False),
    sa.Column("key_id", sa.Text(), nullable=False),
    sa.Column("principals", sa.JSON(), nullable=False),
    sa.Column("valid_after", UTCDateTime(), nullable=False),
    sa.Column("valid_before", UTCDateTime(), nullable=False),
    sa.Column("provisioner", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("ca_key", sa.String(64), nullable=False),
    sa.Column("tbs", BLOB, nullable=False),
    sa.Column("certificate", BLOB, nullable=True),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),
    sa.Column("reserved_at", UTCDateTime(), nullable=False),
    sa.Column("issued_at", UTCDateTime(), nullable=True),
    sa.Column("status_reason", sa.Text(), nullable=True),
    sa.Column("request_id", sa.String(MAX_REQUEST_ID_LENGTH), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("revocation_reason", sa.Text(), nullable=True),
    sa.Index("ix_ssh_certificates_revoked_at", "revoked_at"),
    sa.Index("ix_ssh_certificates_status_reserved_at", "status", "reserved_at"),
    **MYSQL_TABLE_ARGS,
)

# One row per revoked certificate (a certificate's own row keeps its issuance status). `not_after` lets a
# CRL leave out entries for certificates long expired, and the issuer index streams one CRL's entries.
revocations = sa.Table(
    "revocations",
    metadata,
    sa.Column("serial", sa.String(SERIAL_LENGTH), primary_key=True),
    sa.Column("issuer", sa.String(MAX_ISSUER_LENGTH), nullable=False),
    sa.Column("revoked_at", UTCDateTime(), nullable=False),
    sa.Column("reason_code", sa.Integer(), nullable=False),  # RFC 5280 CRLReason
    sa.Column("reason", sa.Text(), nullable=True),
    sa.Column("source", sa.String(MAX_NAME_LENGTH), nullable=False),  # who revoked: provisioner, mtls, cli
    sa.Column("not_after", UTCDateTime(), nullable=False),
    sa.Index("ix_revocations_issuer", "issuer"),
    **MYSQL_TABLE_ARGS,
)

# Every CRL signed, per intermediate; the highest number is the current one. CRL numbers only grow.
crls = sa.Table(
    "crls",
    metadata,
    sa.Column("issuer", sa.String(MAX_ISSUER_LENGTH), primary_key=True),
    sa.Column("number", sa.BigInteger(), primary_key=True),
    sa.Column("this_update", UTCDateTime(), nullable=False),
    sa.Column("next_update", UTCDateTime(), nullable=False),
    sa.Column("revision", sa.BigInteger(), nullable=False),  # intermediates.revocation_revision it covers
    sa.Column("entries", sa.Integer(), nullable=False),
    sa.Column("der", LONG_BLOB, nullable=False),
    **MYSQL_TABLE_ARGS,
)

# Signed OCSP responses (at a first request, or pre-signed), one per certificate, refreshed before next_update by
# one replica at a time.
ocsp_responses = sa.Table(
    "ocsp_responses",
    metadata,
    sa.Column("serial", sa.String(SERIAL_LENGTH), primary_key=True),
    sa.Column("issuer", sa.String(MAX_ISSUER_LENGTH), nullable=False),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),  # good | revoked
    sa.Column("this_update", UTCDateTime(), nullable=False),
    sa.Column("next_update", UTCDateTime(), nullable=False),
    sa.Column("der", BLOB, nullable=False),
    sa.Index("ix_ocsp_responses_next_update", "next_update"),
    **MYSQL_TABLE_ARGS,
)

# Work that one replica at a time should do (sign a CRL, refresh OCSP responses): the holder renews its
# lease before expires_at; anyone may take an expired one.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("name", sa.String(MAX_NAME_LENGTH), primary_key=True),
    sa.Column("holder", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    **MYSQL_TABLE_ARGS,
)

# ACME (RFC 8555). Ids are random base64url strings; every state change is one transaction (store/acme.py).
ACME_ID_LENGTH = 64

acme_accounts = sa.Table(
    "acme_accounts",
    metadata,
    sa.Column("id", sa.String(ACME_ID_LENGTH), primary_key=True),
    sa.Column("provisioner", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("thumbprint", sa.String(ACME_ID_LENGTH), nullable=False),  # RFC 7638, base64url SHA-256
    sa.Column("jwk", sa.JSON(), nullable=False),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),  # valid | deactivated | revoked
    sa.Column("contact", sa.JSON(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.UniqueConstraint("provisioner", "thumbprint", name="uq_acme_accounts_provisioner_thumbprint"),
    **MYSQL_TABLE_ARGS,
)

# A nonce is accepted once, by whichever replica sees it first: consuming it is a DELETE whose rowcount decides.
acme_nonces = sa.Table(
    "acme_nonces",
    metadata,
    sa.Column("value", sa.String(ACME_ID_LENGTH), primary_key=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index("ix_acme_nonces_expires_at", "expires_at"),
    **MYSQL_TABLE_ARGS,
)

acme_orders = sa.Table(
    "acme_orders",
    metadata,
    sa.Column("id", sa.String(ACME_ID_LENGTH), primary_key=True),
    sa.Column("account_id", sa.String(ACME_ID_LENGTH), nullable=False),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),  # pending ready processing valid invalid
    sa.Column("identifiers", sa.JSON(), nullable=False),
    sa.Column("not_before", UTCDateTime(), nullable=True),
    sa.Column("not_after", UTCDateTime(), nullable=True),
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("serial", sa.String(SERIAL_LENGTH), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Index("ix_acme_orders_account_id", "account_id"),
    sa.Index("ix_acme_orders_serial", "serial"),
    sa.Index("ix_acme_orders_expires_at", "expires_at"),
    **MYSQL_TABLE_ARGS,
)

acme_authorizations = sa.Table(
    "acme_authorizations",
    metadata,
    sa.Column("id", sa.String(ACME_ID_LENGTH), primary_key=True),
    sa.Column("order_id", sa.String(ACME_ID_LENGTH), nullable=False),
    sa.Column("account_id", sa.String(ACME_ID_LENGTH), nullable=False),
    sa.Column("identifier_type", sa.String(STATUS_LENGTH), nullable=False),  # dns | ip
    sa.Column("identifier_value", sa.String(MAX_NAME_LENGTH), nullable=False),  # without "*." for a wildcard
    sa.Column("wildcard", sa.Boolean(), nullable=False),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),  # pending valid invalid deactivated
    sa.Column("expires_at", UTCDateTime(), nullable=False),
    sa.Index("ix_acme_authorizations_order_id", "order_id"),
    sa.Index("ix_acme_authorizations_expires_at", "expires_at"),
    **MYSQL_TABLE_ARGS,
)

# `claimed_at` is when a validator last took the challenge: one stuck in `processing` past a cut-off (its worker
# died) is claimed again, or failed once it has used its attempts.
acme_challenges = sa.Table(
    "acme_challenges",
    metadata,
    sa.Column("id", sa.String(ACME_ID_LENGTH), primary_key=True),
    sa.Column("authz_id", sa.String(ACME_ID_LENGTH), nullable=False),
    sa.Column("type", sa.String(STATUS_LENGTH), nullable=False),
    sa.Column("token", sa.String(ACME_ID_LENGTH), nullable=False),
    sa.Column("status", sa.String(STATUS_LENGTH), nullable=False),  # pending processing valid invalid
    sa.Column("validated_at", UTCDateTime(), nullable=True),
    sa.Column("error", sa.JSON(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("claimed_at", UTCDateTime(), nullable=True),
    sa.Index("ix_acme_challenges_authz_id", "authz_id"),
    sa.Index("ix_acme_challenges_status_claimed_at", "status", "claimed_at"),
    **MYSQL_TABLE_ARGS,
)

# External account binding keys (RFC 8555 §7.3.4), made by `hsmca acme eab add`; each binds one account, once.
acme_eab_keys = sa.Table(
    "acme_eab_keys",
    metadata,
    sa.Column("key_id", sa.String(ACME_ID_LENGTH), primary_key=True),
    sa.Column("provisioner", sa.String(MAX_NAME_LENGTH), nullable=False),
    sa.Column("hmac_key", sa.String(ACME_ID_LENGTH * 2), nullable=False),  # base64url, as clients are given it
    sa.Column("reference", sa.String(MAX_NAME_LENGTH), nullable=True),
    sa.Column("created_at", UTCDateTime(), nullable=False),
    sa.Column("account_id", sa.String(ACME_ID_LENGTH), nullable=True),
    sa.Column("bound_at", UTCDateTime(), nullable=True),
    **MYSQL_TABLE_ARGS,
)

# Signed audit checkpoints (appliance/audit/seal.py), one per (stream, seq): the verifier compares a stream's
# file with the highest seq recorded here, so a file cut short after its last checkpoint is noticed.
AUDIT_STREAM_LENGTH = 128
AUDIT_HEAD_LENGTH = 64  # hex SHA-256
AUDIT_REASON_LENGTH = 32
AUDIT_STATEMENT_LENGTH = 512

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("stream", sa.String(AUDIT_STREAM_LENGTH), primary_key=True),
    sa.Column("seq", sa.BigInteger(), primary_key=True),
    sa.Column("head", sa.String(AUDIT_HEAD_LENGTH), nullable=False),
    sa.Column("time", UTCDateTime(), nullable=False),  # the signed statement's time
    sa.Column("reason", sa.String(AUDIT_REASON_LENGTH), nullable=False),  # interval, shutdown, rotation, …
    sa.Column("statement", sa.String(AUDIT_STATEMENT_LENGTH), nullable=False),  # the exact bytes signed
    sa.Column("signatures", sa.JSON(), nullable=False),  # [{"key", "algorithm", "signature"}, …]
    sa.Column("recorded_at", UTCDateTime(), nullable=False),
    sa.Index("ix_audit_checkpoints_time", "time"),
    **MYSQL_TABLE_ARGS,
)
