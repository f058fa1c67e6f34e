"""Intermediate CAs, so that the CA can hold several and switch between them through the database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-01-15

Self-contained like 0001: types are spelled out here, not imported from schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0002"
down_revision: str | None = "0001"
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
        "intermediates",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("key_uri", sa.Text(), nullable=False),
        sa.Column("public_key", _blob(), nullable=False),
        sa.Column("csr", _blob(), nullable=True),
        sa.Column("certificate", _blob(), nullable=True),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("not_before", _utc_datetime(), nullable=True),
        sa.Column("not_after", _utc_datetime(), nullable=True),
        sa.Column("activate_at", _utc_datetime(), nullable=True),
        sa.Column("retired_at", _utc_datetime(), nullable=True),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("installed_at", _utc_datetime(), nullable=True),
        sa.Column("chain", _blob(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_intermediates"),
        sa.UniqueConstraint("name", name="uq_intermediates_name"),
        **_MYSQL,
    )
    op.create_index("ix_intermediates_activate_at", "intermediates", ["activate_at"])


def downgrade() -> None:
    op.drop_index("ix_intermediates_activate_at", table_name="intermediates")
    op.drop_table("intermediates")
