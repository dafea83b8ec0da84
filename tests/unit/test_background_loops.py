"""The API's background loops end when cancelled, even when a driver swallowed the cancellation.

redis-py's asyncio client lets a command it has sent finish when its task is cancelled and
returns normally: the task stays marked as cancelling, but the loop's next sleep is no longer
interrupted, so a lifespan shutdown awaiting the loop hung for good (test_group_commit did, under
the queue gauges' refresher). The loops check for a pending cancellation before they sleep.
"""

from __future__ import annotations

import asyncio
from typing import Any

from api.metrics import QueueGauges
from api.waiters import CompletionWaiters


async def swallow_cancellation() -> None:
    """What redis-py does with a command in flight: the cancellation is absorbed."""
    try:
        await asyncio.sleep(0.5)
    except asyncio.CancelledError:
        await asyncio.sleep(0)  # finish the "command"; return as if nothing happened


class SwallowingGauges(QueueGauges):
    async def refresh(self, services: Any) -> None:
        self.refreshes += 1
        await swallow_cancellation()


async def ends_when_cancelled(task: asyncio.Task[None]) -> bool:
    await asyncio.sleep(0.05)  # inside the swallowing step
    task.cancel()
    try:
        done, _ = await asyncio.wait({task}, timeout=10)
        return task in done and task.cancelled()
    finally:
        if not task.done():  # a second cancel interrupts the sleep the first could not
            task.cancel()
            await asyncio.wait({task}, timeout=5)


async def test_queue_gauges_refresher_ends_when_its_refresh_swallowed_the_cancel() -> None:
    gauges = SwallowingGauges(interval=3600)
    task = asyncio.create_task(gauges.run(services=None))  # type: ignore[arg-type]
    assert await ends_when_cancelled(task)
    assert gauges.refreshes == 1


async def test_follow_watch_ends_when_its_look_swallowed_the_cancel() -> None:
    waiters = CompletionWaiters(recheck=0.01)
    looked: list[list[str]] = []

    async def final_operations(ids: list[str]) -> list[str]:
        looked.append(ids)
        await swallow_cancellation()
        return []

    async def balances(ids: list[str]) -> dict[str, int]:
        return {}

    with waiters.watching("op-1"):
        task = asyncio.create_task(waiters.watch(final_operations, balances))
        assert await ends_when_cancelled(task)
    assert looked and looked[0] == ["op-1"]
