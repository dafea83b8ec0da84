"""The sweeper: finds partitions whose pending operations waited too long, so their bell can ring again."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection

from worker.store.tables import operations


def stale_partitions(conn: Connection, older_than_seconds: float) -> list[int]:
    """Partitions with an operation pending for longer than the threshold (uses the pending index)."""
    rows = conn.execute(
        sa.select(operations.c.partition)
        .where(
            operations.c.status == "pending",
            operations.c.created_at
            < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds),
        )
        .group_by(operations.c.partition)
        .order_by(operations.c.partition)
    ).all()
    return [r.partition for r in rows]
