"""Certificates (recorded before signing) and used one-time tokens.

Revision ID: 0001
Revises:
Create Date: 2025-11-27

Self-contained on purpose: types are spelled out here rather than imported from schema.py, so
that later edits to the live schema cannot change what this revision creates.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0001"
down_revision: str | None = None
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


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("serial", sa.String(48), nullable=False),
        sa.Column("issuer", sa.String(128), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("sans", sa.JSON(), nullable=False),
        sa.Column("not_before", _utc_datetime(), nullable=False),
        sa.Column("not_after", _utc_datetime(), nullable=False),
        sa.Column("provisioner", sa.String(255), nullable=False),
        sa.Column("tbs", _blob(), nullable=False),
        sa.Column("der", _blob(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reserved_at", _utc_datetime(), nullable=False),
        sa.Column("issued_at", _utc_datetime(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.PrimaryKeyConstraint("serial", name="pk_certificates"),
        sa.CheckConstraint(
            "status IN ('reserved', 'issued', 'abandoned')", name="ck_certificates_status"
        ),
        **_MYSQL,
    )
    op.create_index(
        "ix_certificates_status_reserved_at", "certificates", ["status", "reserved_at"]
    )
    op.create_table(
        "used_tokens",
        sa.Column("jti", sa.String(256), nullable=False),
        sa.Column("provisioner", sa.String(255), nullable=False),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.Column("used_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("jti", name="pk_used_tokens"),
        **_MYSQL,
    )
    op.create_index("ix_used_tokens_expires_at", "used_tokens", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_used_tokens_expires_at", table_name="used_tokens")
    op.drop_table("used_tokens")
    op.drop_index("ix_certificates_status_reserved_at", table_name="certificates")
    op.drop_table("certificates")
