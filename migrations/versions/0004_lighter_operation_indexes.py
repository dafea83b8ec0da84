"""lighter operation indexes: no unique index on seq, transfers-only index on to_account_id

Every applied operation rewrites its row, and each index on operations costs that update one
more insert; these two bought nothing the identity and a partial index do not give.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 06:12:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_constraint(op.f("uq_operations_seq"), "operations", type_="unique")
    op.drop_index("ix_operations_to_account_id_seq", table_name="operations")
    op.create_index(
        "ix_operations_to_account_id_seq",
        "operations",
        ["to_account_id", "seq"],
        unique=False,
        postgresql_where=sa.text("to_account_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_operations_to_account_id_seq",
        table_name="operations",
        postgresql_where=sa.text("to_account_id IS NOT NULL"),
    )
    op.create_index(
        "ix_operations_to_account_id_seq", "operations", ["to_account_id", "seq"], unique=False
    )
    op.create_unique_constraint(op.f("uq_operations_seq"), "operations", ["seq"])
