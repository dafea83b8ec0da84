"""Bulk submit (207 per item) and backpressure (503 when a partition's backlog is full)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.integration.support import (
    LedgerClient,
    assert_ledger_consistent,
    extra_api,
    insert_pending,
    key,
    operation_count,
    wait_terminal,
)
from worker.routing import partition_for
from worker.store.ledger import ADVISORY_NAMESPACE


async def test_batch_of_1000_stores_valid_items_and_reports_each(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    accounts = [await alice.create_account() for _ in range(4)]
    foreign = await bob.create_account()
    items: list[dict[str, Any]] = []
    for i in range(1000):
        item: dict[str, Any] = {
            "idempotency_key": f"bulk-{i}-{key()}",
            "type": "deposit",
            "account_id": accounts[i % 4],
            "amount": "1.25",
        }
        if i % 100 == 7:
            item["amount"] = "1.255"  # invalid amount
        if i % 100 == 42:
            item["account_id"] = foreign  # not hers
        items.append(item)
    items[500]["idempotency_key"] = items[499][
        "idempotency_key"
    ]  # same key, same body? no: other account
    r = await alice.request("POST", "/api/v1/operations/batch", json={"operations": items})
    assert r.status_code == 207, r.text
    body = r.json()
    results = body["results"]
    assert [res["index"] for res in results] == list(range(1000))
    by_status: dict[int, int] = {}
    for res in results:
        by_status[res["status"]] = by_status.get(res["status"], 0) + 1
    assert results[7]["status"] == 422 and results[7]["error"]["code"] == "invalid_amount"
    assert results[7]["error"]["field"] == "amount"
    assert results[42]["status"] == 404 and results[42]["error"]["code"] == "account_not_found"
    assert (
        results[500]["status"] == 422 and results[500]["error"]["code"] == "idempotency_key_reused"
    )
    assert by_status == {202: 979, 422: 11, 404: 10}
    assert (body["accepted"], body["replayed"], body["rejected"]) == (979, 0, 21)
    assert operation_count(engine, alice.user_id) == 979

    ids = [res["operation"]["id"] for res in results if res["status"] == 202]
    await alice.wait_all(ids)
    balances = [await alice.balance(a) for a in accounts]
    per_account = [
        sum(1 for i in range(1000) if results[i]["status"] == 202 and i % 4 == n) for n in range(4)
    ]
    assert balances == [f"{n * 1.25:.2f}" for n in per_account]

    again = await alice.request("POST", "/api/v1/operations/batch", json={"operations": items})
    replay = again.json()
    assert again.status_code == 207
    assert (replay["accepted"], replay["replayed"]) == (0, 979)
    assert all(
        res["operation"]["status"] == "succeeded"
        for res in replay["results"]
        if res["status"] == 200
    )
    assert operation_count(engine, alice.user_id) == 979
    assert_ledger_consistent(engine)


async def test_batch_limits(alice: LedgerClient) -> None:
    account = await alice.create_account()
    item = {"type": "deposit", "account_id": account, "amount": "1.00"}
    too_many = [{**item, "idempotency_key": str(i)} for i in range(1001)]
    r = await alice.request("POST", "/api/v1/operations/batch", json={"operations": too_many})
    assert r.status_code == 422
    r = await alice.request("POST", "/api/v1/operations/batch", json={"operations": []})
    assert r.status_code == 422
    r = await alice.request("POST", "/api/v1/operations/batch", json={"operations": [item]})
    assert r.status_code == 422  # every item needs its own idempotency_key
    assert await alice.balance(account) == "0.00"


@pytest.fixture
def small_backlog_api(service_env: dict[str, str], logs_dir: Path) -> Iterator[str]:
    with extra_api("api-small-backlog", service_env, logs_dir, LEDGERQ_MAX_BACKLOG="5") as url:
        yield url


async def test_full_backlog_answers_503_and_stores_nothing(
    alice: LedgerClient, engine: Engine, small_backlog_api: str
) -> None:
    import asyncio

    account = await alice.create_account()
    partition = partition_for(UUID(account), 8)
    # Hold the partition's apply lock so its backlog cannot drain while we look.
    with engine.connect() as holder:
        holder.execute(sa.select(sa.func.pg_advisory_lock(ADVISORY_NAMESPACE, partition)))
        try:
            first = {"type": "deposit", "account_id": account, "amount": "2.00"}
            first_key = key()
            async with httpx.AsyncClient(
                base_url=small_backlog_api, auth=alice.auth, timeout=30
            ) as client:
                # Accepted while the backlog had room; it waits behind the lock with the rest.
                r = await client.post(
                    "/api/v1/operations", json=first, headers={"Idempotency-Key": first_key}
                )
                assert r.status_code == 202, r.text
                first_id = r.json()["id"]
                held = insert_pending(engine, alice.user_id, account, [100] * 6)
                await asyncio.sleep(2.5)  # the monitor refreshes every second
                before = operation_count(engine, alice.user_id)
                r = await client.post(
                    "/api/v1/operations",
                    json={"type": "deposit", "account_id": account, "amount": "1.00"},
                    headers={"Idempotency-Key": key()},
                )
                assert r.status_code == 503, r.text
                assert r.json()["code"] == "backlog_full"
                assert r.headers["Retry-After"] == "1"
                # A retry of a stored key is no new work: its replay, not a 503.
                r = await client.post(
                    "/api/v1/operations", json=first, headers={"Idempotency-Key": first_key}
                )
                assert (r.status_code, r.json()["id"]) == (200, first_id), r.text
                assert r.headers["Idempotent-Replayed"] == "true"
                r = await client.post(
                    "/api/v1/operations",
                    json={**first, "amount": "3.00"},
                    headers={"Idempotency-Key": first_key},
                )
                assert (r.status_code, r.json()["code"]) == (422, "idempotency_key_reused")
            assert operation_count(engine, alice.user_id) == before
        finally:
            holder.execute(sa.select(sa.func.pg_advisory_unlock(ADVISORY_NAMESPACE, partition)))
            holder.commit()
    assert set(wait_terminal(engine, [*held, UUID(first_id)]).values()) == {"succeeded"}
