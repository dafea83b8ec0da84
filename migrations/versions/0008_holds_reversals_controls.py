"""holds, captures, voids, reversals, account controls, metadata

`holds`: one row per applied hold. `accounts.held` (the open holds' total, subtracted from what
debits may spend; the balance floor now counts it), `frozen`, `closed_at`, `metadata`.
`operations.hold_id` (captures and voids), `expires_in` (holds), `reversal_of` and
`reversed_amount` (reversals and what they took back), `metadata` with a GIN index over the rows
that have it. New operation types; account controls (freeze, unfreeze, close) move no money; a
reversal of "the rest" learns its amount at apply time. Holds count as pending debits.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 06:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD_TYPES = "('deposit', 'withdrawal', 'transfer', 'allocation', 'redemption')"
_NEW_TYPES = (
    "('deposit', 'withdrawal', 'transfer', 'allocation', 'redemption', 'hold', 'capture', 'void',"
    " 'reversal', 'freeze', 'unfreeze', 'close')"
)
_OLD_AMOUNT = "amount > 0 OR (type = 'redemption' AND quantity > 0 AND status <> 'succeeded')"
_NEW_AMOUNT = (
    _OLD_AMOUNT + " OR (type = 'reversal' AND amount = 0 AND status <> 'succeeded')"
    " OR (type IN ('freeze', 'unfreeze', 'close') AND amount = 0)"
)


def _timestamp(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(
        name,
        sa.DateTime(timezone=True),
        nullable=nullable,
        server_default=None if nullable else sa.text("now()"),
    )


def upgrade() -> None:
    op.add_column(
        "accounts", sa.Column("held", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "accounts", sa.Column("frozen", sa.Boolean(), server_default=sa.false(), nullable=False)
    )
    op.add_column("accounts", _timestamp("closed_at", nullable=True))
    op.add_column("accounts", sa.Column("metadata", postgresql.JSONB(), nullable=True))
    op.create_check_constraint(op.f("ck_accounts_held"), "accounts", "held >= 0")
    op.drop_constraint(op.f("ck_accounts_balance_floor"), "accounts", type_="check")
    op.create_check_constraint(
        op.f("ck_accounts_balance_floor"),
        "accounts",
        "kind IN ('world', 'custody') OR balance - held >= -overdraft_limit",
    )

    op.add_column("operations", sa.Column("hold_id", sa.UUID(), nullable=True))
    op.add_column("operations", sa.Column("expires_in", sa.Integer(), nullable=True))
    op.add_column("operations", sa.Column("reversal_of", sa.UUID(), nullable=True))
    op.add_column(
        "operations",
        sa.Column("reversed_amount", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column("operations", sa.Column("metadata", postgresql.JSONB(), nullable=True))
    op.drop_constraint(op.f("ck_operations_type"), "operations", type_="check")
    op.create_check_constraint(op.f("ck_operations_type"), "operations", f"type IN {_NEW_TYPES}")
    op.drop_constraint(op.f("ck_operations_amount_positive"), "operations", type_="check")
    op.create_check_constraint(op.f("ck_operations_amount_positive"), "operations", _NEW_AMOUNT)
    op.create_check_constraint(
        op.f("ck_operations_reversed_amount"),
        "operations",
        "reversed_amount >= 0 AND reversed_amount <= amount",
    )
    op.create_index(
        "ix_operations_metadata",
        "operations",
        ["metadata"],
        postgresql_using="gin",
        postgresql_ops={"metadata": "jsonb_path_ops"},
        postgresql_where=sa.text("metadata IS NOT NULL"),
    )
    op.drop_index("ix_operations_pending_debits_account_id", table_name="operations")
    op.create_index(
        "ix_operations_pending_debits_account_id",
        "operations",
        ["account_id"],
        postgresql_where=sa.text(
            "status = 'pending' AND type IN ('withdrawal', 'transfer', 'allocation', 'hold')"
        ),
    )

    op.create_table(
        "holds",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("to_account_id", sa.UUID(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("captured", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("released", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("status", sa.Text(), server_default="open", nullable=False),
        _timestamp("expires_at"),
        _timestamp("created_at"),
        _timestamp("closed_at", nullable=True),
        sa.Column("closed_by", sa.UUID(), nullable=True),
        sa.CheckConstraint(
            "status IN ('open', 'captured', 'voided', 'expired')", name=op.f("ck_holds_status")
        ),
        sa.CheckConstraint(
            "amount > 0 AND captured >= 0 AND released >= 0 AND captured + released <= amount"
            " AND (status = 'open') = (captured + released = 0)"
            " AND (status = 'open' OR captured + released = amount)",
            name=op.f("ck_holds_amounts"),
        ),
        sa.ForeignKeyConstraint(["id"], ["operations.id"], name=op.f("fk_holds_id_operations")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_holds_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["to_account_id"], ["accounts.id"], name=op.f("fk_holds_to_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_holds")),
    )
    op.create_index("ix_holds_account_id_id", "holds", ["account_id", "id"])
    op.create_index(
        "ix_holds_open_expires_at",
        "holds",
        ["expires_at"],
        postgresql_where=sa.text("status = 'open'"),
    )


def downgrade() -> None:
    op.drop_table("holds")
    op.drop_index("ix_operations_pending_debits_account_id", table_name="operations")
    op.create_index(
        "ix_operations_pending_debits_account_id",
        "operations",
        ["account_id"],
        postgresql_where=sa.text(
            "status = 'pending' AND type IN ('withdrawal', 'transfer', 'allocation')"
        ),
    )
    op.drop_index("ix_operations_metadata", table_name="operations")
    # Money history is never deleted to fit an older schema: refuse instead.
    refuse = (
        "DO $$ BEGIN IF EXISTS (SELECT 1 FROM operations WHERE type NOT IN "  # noqa: S608 (constants)
        f"{_OLD_TYPES}) THEN RAISE EXCEPTION 'operations of types revision 0007 does not know "
        "exist; downgrading would lose them'; END IF; END $$"
    )
    op.execute(refuse)
    op.drop_constraint(op.f("ck_operations_reversed_amount"), "operations", type_="check")
    op.drop_constraint(op.f("ck_operations_amount_positive"), "operations", type_="check")
    op.create_check_constraint(op.f("ck_operations_amount_positive"), "operations", _OLD_AMOUNT)
    op.drop_constraint(op.f("ck_operations_type"), "operations", type_="check")
    op.create_check_constraint(op.f("ck_operations_type"), "operations", f"type IN {_OLD_TYPES}")
    for column in ("metadata", "reversed_amount", "reversal_of", "expires_in", "hold_id"):
        op.drop_column("operations", column)
    op.drop_constraint(op.f("ck_accounts_balance_floor"), "accounts", type_="check")
    op.create_check_constraint(
        op.f("ck_accounts_balance_floor"),
        "accounts",
        "kind IN ('world', 'custody') OR balance >= -overdraft_limit",
    )
    op.drop_constraint(op.f("ck_accounts_held"), "accounts", type_="check")
    for column in ("metadata", "closed_at", "frozen", "held"):
        op.drop_column("accounts", column)
