"""Group commit: the operations of concurrent submits in one API process are written together.

The same gathering serves the account directory's cache misses (api/directory.py): concurrent
lookups of accounts the process has not seen yet share one SELECT.

A submit hands its new operations to the process's `GroupCommitter` and waits. When no group is
being written, the operations go out at once (no artificial wait); while one group is being
written, everything that arrives forms the next group, written in one multi-row INSERT (one
transaction) as soon as the previous group committed. Each submit is answered only after its
group committed. Under load a commit (one WAL flush, one round trip) is shared by every request
that arrived during the previous one; idle, a submit costs what a lone INSERT costs.

Deposit limits are checked here, once per group, not per request: a group holding deposits of
limited principals stores its operations, locks their limit rows, judges each request's new
deposits against the rolling windows and writes them back, in one transaction (one round trip
more than a group without deposits; worker/store/queries.py insert_operations_limited). A request
over a limit is refused whole, nothing of it stored; the other requests of its group go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Generic, TypeVar

import structlog

from worker.store.fast import FastStore
from worker.store.queries import (
    NewOperation,
    OperationKey,
    Record,
    Stored,
    insert_operations_limited,
)

log = structlog.get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Grouped(Generic[T, R]):
    """One call in flight per process; the calls that arrive meanwhile are gathered into the next.

    `call` receives the items of every caller in the group and returns one result that all of
    them share (a mapping they look themselves up in); `done` sees each successful group first.
    A failed call fails exactly the callers of that group, with its exception.
    """

    def __init__(
        self,
        call: Callable[[list[T]], Awaitable[R]],
        done: Callable[[list[T], R], None] | None = None,
    ) -> None:
        self._call = call
        self._done = done
        self._waiting: list[tuple[Sequence[T], asyncio.Future[R]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0  # groups completed by this process (tests read it)

    async def __call__(self, items: Sequence[T]) -> R:
        """Wait until `items` (and whatever joined their group) went through `call`; its result."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((items, future))
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                await self._run(group)
        finally:
            self._flusher = None

    async def _call_group(self, submitted: list[Sequence[T]]) -> R:
        """The group's one call, given each caller's items apart (here: all of them as one list)."""
        return await self._call([item for items in submitted for item in items])

    async def _run(self, group: list[tuple[Sequence[T], asyncio.Future[R]]]) -> None:
        items = [item for submitted, _ in group for item in submitted]
        try:
            result = await self._call_group([submitted for submitted, _ in group])
        except Exception as exc:
            log.warning("group_failed", items=len(items), error=str(exc))
            for _, future in group:
                if not future.done():
                    future.set_exception(exc)
            return
        self.groups += 1
        if self._done is not None:
            self._done(items, result)
        for _, future in group:
            # A request whose client went away was cancelled; its items went through all the same.
            if not future.done():
                future.set_result(result)


class GroupCommitter(Grouped[NewOperation, dict[OperationKey, Record]]):
    """Intake's writer. Each caller's operations are one request, which a deposit limit takes or
    refuses whole; the shared result is a `Stored`, whose `refused` names the operations of the
    requests refused."""

    def __init__(self, fast: FastStore, committed: Callable[[Iterable[int]], None]) -> None:
        def created_partitions(
            news: list[NewOperation], stored: dict[OperationKey, Record]
        ) -> None:
            ids = {new.id for new in news}
            committed({row.partition for row in stored.values() if row.id in ids})

        super().__init__(lambda news: insert_operations_limited(fast, [news]), created_partitions)
        self._fast = fast

    async def _call_group(self, submitted: list[Sequence[NewOperation]]) -> Stored:
        return await insert_operations_limited(self._fast, submitted)


def group_commit(
    fast: FastStore, committed: Callable[[Iterable[int]], None]
) -> Grouped[NewOperation, dict[OperationKey, Record]]:
    """Intake's writer: each group is one multi-row INSERT, one transaction (all or nothing;
    with limited deposits, the limit check joins that transaction); `committed` learns the
    partitions that received new operations, once they are durable."""
    return GroupCommitter(fast, committed)
