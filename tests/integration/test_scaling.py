"""Scaling workers with leases: one worker holds every partition, three share them without
overlap, and when one is SIGKILLed the others take its partitions over and apply what it left.

Runs a deployment of its own (private Redis as broker and lease store, its own database) so the
session's worker does not compete for the leases. No beat: what the dead worker left pending is
applied because the new holder rings the partitions it takes, not by the sweeper.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.isolated import (
    active_partition_queues,
    deployment_env,
    lease_holders,
    migrated_database,
    private_redis,
    wait_until,
)
from tests.integration.support import (
    LedgerClient,
    Process,
    assert_ledger_consistent,
    insert_pending,
    wait_for_http,
    wait_terminal,
)
from worker.routing import partition_for, queue_for_partition
from worker.settings import normalize_database_url
from worker.store.db import make_engine
from worker.store.tables import operations

PARTITIONS = 8
ALL = set(range(PARTITIONS))
# Lease TTL 4 s + one heartbeat + margin: the bound on a takeover after a SIGKILL.
TAKEOVER_BOUND = 10.0


@pytest.fixture(scope="module")
def deployment(
    server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    tmp = tmp_path_factory.mktemp("scaling")
    with (
        private_redis(tmp / "redis") as redis_url,
        migrated_database(server_urls[0], "ledgerq_scaling") as database_url,
    ):
        yield deployment_env(database_url, redis_url, tmp / "data")


@pytest.fixture(scope="module")
def scaling_engine(deployment: dict[str, str]) -> Iterator[Engine]:
    engine = make_engine(normalize_database_url(deployment["LEDGERQ_DATABASE_URL"]), pool_size=2)
    yield engine
    engine.dispose()


def _name(process: Process) -> str:
    """The worker's node name, `ledgerq-auto-<pid>@<host>`: its lease value."""
    assert process.proc is not None
    return f"ledgerq-auto-{process.proc.pid}@"


def _held_by(holders: dict[int, str | None], process: Process) -> set[int]:
    return {p for p, h in holders.items() if h is not None and h.startswith(_name(process))}


def _consumed_by(queues: dict[str, set[str]], process: Process) -> set[int] | None:
    for worker, names in queues.items():
        if worker.startswith(_name(process)):
            return {p for p in range(PARTITIONS) if queue_for_partition(p) in names}
    return None


def _spread(redis_url: str, workers: list[Process]) -> dict[str, set[int]]:
    holders = lease_holders(redis_url)
    return {w.name: _held_by(holders, w) for w in workers}


def _fairly_spread(redis_url: str, workers: list[Process]) -> bool:
    held = _spread(redis_url, workers)
    share = -(-PARTITIONS // len(workers))
    counts = [len(s) for s in held.values()]
    union = set().union(*held.values())
    return union == ALL and sum(counts) == PARTITIONS and max(counts) <= share


def _start_worker(name: str, env: dict[str, str], logs: Path) -> Process:
    process = Process(name, ["-m", "cli", "worker"], env, logs)
    process.start()
    return process


@pytest.mark.timeout(120)
async def test_workers_share_partitions_and_take_over_from_a_killed_one(
    deployment: dict[str, str], scaling_engine: Engine, tmp_path: Path
) -> None:
    env = deployment
    redis_url = env["LEDGERQ_REDIS_URL"]
    workers: list[Process] = []
    port = free_port()
    api = Process(
        "scaling-api", ["-m", "cli", "api"], {**env, "LEDGERQ_API_PORT": str(port)}, tmp_path
    )
    try:
        # --- one worker: it holds every partition and consumes every partition queue.
        first = _start_worker("worker-a", env, tmp_path)
        workers.append(first)
        api.start()
        first.wait_for_log("ready", timeout=60)
        wait_until(
            lambda: _spread(redis_url, [first])["worker-a"] == ALL,
            10,
            lambda: f"leases {lease_holders(redis_url)}",
        )
        wait_until(
            lambda: _consumed_by(active_partition_queues(redis_url), first) == ALL,
            10,
            lambda: f"celery inspect active_queues: {active_partition_queues(redis_url)}",
        )
        assert "ledgerq.control" in next(iter(active_partition_queues(redis_url).values()))

        # --- three workers: the partitions spread without overlap, 2-3 each.
        workers += [_start_worker(f"worker-{n}", env, tmp_path) for n in "bc"]
        for w in workers[1:]:
            w.wait_for_log("ready", timeout=60)
        started = time.monotonic()
        wait_until(
            lambda: _fairly_spread(redis_url, workers),
            15,
            lambda: f"leases {_spread(redis_url, workers)}",
        )
        spread_in = time.monotonic() - started
        held = _spread(redis_url, workers)
        assert sorted(len(s) for s in held.values()) == [2, 3, 3], held

        # Each consumes exactly the queues of the partitions it holds (so no queue has two).
        def consumption_matches_leases() -> bool:
            queues = active_partition_queues(redis_url)
            holders = lease_holders(redis_url)
            return all(_consumed_by(queues, w) == _held_by(holders, w) for w in workers)

        wait_until(
            consumption_matches_leases,
            10,
            lambda: (
                f"consumed {active_partition_queues(redis_url)} leases {lease_holders(redis_url)}"
            ),
        )

        # --- the pipeline works across the three.
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/health", api, timeout=60)
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            alice = await LedgerClient.register(http, "scaler")
            by_partition: dict[int, str] = {}
            for _ in range(200):
                if len(by_partition) == PARTITIONS:
                    break
                account = await alice.create_account()
                by_partition.setdefault(partition_for(UUID(account), PARTITIONS), account)
            assert len(by_partition) == PARTITIONS
            await asyncio.gather(*(alice.deposit(a, "100.00") for a in by_partition.values()))

            # --- kill one worker without a goodbye. Before that, leave work in its partitions
            # that only a doorbell can start (committed as pending, no bell, no beat running).
            victim = workers[1]
            orphaned = _spread(redis_url, workers)[victim.name]
            left_pending = []
            for p in orphaned:
                left_pending += insert_pending(
                    scaling_engine, alice.user_id, by_partition[p], [100] * 20
                )
            await asyncio.sleep(0.5)
            assert Counter(current_statuses(scaling_engine, left_pending)) == {
                "pending": len(left_pending)
            }, "nothing should ring these partitions while their holder lives"

            victim.kill()
            killed_at = time.monotonic()
            survivors = [w for w in workers if w is not victim]
            # Submitted while nobody consumes those queues: they wait in the broker.
            during = [
                await alice.submit_ok(
                    {"type": "withdrawal", "account_id": by_partition[p], "amount": "1.00"}
                )
                for p in orphaned
            ]
            wait_until(
                lambda: _fairly_spread(redis_url, survivors),
                TAKEOVER_BOUND,
                lambda: f"leases {_spread(redis_url, survivors)}",
            )
            takeover = time.monotonic() - killed_at
            statuses = wait_terminal(scaling_engine, left_pending, timeout=15)
            assert set(statuses.values()) == {"succeeded"}
            applied = await alice.wait_all(during, within=15)
            assert {r["status"] for r in applied} == {"succeeded"}
            for p in orphaned:
                assert await alice.balance(by_partition[p]) == "119.00"
            wait_until(
                lambda: all(
                    _consumed_by(active_partition_queues(redis_url), w)
                    == _held_by(lease_holders(redis_url), w)
                    for w in survivors
                ),
                10,
                lambda: f"consumed {active_partition_queues(redis_url)}",
            )
        assert_ledger_consistent(scaling_engine)
        print(f"spread over 3 workers in {spread_in:.1f}s; takeover after SIGKILL {takeover:.1f}s")

        # --- a clean stop hands the partitions over at once (released, not expired).
        leaving = survivors[0]
        leaving.stop()
        stopped_at = time.monotonic()
        wait_until(
            lambda: _spread(redis_url, [survivors[1]])[survivors[1].name] == ALL,
            5,
            lambda: f"leases {lease_holders(redis_url)}",
        )
        assert time.monotonic() - stopped_at < 3.5, "released leases should move within a beat"
    finally:
        api.stop()
        for w in workers:
            w.stop()


def current_statuses(engine: Engine, ids: list[UUID]) -> list[str]:
    with engine.connect() as conn:
        return list(
            conn.execute(sa.select(operations.c.status).where(operations.c.id.in_(ids))).scalars()
        )
