"""Faults: duplicate doorbells, concurrent appliers, lost messages, a worker killed mid-batch."""

from __future__ import annotations

import asyncio
import threading
import time
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Engine

from tests.integration.support import (
    LedgerClient,
    Process,
    assert_ledger_consistent,
    entry_counts,
    insert_pending,
    wait_terminal,
)
from worker.apply_loop import drain_partition
from worker.celery_app import app as celery_app
from worker.routing import DRAIN_TASK, partition_for
from worker.store.db import make_engine
from worker.store.tables import operations
from worker.tasks import APPLICATION_NAME


def balance_minor(engine: Engine, account_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT balance FROM accounts WHERE id = :id"), {"id": account_id}
            ).scalar_one()
        )


def statuses(engine: Engine, ids: list[UUID]) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(operations.c.status, sa.func.count())
            .where(operations.c.id.in_(ids))
            .group_by(operations.c.status)
        ).all()
    return {r[0]: r[1] for r in rows}


async def test_doorbell_delivered_twice_applies_once(
    alice: LedgerClient, engine: Engine, worker: Process
) -> None:
    account = await alice.create_account()
    ids = insert_pending(engine, alice.user_id, account, [100] * 50)
    partition = partition_for(UUID(account), 8)
    celery_app.send_task(DRAIN_TASK, args=[partition])
    celery_app.send_task(DRAIN_TASK, args=[partition])
    result = wait_terminal(engine, ids)
    assert set(result.values()) == {"succeeded"}
    assert set(entry_counts(engine, ids).values()) == {2}
    assert balance_minor(engine, account) == 50 * 100
    assert_ledger_consistent(engine)


async def test_two_apply_loops_on_one_partition_apply_once(
    alice: LedgerClient, engine: Engine
) -> None:
    """The advisory lock serialises appliers: run the loop twice at once, in two threads."""
    account = await alice.create_account()
    deposits = insert_pending(engine, alice.user_id, account, [1000] * 300)
    withdrawals = insert_pending(engine, alice.user_id, account, [1500] * 300, op_type="withdrawal")
    partition = partition_for(UUID(account), 8)
    engines = [make_engine(str(engine.url.render_as_string(hide_password=False))) for _ in range(2)]
    errors: list[BaseException] = []

    def run(e: Engine) -> None:
        try:
            drain_partition(e, partition, batch_size=37, publish=lambda done: None, time_budget=60)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for e in engines:
        e.dispose()
    assert errors == []
    ids = deposits + withdrawals
    result = wait_terminal(engine, ids)
    assert set(entry_counts(engine, ids).values()) == {2}
    # 300 x 10.00 in first, then 300 withdrawals of 15.00: exactly 200 fit.
    assert sum(1 for i in withdrawals if result[i] == "succeeded") == 200
    assert balance_minor(engine, account) == 0
    assert_ledger_consistent(engine)


async def test_lost_message_is_applied_by_the_sweeper(alice: LedgerClient, engine: Engine) -> None:
    account = await alice.create_account()
    # Committed as pending and no bell rung: only the sweeper (beat) can find it.
    ids = insert_pending(engine, alice.user_id, account, [250, 250])
    result = wait_terminal(engine, ids, timeout=30)
    assert set(result.values()) == {"succeeded"}
    assert await alice.balance(account) == "5.00"


async def test_worker_killed_mid_batch_loses_nothing_and_applies_once(
    alice: LedgerClient, engine: Engine, worker: Process
) -> None:
    accounts = [await alice.create_account() for _ in range(3)]
    ids: list[UUID] = []
    for account in accounts:
        ids += insert_pending(engine, alice.user_id, account, [100] * 4000)
        ids += insert_pending(engine, alice.user_id, account, [150] * 2000, op_type="withdrawal")
    for account in accounts:
        celery_app.send_task(DRAIN_TASK, args=[partition_for(UUID(account), 8)])

    deadline = time.monotonic() + 60
    while statuses(engine, ids).get("pending", 0) == len(ids):
        assert time.monotonic() < deadline, "the worker never started applying"
        await asyncio.sleep(0.01)
    worker.kill()
    left = statuses(engine, ids).get("pending", 0)
    assert 0 < left < len(ids), "the kill should land while work remains"

    worker.start()
    worker.wait_for_log("ready", timeout=60)
    result = wait_terminal(engine, ids, timeout=120)
    # Deposits were queued before withdrawals, so in seq order every withdrawal is covered.
    assert set(result.values()) == {"succeeded"}
    assert set(entry_counts(engine, ids).values()) == {2}
    for account in accounts:
        assert balance_minor(engine, account) == 4000 * 100 - 2000 * 150
    assert_ledger_consistent(engine)


async def test_worker_killed_inside_an_open_batch_transaction(
    alice: LedgerClient, engine: Engine, worker: Process
) -> None:
    """Deterministic mid-batch crash: the batch has locked its partition and read its operations,
    and waits for an account row the test holds; then the worker dies."""
    account = await alice.create_account()
    other = await alice.create_account()
    ids = insert_pending(engine, alice.user_id, account, [100] * 300)
    ids += insert_pending(
        engine, alice.user_id, account, [50] * 100, op_type="transfer", to_account_id=other
    )
    with engine.connect() as holder:
        holder.execute(sa.text("SELECT 1 FROM accounts WHERE id = :id FOR UPDATE"), {"id": other})
        celery_app.send_task(DRAIN_TASK, args=[partition_for(UUID(account), 8)])
        deadline = time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query ILIKE '%FROM accounts%FOR NO KEY UPDATE%'"
                    )
                ).scalar_one()
            if waiting:
                break
            assert time.monotonic() < deadline, "the worker's batch never reached the account lock"
            await asyncio.sleep(0.05)
        worker.kill()
        # Earlier (smaller, adaptive) batches committed; the one in flight must have left no trace.
        before = statuses(engine, ids)
        assert before.get("pending", 0) >= 100 and set(before) <= {"pending", "succeeded"}
        assert set(entry_counts(engine, ids).values()) <= {2}
        holder.rollback()

    worker.start()
    worker.wait_for_log("ready", timeout=60)
    result = wait_terminal(engine, ids, timeout=60)
    assert set(result.values()) == {"succeeded"}
    assert set(entry_counts(engine, ids).values()) == {2}
    assert balance_minor(engine, account) == 300 * 100 - 100 * 50
    assert balance_minor(engine, other) == 100 * 50
    assert_ledger_consistent(engine)


async def test_database_connections_dropped_under_the_worker_and_api(
    alice: LedgerClient, engine: Engine, worker: Process
) -> None:
    """The worker's database connections are terminated (as a database restart would, and the
    worker pings none before use): the next drain fails, Celery retries it on a new connection,
    and every operation is applied once."""
    account = await alice.create_account()
    await alice.deposit(account, "1.00")  # the worker and the API hold warm connections now
    with engine.connect() as conn:
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": APPLICATION_NAME},
        ).scalar_one()
    assert dropped >= 1

    submitted = [
        await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "2.00"})
        for _ in range(5)
    ]
    results = await alice.wait_all(submitted, within=90)
    assert {r["status"] for r in results} == {"succeeded"}
    assert await alice.balance(account) == "11.00"
    assert set(entry_counts(engine, [UUID(i) for i in submitted]).values()) == {2}
    assert_ledger_consistent(engine)
