"""SSH certificates, reserved before signing like X.509 ones, with their revocation on the row.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Self-contained like 0005: types are spelled out here, not imported from schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0006"
down_revision: str | None = "0005"
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
    return sa.LargeBinary(2**24 - 1).with_variant(mysql.MEDIUMBLOB(), "mysql", "mariadb")


def upgrade() -> None:
    op.create_table(
        "ssh_certificates",
        sa.Column("serial", sa.String(20), nullable=False),
        sa.Column("cert_type", sa.String(8), nullable=False),
        sa.Column("key_id", sa.Text(), nullable=False),
        sa.Column("principals", sa.JSON(), nullable=False),
        sa.Column("valid_after", _utc_datetime(), nullable=False),
        sa.Column("valid_before", _utc_datetime(), nullable=False),
        sa.Column("provisioner", sa.String(255), nullable=False),
        sa.Column("ca_key", sa.String(64), nullable=False),
        sa.Column("tbs", _blob(), nullable=False),
        sa.Column("certificate", _blob(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reserved_at", _utc_datetime(), nullable=False),
        sa.Column("issued_at", _utc_datetime(), nullable=True),
        sa.Column("status_reason", sa.Text(), nullable=True),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("revoked_at", _utc_datetime(), nullable=True),
        sa.Column("revocation_reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("serial", name="pk_ssh_certificates"),
        **_MYSQL,
    )
    op.create_index("ix_ssh_certificates_revoked_at", "ssh_certificates", ["revoked_at"])
    op.create_index("ix_ssh_certificates_status_reserved_at", "ssh_certificates", ["status", "reserved_at"])


def downgrade() -> None:
    op.drop_index("ix_ssh_certificates_status_reserved_at", table_name="ssh_certificates")
    op.drop_index("ix_ssh_certificates_revoked_at", table_name="ssh_certificates")
    op.drop_table("ssh_certificates")
