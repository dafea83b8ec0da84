"""The queue's facts as PostgreSQL holds them: what is pending, per partition. Every statement
here reads the partial pending index (`ix_operations_pending_partition_seq`), never the whole table.

Three readers: the API's backpressure (`api/backlog.py`, `pending_counts`), the API's queue
gauges (`api/metrics.py`, `pending_by_partition`) and the beat's sweep (`worker/tasks.py`
`sweep`, `stale_partitions`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.store.tables import operations

_PENDING = operations.c.status == "pending"


async def pending_counts(conn: AsyncConnection) -> dict[int, int]:
    """Pending operations per partition (reads only the partial pending index)."""
    rows = (
        await conn.execute(
            sa.select(operations.c.partition, sa.func.count())
            .where(_PENDING)
            .group_by(operations.c.partition)
        )
    ).all()
    return {r[0]: r[1] for r in rows}


_COUNTS = (
    sa.select(operations.c.partition, sa.func.count().label("n"))
    .where(_PENDING)
    .group_by(operations.c.partition)
    .subquery()
)
# Each partition's first pending operation in seq order, from the pending index: one row fetched
# per partition, where min(created_at) fetched every pending row.
_OLDEST = (
    sa.select(operations.c.created_at)
    .where(_PENDING, operations.c.partition == _COUNTS.c.partition)
    .order_by(operations.c.seq)
    .limit(1)
    .lateral()
)
_PENDING_BY_PARTITION = sa.select(
    _COUNTS.c.partition,
    _COUNTS.c.n,
    sa.func.extract("epoch", sa.func.clock_timestamp() - _OLDEST.c.created_at),
).select_from(_COUNTS.join(_OLDEST, sa.true()))


async def pending_by_partition(conn: AsyncConnection) -> dict[int, tuple[int, float]]:
    """partition -> (pending operations, seconds the oldest has waited), one statement."""
    rows = (await conn.execute(_PENDING_BY_PARTITION)).all()
    return {int(p): (int(n), max(0.0, float(a))) for p, n, a in rows}


def stale_partitions(conn: Connection, older_than_seconds: float) -> list[int]:
    """Partitions with an operation pending for longer than the threshold (the sweeper's question)."""
    rows = conn.execute(
        sa.select(operations.c.partition)
        .where(
            _PENDING,
            operations.c.created_at
            < sa.func.now() - sa.func.make_interval(0, 0, 0, 0, 0, 0, older_than_seconds),
        )
        .group_by(operations.c.partition)
        .order_by(operations.c.partition)
    ).all()
    return [r.partition for r in rows]
