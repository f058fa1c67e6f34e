"""Signed audit checkpoints, so a verifier can tell an audit file cut short after its last checkpoint.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Self-contained like 0004: types are spelled out here, not imported from schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0005"
down_revision: str | None = "0004"
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


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("stream", sa.String(128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("head", sa.String(64), nullable=False),
        sa.Column("time", _utc_datetime(), nullable=False),
        sa.Column("reason", sa.String(32), nullable=False),
        sa.Column("statement", sa.String(512), nullable=False),
        sa.Column("signatures", sa.JSON(), nullable=False),
        sa.Column("recorded_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("stream", "seq", name="pk_audit_checkpoints"),
        **_MYSQL,
    )
    op.create_index("ix_audit_checkpoints_time", "audit_checkpoints", ["time"])


def downgrade() -> None:
    op.drop_index("ix_audit_checkpoints_time", table_name="audit_checkpoints")
    op.drop_table("audit_checkpoints")
