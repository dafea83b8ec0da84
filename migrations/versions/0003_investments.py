"""investments: assets, daily closes, positions; allocation and redemption operations

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 05:27:37.721042
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "assets",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("ticker", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_assets_currency")),
        sa.CheckConstraint(
            "kind IN ('stock', 'fund', 'bond', 'etf', 'reit', 'crypto', 'other')",
            name=op.f("ck_assets_kind"),
        ),
        sa.CheckConstraint(
            "ticker ~ '^[A-Z0-9][A-Z0-9.\\-]{0,15}$'", name=op.f("ck_assets_ticker")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("ticker", name=op.f("uq_assets_ticker")),
    )
    op.create_table(
        "prices",
        sa.Column("asset_id", sa.UUID(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("close", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("close > 0", name=op.f("ck_prices_close_positive")),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_prices_asset_id_assets")
        ),
        sa.PrimaryKeyConstraint("asset_id", "day", name=op.f("pk_prices")),
    )
    op.create_table(
        "positions",
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("asset_id", sa.UUID(), nullable=False),
        sa.Column("units", sa.BigInteger(), nullable=False),
        sa.Column("invested", sa.BigInteger(), nullable=False),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("units >= 0 AND invested >= 0", name=op.f("ck_positions_non_negative")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_positions_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_positions_asset_id_assets")
        ),
        sa.PrimaryKeyConstraint("account_id", "asset_id", name=op.f("pk_positions")),
    )
    op.add_column("operations", sa.Column("asset_id", sa.UUID(), nullable=True))
    op.add_column("operations", sa.Column("quantity", sa.BigInteger(), nullable=True))
    op.add_column("operations", sa.Column("price", sa.BigInteger(), nullable=True))
    op.create_index(
        "ix_operations_investments_applied_at",
        "operations",
        ["applied_at"],
        unique=False,
        postgresql_where=sa.text("type IN ('allocation', 'redemption') AND status = 'succeeded'"),
    )
    op.create_foreign_key(
        op.f("fk_operations_asset_id_assets"), "operations", "assets", ["asset_id"], ["id"]
    )
    # Autogenerate does not compare CHECK constraints: the two that widen are replaced by hand.
    op.drop_constraint(op.f("ck_operations_type"), "operations", type_="check")
    op.create_check_constraint(
        op.f("ck_operations_type"),
        "operations",
        "type IN ('deposit', 'withdrawal', 'transfer', 'allocation', 'redemption')",
    )
    op.drop_constraint(op.f("ck_operations_amount_positive"), "operations", type_="check")
    op.create_check_constraint(
        op.f("ck_operations_amount_positive"),
        "operations",
        "amount > 0 OR (type = 'redemption' AND quantity > 0 AND status <> 'succeeded')",
    )


def downgrade() -> None:
    # Refuses (the CHECKs fail) while investment operations exist: they cannot be represented below.
    op.drop_constraint(op.f("ck_operations_amount_positive"), "operations", type_="check")
    op.create_check_constraint(op.f("ck_operations_amount_positive"), "operations", "amount > 0")
    op.drop_constraint(op.f("ck_operations_type"), "operations", type_="check")
    op.create_check_constraint(
        op.f("ck_operations_type"), "operations", "type IN ('deposit', 'withdrawal', 'transfer')"
    )
    op.drop_constraint(op.f("fk_operations_asset_id_assets"), "operations", type_="foreignkey")
    op.drop_index(
        "ix_operations_investments_applied_at",
        table_name="operations",
        postgresql_where=sa.text("type IN ('allocation', 'redemption') AND status = 'succeeded'"),
    )
    op.drop_column("operations", "price")
    op.drop_column("operations", "quantity")
    op.drop_column("operations", "asset_id")
    op.drop_table("positions")
    op.drop_table("prices")
    op.drop_table("assets")
