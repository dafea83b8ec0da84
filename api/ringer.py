"""The ringer: turns partitions with newly stored operations into drain messages, off the request path.

A submit only marks its partitions dirty (a set update, no I/O). One task per API process wakes
on that, lets a tick pass so that everything stored meanwhile shares the ring, claims the dirty
partitions' doorbells in one Redis round trip (worker/doorbell.py: a bell already held means a
drain is queued or running and will see the new operations), and sends one Celery message per
partition it claimed, from its own thread so the event loop never blocks on the broker (plain
asyncio, not anyio's worker threads: those hold back a cancellation until the call returns, so a
shutdown could wait on a broker that does not answer). A partition
gets at most one ring per tick. A send that fails gives its bells back (so the next submit rings
again) and is retried after a pause; the sweeper covers whatever is still lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import redis.asyncio
import structlog

from worker.doorbell import claim_bells, release_bells

log = structlog.get_logger(__name__)

RETRY_PAUSE_SECONDS = 1.0


class Ringer:
    def __init__(
        self,
        client: redis.asyncio.Redis,
        send: Callable[[Sequence[int]], None],
        tick: float,
    ) -> None:
        self._redis = client
        self._send = send
        self._tick = tick
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self.rings = 0  # messages sent by this process
        self._sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledgerq-ringer")
        self._stopping = False

    def mark(self, partitions: Iterable[int]) -> None:
        """Called after a commit: these partitions have work a worker may not know of yet."""
        before = len(self._dirty)
        self._dirty.update(partitions)
        if len(self._dirty) != before:
            self._wake.set()

    async def run(self) -> None:
        """Until `stop`. Cancelling alone is not enough: redis-py's asyncio pipeline can swallow a
        cancellation that lands inside it (seen with redis 8.1), and the task would wait on."""
        while not self._stopping:
            await self._wake.wait()
            if self._stopping:
                return
            if self._tick > 0:
                await asyncio.sleep(self._tick)
            self._wake.clear()
            dirty, self._dirty = sorted(self._dirty), set()
            try:
                await self.ring(dirty)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._stopping:
                    return
                log.warning("ring_failed", partitions=dirty, error=str(exc))
                self.mark(dirty)
                await asyncio.sleep(RETRY_PAUSE_SECONDS)

    async def ring(self, partitions: Sequence[int]) -> None:
        claimed = await claim_bells(self._redis, partitions)
        if not claimed:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._sender, self._send, claimed)
        except BaseException:
            # Not sent: a held bell would make every later submit rely on the sweeper.
            await release_bells(self._redis, claimed)
            raise
        self.rings += len(claimed)

    def stop(self) -> None:
        """`run` returns at its next look; a send in flight finishes, no other starts."""
        self._stopping = True
        self._wake.set()
        self._sender.shutdown(wait=False, cancel_futures=True)
