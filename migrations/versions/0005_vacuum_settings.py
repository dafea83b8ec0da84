"""autovacuum settings for the two tables every operation rewrites

Every operation is inserted pending and updated once when applied, and every batch updates its
accounts' balances. With PostgreSQL's default scale factors (20% dead rows before a vacuum) a
table of ten million operations would carry two million dead versions, and the partial index of
pending operations their dead entries: a balance read of a busy account (its pending debits)
would walk them all. Vacuuming these tables at 1% keeps that index small.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 08:15:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SETTINGS = {
    "operations": (
        "autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_insert_scale_factor = 0.05,"
        " autovacuum_analyze_scale_factor = 0.02"
    ),
    "accounts": "autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.05",
}


def upgrade() -> None:
    for table, settings in SETTINGS.items():
        op.execute(f"ALTER TABLE {table} SET ({settings})")


def downgrade() -> None:
    for table, settings in SETTINGS.items():
        names = ", ".join(part.split("=")[0].strip() for part in settings.split(","))
        op.execute(f"ALTER TABLE {table} RESET ({names})")
