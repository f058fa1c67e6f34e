"""ACME (RFC 8555): accounts, nonces, orders, authorizations, challenges and external account binding keys.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Self-contained like 0003: types are spelled out here, not imported from schema.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql, postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MYSQL: dict[str, Any] = {"mysql_engine": "InnoDB", "mysql_charset": "utf8mb4", "mysql_collate": "utf8mb4_bin"}
_ID = 64


def _utc_datetime() -> sa.types.TypeEngine[datetime]:
    """timestamptz on PostgreSQL; naive UTC elsewhere, with microseconds on MySQL."""
    return (
        sa.DateTime()
        .with_variant(postgresql.TIMESTAMP(timezone=True), "postgresql")
        .with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")
    )


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.String(_ID), nullable=False),
        sa.Column("provisioner", sa.String(255), nullable=False),
        sa.Column("thumbprint", sa.String(_ID), nullable=False),
        sa.Column("jwk", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("contact", sa.JSON(), nullable=False),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_accounts"),
        sa.UniqueConstraint("provisioner", "thumbprint", name="uq_acme_accounts_provisioner_thumbprint"),
        **_MYSQL,
    )
    op.create_table(
        "acme_nonces",
        sa.Column("value", sa.String(_ID), nullable=False),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("value", name="pk_acme_nonces"),
        **_MYSQL,
    )
    op.create_index("ix_acme_nonces_expires_at", "acme_nonces", ["expires_at"])
    op.create_table(
        "acme_orders",
        sa.Column("id", sa.String(_ID), nullable=False),
        sa.Column("account_id", sa.String(_ID), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("identifiers", sa.JSON(), nullable=False),
        sa.Column("not_before", _utc_datetime(), nullable=True),
        sa.Column("not_after", _utc_datetime(), nullable=True),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("serial", sa.String(48), nullable=True),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_orders"),
        **_MYSQL,
    )
    op.create_index("ix_acme_orders_account_id", "acme_orders", ["account_id"])
    op.create_index("ix_acme_orders_serial", "acme_orders", ["serial"])
    op.create_index("ix_acme_orders_expires_at", "acme_orders", ["expires_at"])
    op.create_table(
        "acme_authorizations",
        sa.Column("id", sa.String(_ID), nullable=False),
        sa.Column("order_id", sa.String(_ID), nullable=False),
        sa.Column("account_id", sa.String(_ID), nullable=False),
        sa.Column("identifier_type", sa.String(16), nullable=False),
        sa.Column("identifier_value", sa.String(255), nullable=False),
        sa.Column("wildcard", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("expires_at", _utc_datetime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_acme_authorizations"),
        **_MYSQL,
    )
    op.create_index("ix_acme_authorizations_order_id", "acme_authorizations", ["order_id"])
    op.create_index("ix_acme_authorizations_expires_at", "acme_authorizations", ["expires_at"])
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.String(_ID), nullable=False),
        sa.Column("authz_id", sa.String(_ID), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("token", sa.String(_ID), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("validated_at", _utc_datetime(), nullable=True),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_at", _utc_datetime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_acme_challenges"),
        **_MYSQL,
    )
    op.create_index("ix_acme_challenges_authz_id", "acme_challenges", ["authz_id"])
    op.create_index("ix_acme_challenges_status_claimed_at", "acme_challenges", ["status", "claimed_at"])
    op.create_table(
        "acme_eab_keys",
        sa.Column("key_id", sa.String(_ID), nullable=False),
        sa.Column("provisioner", sa.String(255), nullable=False),
        sa.Column("hmac_key", sa.String(_ID * 2), nullable=False),
        sa.Column("reference", sa.String(255), nullable=True),
        sa.Column("created_at", _utc_datetime(), nullable=False),
        sa.Column("account_id", sa.String(_ID), nullable=True),
        sa.Column("bound_at", _utc_datetime(), nullable=True),
        sa.PrimaryKeyConstraint("key_id", name="pk_acme_eab_keys"),
        **_MYSQL,
    )


def downgrade() -> None:
    op.drop_table("acme_eab_keys")
    op.drop_index("ix_acme_challenges_status_claimed_at", table_name="acme_challenges")
    op.drop_index("ix_acme_challenges_authz_id", table_name="acme_challenges")
    op.drop_table("acme_challenges")
    op.drop_index("ix_acme_authorizations_expires_at", table_name="acme_authorizations")
    op.drop_index("ix_acme_authorizations_order_id", table_name="acme_authorizations")
    op.drop_table("acme_authorizations")
    op.drop_index("ix_acme_orders_expires_at", table_name="acme_orders")
    op.drop_index("ix_acme_orders_serial", table_name="acme_orders")
    op.drop_index("ix_acme_orders_account_id", table_name="acme_orders")
    op.drop_table("acme_orders")
    op.drop_index("ix_acme_nonces_expires_at", table_name="acme_nonces")
    op.drop_table("acme_nonces")
    op.drop_table("acme_accounts")
