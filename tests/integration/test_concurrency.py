"""Transfers racing both ways and in rings across partitions, with two workers applying at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest
from sqlalchemy import Engine

from tests.integration.support import (
    LedgerClient,
    Process,
    assert_ledger_consistent,
    insert_pending,
    wait_terminal,
)
from worker.apply_loop import drain_partition
from worker.routing import partition_for
from worker.store.db import make_engine


@pytest.fixture
def second_worker(
    service_env: dict[str, str], logs_dir: Path, worker: Process
) -> Iterator[Process]:
    """Another worker on the same queues: partitions are now drained in parallel by two processes."""
    process = Process("worker-2", ["-m", "cli", "worker"], service_env, logs_dir)
    process.start()
    process.wait_for_log("ready", timeout=60)
    yield process
    process.stop()


async def accounts_in_distinct_partitions(client: LedgerClient, n: int) -> list[str]:
    chosen: dict[int, str] = {}
    while len(chosen) < n:
        account = await client.create_account()
        chosen.setdefault(partition_for(UUID(account), 8), account)
    return list(chosen.values())


async def test_transfers_both_ways_between_two_accounts(
    alice: LedgerClient, engine: Engine, second_worker: Process
) -> None:
    a, b = await accounts_in_distinct_partitions(alice, 2)
    await alice.deposit(a, "100.00")
    await alice.deposit(b, "100.00")
    there = {"type": "transfer", "account_id": a, "to_account_id": b, "amount": "1.00"}
    back = {"type": "transfer", "account_id": b, "to_account_id": a, "amount": "1.00"}
    responses = await asyncio.gather(
        *(alice.submit(body) for _ in range(100) for body in (there, back))
    )
    assert {r.status_code for r in responses} == {202}
    results = await alice.wait_all([r.json()["id"] for r in responses])
    assert {r["status"] for r in results} == {"succeeded"}
    assert (await alice.balance(a), await alice.balance(b)) == ("100.00", "100.00")
    assert_ledger_consistent(engine)


async def test_ring_of_transfers_across_partitions(
    alice: LedgerClient, engine: Engine, second_worker: Process
) -> None:
    ring = await accounts_in_distinct_partitions(alice, 4)
    for account in ring:
        await alice.deposit(account, "10.00")
    bodies = [
        {
            "type": "transfer",
            "account_id": ring[i],
            "to_account_id": ring[(i + 1) % 4],
            "amount": "0.25",
        }
        for i in range(4)
    ]
    responses = await asyncio.gather(*(alice.submit(body) for _ in range(40) for body in bodies))
    results = await alice.wait_all([r.json()["id"] for r in responses])
    assert {r["status"] for r in results} == {"succeeded"}
    assert [await alice.balance(account) for account in ring] == ["10.00"] * 4
    assert_ledger_consistent(engine)


async def test_appliers_of_different_partitions_lock_in_order(
    alice: LedgerClient, engine: Engine
) -> None:
    """Four apply loops in threads, one per partition, each crediting the next partition's account."""
    ring = await accounts_in_distinct_partitions(alice, 4)
    for account in ring:
        await alice.deposit(account, "50.00")
    ids: list[UUID] = []
    for i, account in enumerate(ring):
        ids += insert_pending(
            engine,
            alice.user_id,
            account,
            [1] * 400,
            op_type="transfer",
            to_account_id=ring[(i + 1) % 4],
        )
    url = engine.url.render_as_string(hide_password=False)
    errors: list[BaseException] = []

    def run(account: str) -> None:
        e = make_engine(url)
        try:
            drain_partition(
                e, partition_for(UUID(account), 8), 16, publish=lambda done: None, time_budget=60
            )
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            e.dispose()

    threads = [threading.Thread(target=run, args=(account,)) for account in ring]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert set(wait_terminal(engine, ids).values()) == {"succeeded"}
    assert [await alice.balance(account) for account in ring] == ["50.00"] * 4
    assert_ledger_consistent(engine)
