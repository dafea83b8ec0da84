"""the available-balance index holds pending debits only

The partial index of pending operations by account (for available_balance) was also usable by
the apply loop's query (pending operations of a partition by seq). With statistics taken while
nothing was pending, the planner estimated one pending row and chose it, plus a sort, over the
partition index: every batch walked every pending row, and a 100,000-operation backlog drained at
4,400/s instead of 16,000/s. Restricted to debits, the predicate no longer matches that query.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 08:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_operations_pending_debits_account_id",
        "operations",
        ["account_id"],
        postgresql_where=sa.text(
            "status = 'pending' AND type IN ('withdrawal', 'transfer', 'allocation')"
        ),
    )
    op.drop_index("ix_operations_pending_account_id", table_name="operations")


def downgrade() -> None:
    op.create_index(
        "ix_operations_pending_account_id",
        "operations",
        ["account_id"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_operations_pending_debits_account_id", table_name="operations")
