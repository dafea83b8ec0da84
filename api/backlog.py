"""Backpressure: the API refuses new operations for a partition whose pending backlog is too long."""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.store import queue

log = structlog.get_logger(__name__)


class BacklogMonitor:
    """Pending counts per partition, refreshed in the background (one grouped count per interval).

    Checking a cached count keeps the accept path at one INSERT; the limit is approximate by at
    most one interval's worth of submissions, which is what a backpressure threshold needs.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[int, int] = {}

    def is_full(self, partition: int) -> bool:
        return self.limit > 0 and self.counts.get(partition, 0) >= self.limit

    async def refresh(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            self.counts = await queue.pending_counts(conn)

    async def run(self, engine: AsyncEngine, interval: float = 1.0) -> None:
        while True:
            try:
                await self.refresh(engine)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed refresh keeps the last counts
                log.warning("backlog_refresh_failed", error=str(exc))
            await asyncio.sleep(interval)
