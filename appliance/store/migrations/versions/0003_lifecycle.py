"""The certificate lifecycle: revocations, CRLs, pre-signed OCSP responses, and leases for one-at-a-time work.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Self-contained like 0001: types are spelled out here, not imported from schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    """timestamptz on PostgreSQL; naive UTC elsewhere, with microseconds on MySQL."""
    return (
        sa.DateTime()
        .with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
        .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    )


def _blob() -> sa.types.TypeEngine[bytes]:
    """16 MiB everywhere: MEDIUMBLOB on MySQL, whose plain BLOB stops at 64 KiB."""
    return sa.LargeBinary(2**24 - 1).with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


def _long_blob() -> sa.types.TypeEngine[bytes]:
    """A CRL with a million entries is ~45 MB: LONGBLOB on MySQL (bytea and SQLite blobs hold it as they are)."""
    return sa.LargeBinary(2**32 - 1).with_variant(mysql.LONGBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "revocations",
        sa.Column("serial", sa.String(48), nullable=False),
        sa.Column("issuer", sa.String(128), nullable=False),
        sa.Column("revoked_at", _utc_datetime(), nullable=False),
        sa.Column("reason_code", sa.Integer(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("source", sa.String(255), nullable=False),
        sa.Column("not_after", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name="pk_revocations"),
        **_MYSQL,
    )
    op.create_index("ix_revocations_issuer", "revocations", ["issuer"])
    op.create_table(
        "crls",
        sa.Column("issuer", sa.String(128), nullable=False),
        sa.Column("number", sa.BigInteger(), nullable=False),
        sa.Column("this_update", _utc_datetime(), nullable=False),
        sa.Column("next_update", _utc_datetime(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("der", _long_blob(), nullable=False),
        sa.PrimaryKeyConstraint("issuer", "number", name="pk_crls"),
        **_MYSQL,
    )
    op.create_table(
        "ocsp_responses",
        sa.Column("serial", sa.String(48), nullable=False),
        sa.Column("issuer", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("this_update", _utc_datetime(), nullable=False),
        sa.Column("next_update", _utc_datetime(), nullable=False),
        sa.Column("der", _blob(), nullable=False),
        sa.PrimaryKeyConstraint("serial", name="pk_ocsp_responses"),
        **_MYSQL,
    )
    op.create_index("ix_ocsp_responses_next_update", "ocsp_responses", ["next_update"])
    op.create_table(
        "leases",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("holder", sa.String(255), nullable=False),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_leases"),
        **_MYSQL,
    )
    # Bumped in the transaction of every revocation of a certificate this intermediate issued: a CRL records
    # the revision it covers, so the signer knows a new one is due without counting rows.
    with op.batch_alter_table("intermediates") as batch:
        batch.add_column(sa.Column("revocation_revision", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("intermediates") as batch:
        batch.drop_column("revocation_revision")
    op.drop_table("leases")
    op.drop_index("ix_ocsp_responses_next_update", table_name="ocsp_responses")
    op.drop_table("ocsp_responses")
    op.drop_table("crls")
    op.drop_index("ix_revocations_issuer", table_name="revocations")
    op.drop_table("revocations")
