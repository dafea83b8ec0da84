"""Partition leases: workers share the partitions fairly, and take over those of a worker that stops.

Each worker process in `auto` mode (LEDGERQ_WORKER_PARTITIONS unset or `auto`) keeps, in Redis:

- a registry of live workers, `ledgerq:workers`, a sorted set of worker ids scored by their last
  heartbeat (Redis server time, so hosts' clocks do not matter); entries older than the lease TTL
  are pruned by whoever beats next;
- one lease per partition it holds, `ledgerq:lease:<p>` = its worker id, set with NX and a TTL and
  renewed by every heartbeat.

Every heartbeat it computes its fair share, ceil(partitions / live workers), releases its extras
(highest-numbered first) and acquires free partitions up to its share. It consumes exactly the
queues of the partitions it holds (plus the control queue, always), stops consuming a partition
before it releases the lease (and only when no message of that partition is still in its hands),
and rings a partition once right after acquiring it, so work left by a dead worker does not wait
for the sweeper. A worker that stops cleanly releases its leases at once; one that dies loses them
when they expire, a few seconds later.

Correctness never depends on leases: the apply loop's advisory lock serialises appliers of a
partition, and a duplicate or stray doorbell finds nothing pending. Leases only spread the load
and keep one consumer per partition in steady state.

The pure part (what to acquire or release given the state) is `plan_leases`; the Redis and Celery
glue is `PartitionLeases`, started from the worker_ready signal and stopped on worker_shutdown.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import redis
import structlog
from celery import signals
from celery.worker import state as worker_state

from worker.routing import DRAIN_TASK, QUEUE_PREFIX, queue_for_partition

log = structlog.get_logger(__name__)

REGISTRY_KEY = "ledgerq:workers"
LEASE_PREFIX = "ledgerq:lease:"
# A lease outlives a missed heartbeat or two; a dead worker's partitions move after about this long.
LEASE_TTL = 4.0
HEARTBEAT_INTERVAL = 1.0
# How long the lease thread waits for the consumer's event loop to apply a change.
CONSUMER_TIMEOUT = 5.0


def lease_key(partition: int) -> str:
    return f"{LEASE_PREFIX}{partition}"


# --------------------------------------------------------------------------- the pure part


def fair_share(partitions: int, live_workers: int) -> int:
    """Most partitions one worker should hold: the shares of all live workers cover every partition."""
    return math.ceil(partitions / max(live_workers, 1))


@dataclass(frozen=True)
class LeasePlan:
    share: int
    # Held by this worker beyond its share: release these (the highest-numbered extras).
    release: tuple[int, ...]
    # Free partitions to try, in order, until `need` of them are acquired.
    acquire: tuple[int, ...]
    need: int


def plan_leases(
    me: str, partitions: int, live_workers: Collection[str], holders: Mapping[int, str | None]
) -> LeasePlan:
    """What this worker should release or acquire, given the live workers and each lease's holder.

    A partition held by a worker that is not in `live_workers` (dead, its lease not yet expired) is
    not free: nobody can take it before the lease expires.
    """
    live = set(live_workers) | {me}
    share = fair_share(partitions, len(live))
    mine = sorted(p for p in range(partitions) if holders.get(p) == me)
    if len(mine) > share:
        return LeasePlan(share, release=tuple(mine[share:]), acquire=(), need=0)
    free = tuple(p for p in range(partitions) if not holders.get(p))
    return LeasePlan(share, release=(), acquire=free, need=min(share - len(mine), len(free)))


def partition_of_queue(name: str) -> int | None:
    """ledgerq.p3 -> 3; any other queue -> None."""
    suffix = name.removeprefix(QUEUE_PREFIX)
    return int(suffix) if suffix != name and suffix.isdigit() else None


# --------------------------------------------------------------------------- Redis


# One round trip per heartbeat: register, prune the dead, renew this worker's leases (and reclaim
# any it still consumes whose key expired unclaimed), then read the registry and every holder.
# Scored by the Redis server's clock (TIME before writes: Redis 5+ replicates scripts by effects).
_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local me, ttl = ARGV[1], tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, me)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - ttl)
local reclaim = {}
for i = 3, #ARGV do reclaim[tonumber(ARGV[i]) + 2] = true end
local holders = {}
for i = 2, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder == me then
    redis.call('PEXPIRE', KEYS[i], ttl)
  elseif not holder and reclaim[i] then
    redis.call('SET', KEYS[i], me, 'PX', ttl)
    holder = me
  end
  holders[i - 1] = holder
end
return {redis.call('ZRANGE', KEYS[1], 0, -1), holders}
"""

# Delete only leases this worker still holds: never one another worker has taken since.
_RELEASE = """
local n = 0
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('DEL', KEYS[i])
    n = n + 1
  end
end
return n
"""


@dataclass(frozen=True)
class LeaseState:
    live: tuple[str, ...]
    holders: dict[int, str | None]


def _text(value: Any) -> str | None:
    if value is None or value is False:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


class LeaseStore:
    """The lease keys and the worker registry in Redis."""

    def __init__(self, client: redis.Redis, partitions: int, ttl: float = LEASE_TTL) -> None:
        self.client = client
        self.partitions = partitions
        self.ttl_ms = int(ttl * 1000)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._release = client.register_script(_RELEASE)

    def heartbeat(self, me: str, consuming: Collection[int]) -> LeaseState:
        keys = [REGISTRY_KEY, *(lease_key(p) for p in range(self.partitions))]
        live, holders = self._heartbeat(keys=keys, args=[me, self.ttl_ms, *sorted(consuming)])
        return LeaseState(
            live=tuple(t for t in map(_text, live) if t),
            holders={p: _text(h) for p, h in enumerate(holders)},
        )

    def acquire(self, me: str, partition: int) -> bool:
        return bool(self.client.set(lease_key(partition), me, nx=True, px=self.ttl_ms))

    def release(self, me: str, partitions: Collection[int]) -> int:
        if not partitions:
            return 0
        return int(self._release(keys=[lease_key(p) for p in partitions], args=[me]))

    def leave(self, me: str) -> None:
        """A clean goodbye: every lease this worker holds, and its registry entry."""
        self.release(me, range(self.partitions))
        self.client.zrem(REGISTRY_KEY, me)

    def holders(self) -> dict[int, str | None]:
        """Who holds each partition (for tests and the admin view)."""
        values = self.client.mget([lease_key(p) for p in range(self.partitions)])
        return {p: _text(v) for p, v in enumerate(values)}


# --------------------------------------------------------------------------- Celery


@dataclass(frozen=True)
class Consumption:
    consuming: frozenset[int]
    # Partitions with a drain message reserved or running in this worker.
    busy: frozenset[int]


class Consumers(Protocol):
    def reconcile(self, wanted: frozenset[int]) -> Consumption | None: ...


class CeleryConsumers:
    """Starts and cancels this worker's partition consumers.

    Why not `app.control.add_consumer(..., destination=[me])`: that is a broadcast through the
    broker to our own remote-control consumer, which can be lost (a Redis pub/sub message sent
    while the worker reconnects is gone) and only answers "scheduled". The remote-control handler
    itself just does `consumer.call_soon(consumer.add_task_queue, ...)`, so we do the same without
    the round trip: kombu's hub runs the callback on the consumer's own thread (its connection and
    channel are not thread-safe) and wakes its loop to do so. The callback compares what is wanted
    with what is consumed, so a change that failed (broker reconnecting) is retried next heartbeat;
    add_task_queue/cancel_task_queue also update the worker's queue selection first, so a
    consumer rebuilt after a reconnect consumes the right set.
    """

    def __init__(self, consumer: Any, partitions: int, timeout: float = CONSUMER_TIMEOUT) -> None:
        self.consumer = consumer
        self.partitions = partitions
        self.timeout = timeout

    def reconcile(self, wanted: frozenset[int]) -> Consumption | None:
        """Consume exactly `wanted`; None if the consumer's loop did not get to it in time."""
        done = threading.Event()
        box: dict[str, Any] = {}

        def run() -> None:
            try:
                box["result"] = self._apply(wanted)
            except Exception as exc:  # reported to the lease thread; never into Celery's loop
                box["error"] = exc
            finally:
                done.set()

        self.consumer.call_soon(run)
        if not done.wait(self.timeout):
            return None
        if "error" in box:
            raise box["error"]
        result: Consumption = box["result"]
        return result

    def _selected(self) -> set[int]:
        names = self.consumer.app.amqp.queues.consume_from or {}
        return {p for p in map(partition_of_queue, names) if p is not None}

    def _apply(self, wanted: frozenset[int]) -> Consumption:
        """Runs on the consumer's thread."""
        task_consumer = self.consumer.task_consumer
        for p in sorted(self._selected() - wanted):
            self.consumer.cancel_task_queue(queue_for_partition(p))
        for p in sorted(wanted):
            queue = queue_for_partition(p)
            if p not in self._selected() or not task_consumer.consuming_from(queue):
                self.consumer.add_task_queue(queue)
        return Consumption(
            consuming=frozenset(self._selected()), busy=_busy_partitions(self.partitions)
        )


def _busy_partitions(partitions: int) -> frozenset[int]:
    """Partitions whose drain message this worker has reserved (prefetched) or is running."""
    for _ in range(3):
        try:
            requests = list(worker_state.reserved_requests) + list(worker_state.active_requests)
            break
        except RuntimeError:  # a pool thread changed the set while we copied it
            continue
    else:
        return frozenset(range(partitions))  # cannot tell: all busy, try again next heartbeat
    busy = set()
    for request in requests:
        if request.name == DRAIN_TASK and request.args and isinstance(request.args[0], int):
            busy.add(request.args[0])
    return frozenset(busy)


class PartitionLeases:
    """The lease loop of one worker process: a daemon thread beating every HEARTBEAT_INTERVAL."""

    def __init__(
        self,
        store: LeaseStore,
        worker_id: str,
        consumers: Consumers,
        ring: Callable[[int], None],
        interval: float = HEARTBEAT_INTERVAL,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.consumers = consumers
        self.ring = ring
        self.interval = interval
        self.consuming: frozenset[int] = frozenset()
        self._last_beat = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledgerq-leases", daemon=True)

    @property
    def partitions(self) -> int:
        return self.store.partitions

    def start(self) -> None:
        log.info("partition_leases_started", worker=self.worker_id, partitions=self.partitions)
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and give every lease back, so the other workers take them at once."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            # A beat waiting on the (now stopped) consumer loop must not hold the shutdown up;
            # a lease it takes after this expires on its own.
            self._thread.join(2.0)
        with contextlib.suppress(redis.RedisError):
            self.store.leave(self.worker_id)
            log.info("partition_leases_released", worker=self.worker_id)

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as exc:
                log.warning(
                    "partition_lease_heartbeat_failed", worker=self.worker_id, error=str(exc)
                )
                self._on_failed_beat()
            if self._stop.wait(self.interval):
                return

    def _on_failed_beat(self) -> None:
        # Our leases have expired by now and may be another worker's: stop consuming them.
        if self.consuming and time.monotonic() - self._last_beat > self.store.ttl_ms / 1000:
            with contextlib.suppress(Exception):
                result = self.consumers.reconcile(frozenset())
                if result is not None:
                    self.consuming = result.consuming
            log.warning("partition_leases_lost", worker=self.worker_id)

    def tick(self) -> None:
        """One heartbeat: renew, then release extras or acquire up to the fair share."""
        state = self.store.heartbeat(self.worker_id, self.consuming)
        self._last_beat = time.monotonic()
        mine = frozenset(p for p, h in state.holders.items() if h == self.worker_id)
        plan = plan_leases(self.worker_id, self.partitions, state.live, state.holders)

        # Stop consuming what is no longer ours (lost) or is to be released, before releasing it.
        keep = mine - set(plan.release)
        if keep != self.consuming or plan.release:
            result = self.consumers.reconcile(keep)
            if result is None:
                return  # the consumer's loop is busy; leases stay renewed, try again next beat
            self.consuming = result.consuming
            releasable = [
                p for p in plan.release if p not in result.consuming and p not in result.busy
            ]
            if self.store.release(self.worker_id, releasable):
                log.info(
                    "partition_leases_given_up",
                    worker=self.worker_id,
                    partitions=releasable,
                    share=plan.share,
                    live_workers=len(state.live),
                )

        acquired: list[int] = []
        for p in plan.acquire:
            if len(acquired) >= plan.need:
                break
            if self.store.acquire(self.worker_id, p):
                acquired.append(p)
        if not acquired:
            return
        result = self.consumers.reconcile(keep | frozenset(acquired))
        if result is not None:
            self.consuming = result.consuming
        # Anything the previous holder left pending is applied now, not at the next sweep.
        for p in acquired:
            self.ring(p)
        log.info(
            "partition_leases_acquired",
            worker=self.worker_id,
            partitions=acquired,
            holding=sorted(keep | frozenset(acquired)),
            share=plan.share,
            live_workers=len(state.live),
        )


# --------------------------------------------------------------------------- worker signals

_running: PartitionLeases | None = None


@signals.worker_ready.connect
def _start_leases(sender: Any = None, **_: Any) -> None:
    """In `auto` mode, start leasing once the worker's consumer is up (sender is the consumer)."""
    global _running
    # Imported here: importing the Celery app must not read the environment.
    from worker.settings import get_settings

    settings = get_settings()
    if settings.worker_partitions is not None or sender is None:
        return
    app = sender.app
    store = LeaseStore(redis.Redis.from_url(settings.redis_url), settings.partitions)
    _running = PartitionLeases(
        store,
        worker_id=sender.hostname,
        consumers=CeleryConsumers(sender, settings.partitions),
        ring=lambda p: app.send_task(DRAIN_TASK, args=[p]),
    )
    _running.start()


@signals.worker_shutdown.connect
def _stop_leases(**_: Any) -> None:
    """After the warm shutdown has finished the running drains: hand the partitions over."""
    global _running
    if _running is not None:
        _running.stop()
        _running = None
