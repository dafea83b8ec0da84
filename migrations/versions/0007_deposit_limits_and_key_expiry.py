"""deposit limits per subject and currency; API keys may expire

`deposit_limits` holds, per user or API key and currency, the admin's limits (NULL: the
LEDGERQ_DEPOSIT_* defaults) and the rolling day of deposits intake counts against them.
`api_keys.expires_at`: a key is refused from that moment on (NULL: never).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deposit_limits",
        sa.Column("subject_id", sa.UUID(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("subject_kind", sa.Text(), nullable=False),
        sa.Column("per_operation", sa.BigInteger(), nullable=True),
        sa.Column("daily", sa.BigInteger(), nullable=True),
        sa.Column("window_head", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "window_sums", postgresql.ARRAY(sa.BigInteger()), server_default="{}", nullable=False
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "subject_kind IN ('user', 'api_key')", name=op.f("ck_deposit_limits_subject_kind")
        ),
        sa.CheckConstraint("currency ~ '^[A-Z]{3}$'", name=op.f("ck_deposit_limits_currency")),
        sa.CheckConstraint(
            "(per_operation IS NULL OR per_operation > 0) AND (daily IS NULL OR daily > 0)",
            name=op.f("ck_deposit_limits_limits_positive"),
        ),
        sa.PrimaryKeyConstraint("subject_id", "currency", name=op.f("pk_deposit_limits")),
    )
    op.add_column("api_keys", sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("api_keys", "expires_at")
    op.drop_table("deposit_limits")
