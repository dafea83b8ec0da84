"""Group commit: the operations of concurrent submits in one API process are written together.

A submit hands its new operations to the process's `GroupCommitter` and waits. When no group is
being written, the operations go out at once (no artificial wait); while one group is being
written, everything that arrives forms the next group, written in one multi-row INSERT (one
transaction) as soon as the previous group committed. Each submit is answered only after its
group committed. Under load a commit (one WAL flush, one round trip) is shared by every request
that arrived during the previous one; idle, a submit costs what a lone INSERT costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import structlog

from worker.store.queries import NewOperation, OperationKey, Record

log = structlog.get_logger(__name__)

Writer = Callable[[Sequence[NewOperation]], Awaitable[dict[OperationKey, Record]]]


class GroupCommitter:
    """One group in flight per process; the next one gathers while it commits.

    `write` stores a group (all or nothing) and returns the stored row per (principal, key);
    `committed` learns the partitions that received new operations, once they are durable.
    A failed write fails exactly the submits of that group, with the write's exception.
    """

    def __init__(self, write: Writer, committed: Callable[[Iterable[int]], None]) -> None:
        self._write = write
        self._committed = committed
        self._waiting: list[
            tuple[Sequence[NewOperation], asyncio.Future[dict[OperationKey, Record]]]
        ] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0  # groups committed by this process (tests and metrics read it)

    async def store(self, news: Sequence[NewOperation]) -> dict[OperationKey, Record]:
        """Wait until `news` (and whatever joined their group) committed; the stored rows."""
        future: asyncio.Future[dict[OperationKey, Record]] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiting.append((news, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                await self._commit(group)
        finally:
            self._flusher = None

    async def _commit(
        self,
        group: list[tuple[Sequence[NewOperation], asyncio.Future[dict[OperationKey, Record]]]],
    ) -> None:
        news = [new for submitted, _ in group for new in submitted]
        try:
            stored = await self._write(news)
        except Exception as exc:
            # Nothing of this group was stored (one statement); earlier groups are untouched.
            log.warning("group_commit_failed", operations=len(news), error=str(exc))
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.groups += 1
        ids = {new.id for new in news}
        self._committed({row.partition for row in stored.values() if row.id in ids})
        for _, future in group:
            # A request whose client went away was cancelled; its operation is stored all the same.
            if not future.done():
                future.set_result(stored)
