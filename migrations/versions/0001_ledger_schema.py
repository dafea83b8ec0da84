"""ledger schema: users, accounts, operations, entries

Revision ID: 0001
Revises:
Create Date: 2026-11-24 04:37:07.341241
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_index(
        "uq_users_username_lower", "users", [sa.literal_column("lower(username)")], unique=True
    )
    op.create_table(
        "accounts",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("owner_id", sa.UUID(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("balance", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("overdraft_limit", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_accounts_currency")),
        sa.CheckConstraint(
            "kind IN ('checking', 'savings', 'world', 'custody')", name=op.f("ck_accounts_kind")
        ),
        sa.CheckConstraint(
            "kind IN ('world', 'custody') OR balance >= -overdraft_limit",
            name=op.f("ck_accounts_balance_floor"),
        ),
        sa.CheckConstraint("overdraft_limit >= 0", name=op.f("ck_accounts_overdraft_limit")),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_accounts_owner_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
    )
    op.create_index("ix_accounts_owner_id_id", "accounts", ["owner_id", "id"], unique=False)
    op.create_table(
        "operations",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("partition", sa.SmallInteger(), nullable=False),
        sa.Column("principal_id", sa.UUID(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("to_account_id", sa.UUID(), nullable=True),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("status", sa.Text(), server_default="pending", nullable=False),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_operations_status"),
        ),
        sa.CheckConstraint(
            "type IN ('deposit', 'withdrawal', 'transfer')", name=op.f("ck_operations_type")
        ),
        sa.CheckConstraint("amount > 0", name=op.f("ck_operations_amount_positive")),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_operations_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["to_account_id"], ["accounts.id"], name=op.f("fk_operations_to_account_id_accounts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_operations")),
        sa.UniqueConstraint(
            "principal_id",
            "idempotency_key",
            name=op.f("uq_operations_principal_id_idempotency_key"),
        ),
        sa.UniqueConstraint("seq", name=op.f("uq_operations_seq")),
    )
    op.create_index(
        "ix_operations_account_id_seq", "operations", ["account_id", "seq"], unique=False
    )
    op.create_index(
        "ix_operations_pending_account_id",
        "operations",
        ["account_id"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_operations_pending_partition_seq",
        "operations",
        ["partition", "seq"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_operations_principal_id_seq", "operations", ["principal_id", "seq"], unique=False
    )
    op.create_index(
        "ix_operations_to_account_id_seq", "operations", ["to_account_id", "seq"], unique=False
    )
    op.create_table(
        "entries",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("account_id", sa.UUID(), nullable=False),
        sa.Column("operation_id", sa.UUID(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("category", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_entries_account_id_accounts")
        ),
        sa.ForeignKeyConstraint(
            ["operation_id"], ["operations.id"], name=op.f("fk_entries_operation_id_operations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entries")),
    )
    op.create_index("ix_entries_account_id_id", "entries", ["account_id", "id"], unique=False)
    op.create_index("ix_entries_operation_id", "entries", ["operation_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_entries_operation_id", table_name="entries")
    op.drop_index("ix_entries_account_id_id", table_name="entries")
    op.drop_table("entries")
    op.drop_index("ix_operations_to_account_id_seq", table_name="operations")
    op.drop_index("ix_operations_principal_id_seq", table_name="operations")
    op.drop_index(
        "ix_operations_pending_partition_seq",
        table_name="operations",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index(
        "ix_operations_pending_account_id",
        table_name="operations",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_operations_account_id_seq", table_name="operations")
    op.drop_table("operations")
    op.drop_index("ix_accounts_owner_id_id", table_name="accounts")
    op.drop_table("accounts")
    op.drop_index("uq_users_username_lower", table_name="users")
    op.drop_table("users")
