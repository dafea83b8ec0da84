"""Partition leases: the fair-share plan, and the lease loop's order of steps (no Redis, no Celery)."""

from __future__ import annotations

import random
from collections.abc import Collection

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.leases import (
    Consumption,
    LeaseState,
    PartitionLeases,
    fair_share,
    partition_of_queue,
    plan_leases,
)


def test_fair_share_covers_every_partition() -> None:
    assert fair_share(8, 1) == 8
    assert fair_share(8, 3) == 3
    assert fair_share(8, 4) == 2
    assert fair_share(8, 5) == 2
    assert fair_share(8, 20) == 1
    assert fair_share(8, 0) == 8


def test_a_lone_worker_takes_every_free_partition() -> None:
    plan = plan_leases("a", 8, ["a"], {})
    assert plan.release == ()
    assert plan.acquire == tuple(range(8))
    assert plan.need == 8


def test_a_worker_over_its_share_releases_its_highest_numbered_extras() -> None:
    holders = dict.fromkeys(range(8), "a")
    plan = plan_leases("a", 8, ["a", "b", "c"], holders)
    assert plan.share == 3
    assert plan.release == (3, 4, 5, 6, 7)
    assert plan.need == 0


def test_a_new_worker_waits_for_partitions_to_be_released() -> None:
    holders = dict.fromkeys(range(8), "a")
    plan = plan_leases("b", 8, ["a"], holders)  # b counts itself as live
    assert plan.share == 4
    assert plan.release == ()
    assert plan.need == 0


def test_partitions_of_a_dead_worker_are_not_free_until_their_lease_expires() -> None:
    holders = {p: ("a" if p < 4 else "dead") for p in range(8)}
    plan = plan_leases("a", 8, ["a"], holders)
    assert plan.acquire == ()
    holders = {p: "a" for p in range(4)}  # the dead worker's keys expired
    plan = plan_leases("a", 8, ["a"], holders)
    assert plan.acquire == (4, 5, 6, 7) and plan.need == 4


def test_a_worker_below_its_share_takes_only_what_it_needs() -> None:
    holders = {0: "a", 1: "a", 2: "b"}
    plan = plan_leases("b", 8, ["a", "b"], holders)
    assert plan.acquire == (3, 4, 5, 6, 7)
    assert plan.need == 3


def test_partition_of_queue() -> None:
    assert partition_of_queue("ledgerq.p0") == 0
    assert partition_of_queue("ledgerq.p17") == 17
    assert partition_of_queue("ledgerq.control") is None
    assert partition_of_queue("ledgerq.px") is None
    assert partition_of_queue("celery") is None


def _round(workers: list[str], partitions: int, holders: dict[int, str]) -> None:
    """Every worker beats once, in turn, as the lease loop does (releases never blocked here)."""
    for me in workers:
        plan = plan_leases(me, partitions, workers, holders)
        for p in plan.release:
            del holders[p]
        taken = 0
        for p in plan.acquire:
            if taken >= plan.need:
                break
            if p not in holders:  # SET NX
                holders[p] = me
                taken += 1


def _assert_spread(workers: list[str], partitions: int, holders: dict[int, str]) -> None:
    assert sorted(holders) == list(range(partitions)), "every partition has exactly one holder"
    share = fair_share(partitions, len(workers))
    counts = {w: sum(1 for h in holders.values() if h == w) for w in workers}
    assert max(counts.values()) <= share, counts
    assert set(holders.values()) <= set(workers)


@settings(max_examples=200, deadline=None)
@given(
    partitions=st.integers(1, 64),
    before=st.integers(1, 10),
    after=st.integers(1, 10),
    order=st.randoms(use_true_random=False),
)
def test_workers_joining_and_leaving_converge_to_a_fair_spread(
    partitions: int, before: int, after: int, order: random.Random
) -> None:
    workers = [f"w{i}" for i in range(before)]
    holders: dict[int, str] = {}
    for _ in range(3):
        order.shuffle(workers)
        _round(workers, partitions, holders)
    _assert_spread(workers, partitions, holders)

    # Some stop (their leases expire or are released) and others start.
    survivors = workers[: min(after, before)]
    workers = survivors + [f"n{i}" for i in range(max(after - before, 0))]
    holders = {p: h for p, h in holders.items() if h in workers}
    for _ in range(3):
        order.shuffle(workers)
        _round(workers, partitions, holders)
    _assert_spread(workers, partitions, holders)


# --------------------------------------------------------------------------- the lease loop


class FakeStore:
    """LeaseStore in memory: one holder per key, the registry is whoever beat."""

    partitions = 8
    ttl_ms = 4000

    def __init__(self) -> None:
        self.holders: dict[int, str] = {}
        self.live: set[str] = set()

    def heartbeat(self, me: str, consuming: Collection[int]) -> LeaseState:
        self.live.add(me)
        return LeaseState(live=tuple(sorted(self.live)), holders=dict(self.holders))  # type: ignore[arg-type]

    def acquire(self, me: str, partition: int) -> bool:
        if partition in self.holders:
            return False
        self.holders[partition] = me
        return True

    def release(self, me: str, partitions: Collection[int]) -> int:
        gone = [p for p in partitions if self.holders.get(p) == me]
        for p in gone:
            del self.holders[p]
        return len(gone)

    def leave(self, me: str) -> None:
        self.release(me, list(self.holders))
        self.live.discard(me)


class FakeConsumers:
    def __init__(self, store: FakeStore, log: list[str]) -> None:
        self.store = store
        self.log = log
        self.consuming: frozenset[int] = frozenset()
        self.busy: frozenset[int] = frozenset()

    def reconcile(self, wanted: frozenset[int]) -> Consumption | None:
        # Record what the store looked like when the consumers changed.
        for p in sorted(self.consuming - wanted):
            self.log.append(f"cancel {p} held={self.store.holders.get(p)}")
        for p in sorted(wanted - self.consuming):
            self.log.append(f"consume {p} held={self.store.holders.get(p)}")
        self.consuming = wanted
        return Consumption(consuming=wanted, busy=self.busy)


def _leases(store: FakeStore, me: str, log: list[str]) -> tuple[PartitionLeases, FakeConsumers]:
    consumers = FakeConsumers(store, log)
    leases = PartitionLeases(
        store,  # type: ignore[arg-type]
        me,
        consumers,
        ring=lambda p: log.append(f"ring {p}"),
    )
    return leases, consumers


def test_the_loop_consumes_after_acquiring_and_rings_what_it_took() -> None:
    store, log = FakeStore(), []
    a, consumers = _leases(store, "a", log)
    a.tick()
    assert store.holders == dict.fromkeys(range(8), "a")
    assert consumers.consuming == frozenset(range(8))
    assert log[:8] == [f"consume {p} held=a" for p in range(8)]
    assert log[8:] == [f"ring {p}" for p in range(8)]


def test_the_loop_stops_consuming_before_it_releases_and_keeps_busy_partitions() -> None:
    store, log = FakeStore(), []
    a, consumers = _leases(store, "a", log)
    a.tick()
    log.clear()
    store.live |= {"b", "c"}  # share 3 now
    consumers.busy = frozenset({7})  # a drain of partition 7 is still running here
    a.tick()
    # Each cancel happened while the lease was still ours: nobody else could be consuming yet.
    assert log == [f"cancel {p} held=a" for p in (3, 4, 5, 6, 7)]
    assert sorted(p for p, h in store.holders.items() if h == "a") == [0, 1, 2, 7]
    consumers.busy = frozenset()
    a.tick()
    assert sorted(store.holders) == [0, 1, 2]


def test_the_loop_stops_consuming_a_partition_someone_else_holds() -> None:
    store, log = FakeStore(), []
    a, consumers = _leases(store, "a", log)
    a.tick()
    store.holders[5] = "b"  # our lease expired (a long pause) and b took it
    store.live.add("b")
    a.tick()
    assert 5 not in consumers.consuming
    assert store.holders[5] == "b"


def test_stop_gives_every_lease_back() -> None:
    store, log = FakeStore(), []
    a, _ = _leases(store, "a", log)
    a.tick()
    a.stop()
    assert store.holders == {}
    assert "a" not in store.live
