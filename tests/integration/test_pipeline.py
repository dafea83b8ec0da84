"""The core pipeline end to end: HTTP submit -> PostgreSQL -> Celery worker -> ledger -> HTTP read."""

from __future__ import annotations

import asyncio

import httpx
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.integration.support import LedgerClient, assert_ledger_consistent, key
from worker.store.tables import operations


async def test_submit_poll_succeeded_balances_and_entries(
    alice: LedgerClient, engine: Engine
) -> None:
    account = await alice.create_account("USD")
    r = await alice.submit(
        {
            "type": "deposit",
            "account_id": account,
            "amount": "100.00",
            "category": "salary",
            "description": "Nov",
        }
    )
    assert r.status_code == 202
    assert r.headers["Location"] == f"/api/v1/operations/{r.json()['id']}"
    assert r.json()["status"] == "pending" or r.json()["status"] == "succeeded"

    done = await alice.wait(r.json()["id"])
    assert done["status"] == "succeeded"
    assert done["amount"] == "100.00"
    assert done["applied_at"] is not None

    withdrawal = await alice.submit_ok(
        {"type": "withdrawal", "account_id": account, "amount": "25.50"}
    )
    assert (await alice.wait(withdrawal))["status"] == "succeeded"

    acc = await alice.account(account)
    assert acc["balance"] == "74.50"
    assert acc["available_balance"] == "74.50"

    r = await alice.request("GET", f"/api/v1/accounts/{account}/entries")
    items = r.json()["items"]
    assert [(e["operation_type"], e["amount"], e["balance_after"]) for e in items] == [
        ("withdrawal", "-25.50", "74.50"),
        ("deposit", "100.00", "100.00"),
    ]
    assert items[1]["category"] == "salary"
    assert items[1]["description"] == "Nov"
    assert_ledger_consistent(engine)


async def test_transfer_moves_money_between_users(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    a = await alice.create_account("EUR")
    b = await bob.create_account("EUR")
    await alice.deposit(a, "10.00")
    op = await alice.submit_ok(
        {"type": "transfer", "account_id": a, "to_account_id": b, "amount": "3.33"}
    )
    assert (await alice.wait(op))["status"] == "succeeded"
    assert await alice.balance(a) == "6.67"
    assert await bob.balance(b) == "3.33"
    # Bob sees the credit in his history, not Alice's operation list.
    entries = (await bob.request("GET", f"/api/v1/accounts/{b}/entries")).json()["items"]
    assert [(e["amount"], e["operation_type"]) for e in entries] == [("3.33", "transfer")]
    assert_ledger_consistent(engine)


async def test_jpy_has_no_minor_units(alice: LedgerClient) -> None:
    account = await alice.create_account("JPY")
    await alice.deposit(account, "1500")
    assert await alice.balance(account) == "1500"
    r = await alice.submit({"type": "deposit", "account_id": account, "amount": "1.5"})
    assert r.status_code == 422
    assert r.json()["code"] == "invalid_amount"


async def test_insufficient_funds_fails_with_code(alice: LedgerClient) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "5.00")
    op = await alice.submit_ok({"type": "withdrawal", "account_id": account, "amount": "5.01"})
    done = await alice.wait(op)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "insufficient_funds"
    assert await alice.balance(account) == "5.00"


async def test_prefer_wait_on_submit_answers_final_state(alice: LedgerClient) -> None:
    account = await alice.create_account()
    r = await alice.submit(
        {"type": "deposit", "account_id": account, "amount": "1.00"}, Prefer="wait=10"
    )
    assert r.status_code == 200
    assert r.headers["Preference-Applied"] == "wait=10"
    assert r.json()["status"] == "succeeded"


async def test_prefer_wait_is_capped(alice: LedgerClient) -> None:
    account = await alice.create_account()
    op = await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "1.00"})
    r = await alice.request(
        "GET", f"/api/v1/operations/{op}", headers={"Prefer": "respond-async, wait=300"}
    )
    assert r.status_code == 200
    assert r.headers["Preference-Applied"] == "wait=30"
    assert r.json()["status"] == "succeeded"


async def test_per_account_order_deposit_then_withdrawal(alice: LedgerClient) -> None:
    """Submitted back to back without waiting: the withdrawal always sees the deposit."""
    for _ in range(15):
        account = await alice.create_account()
        dep = await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "42.42"})
        wd = await alice.submit_ok({"type": "withdrawal", "account_id": account, "amount": "42.42"})
        results = await alice.wait_all([dep, wd])
        assert [r["status"] for r in results] == ["succeeded", "succeeded"]
        assert await alice.balance(account) == "0.00"


async def test_concurrent_withdrawals_never_overdraw(alice: LedgerClient, engine: Engine) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "50.00")
    body = {"type": "withdrawal", "account_id": account, "amount": "1.00"}
    responses = await asyncio.gather(*(alice.submit(body) for _ in range(200)))
    assert [r.status_code for r in responses] == [202] * 200
    results = await alice.wait_all([r.json()["id"] for r in responses])
    statuses = [r["status"] for r in results]
    assert statuses.count("succeeded") == 50
    assert statuses.count("failed") == 150
    assert {r["error"]["code"] for r in results if r["status"] == "failed"} == {
        "insufficient_funds"
    }
    assert await alice.balance(account) == "0.00"
    assert_ledger_consistent(engine)


async def test_available_balance_subtracts_pending_debits(
    alice: LedgerClient, engine: Engine
) -> None:
    from tests.integration.support import insert_pending, wait_terminal

    account = await alice.create_account()
    await alice.deposit(account, "10.00")
    # Committed but not rung: stays pending until the sweeper's age threshold.
    [op] = insert_pending(engine, alice.user_id, account, [300], op_type="withdrawal")
    acc = await alice.account(account)
    assert acc["balance"] == "10.00"
    assert acc["available_balance"] == "7.00"
    wait_terminal(engine, [op])
    acc = await alice.account(account)
    assert (acc["balance"], acc["available_balance"]) == ("7.00", "7.00")


async def test_cancel_pending_then_conflict(alice: LedgerClient, engine: Engine) -> None:
    from tests.integration.support import insert_pending

    account = await alice.create_account()
    [op] = insert_pending(engine, alice.user_id, account, [500])
    r = await alice.request("DELETE", f"/api/v1/operations/{op}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    r = await alice.request("DELETE", f"/api/v1/operations/{op}")
    assert r.status_code == 409
    assert r.json()["code"] == "operation_not_pending"
    # The sweeper comes by and must leave a cancelled operation alone.
    await asyncio.sleep(3.5)
    assert (await alice.wait(str(op)))["status"] == "cancelled"
    assert await alice.balance(account) == "0.00"

    done = await alice.deposit(account, "1.00")
    r = await alice.request("DELETE", f"/api/v1/operations/{done['id']}")
    assert r.status_code == 409


async def test_a_cancel_is_published_to_followers(alice: LedgerClient, engine: Engine) -> None:
    """Followers hear of a cancel as of any final state (not only from the periodic look)."""
    import json

    import redis.asyncio

    from tests.integration.support import insert_pending
    from worker.events import OPERATIONS_CHANNEL, channel
    from worker.settings import get_settings

    client = redis.asyncio.Redis.from_url(get_settings().redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe(channel(OPERATIONS_CHANNEL, client))
    try:
        account = await alice.create_account()
        [op] = insert_pending(engine, alice.user_id, account, [500])
        r = await alice.request("DELETE", f"/api/v1/operations/{op}")
        assert r.status_code == 200, r.text
        heard: list[dict[str, str]] = []
        for _ in range(50):
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if message is not None:
                heard += json.loads(message["data"])
            if any(event["id"] == str(op) for event in heard):
                break
        [event] = [e for e in heard if e["id"] == str(op)]
        assert (event["status"], event["account_id"]) == ("cancelled", account)
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_list_operations_filters_and_pages(alice: LedgerClient) -> None:
    a = await alice.create_account()
    b = await alice.create_account()
    ids = [
        await alice.submit_ok({"type": "deposit", "account_id": a, "amount": f"{i}.00"})
        for i in range(1, 6)
    ]
    await alice.wait_all(ids)
    fail = await alice.submit_ok({"type": "withdrawal", "account_id": b, "amount": "1.00"})
    await alice.wait(fail)

    seen: list[str] = []
    cursor = None
    while True:
        params = {"account_id": a, "limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await alice.request("GET", "/api/v1/operations", params=params)).json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))

    failed = (await alice.request("GET", "/api/v1/operations", params={"status": "failed"})).json()[
        "items"
    ]
    assert [item["id"] for item in failed] == [fail]


async def test_entries_pages_and_filters(alice: LedgerClient) -> None:
    account = await alice.create_account()
    for i, category in enumerate(["salary", "gift", "salary", "refund", "salary"], start=1):
        await alice.deposit(account, f"{i}.00", category=category)

    amounts: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (
            await alice.request("GET", f"/api/v1/accounts/{account}/entries", params=params)
        ).json()
        amounts += [e["amount"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert amounts == ["5.00", "4.00", "3.00", "2.00", "1.00"]

    salary = (
        await alice.request(
            "GET", f"/api/v1/accounts/{account}/entries", params={"category": "salary"}
        )
    ).json()["items"]
    assert [e["amount"] for e in salary] == ["5.00", "3.00", "1.00"]

    future = (
        await alice.request(
            "GET", f"/api/v1/accounts/{account}/entries", params={"from": "2999-01-01T00:00:00Z"}
        )
    ).json()["items"]
    assert future == []


async def test_accounts_list_pages(alice: LedgerClient) -> None:
    created = [await alice.create_account() for _ in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await alice.request("GET", "/api/v1/accounts", params=params)).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(created)


async def test_health_ready_and_docs(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).json()["status"] == "ok"
    ready = (await http.get("/ready")).json()
    assert ready["checks"] == {"postgres": "ok", "migrations": "ok", "redis": "ok", "broker": "ok"}
    assert (await http.get("/docs")).status_code == 200
    schema = (await http.get("/docs/openapi.json")).json()
    assert "/api/v1/operations" in schema["paths"]
    assert all(
        op.get("operationId")
        for path in schema["paths"].values()
        for op in path.values()
        if isinstance(op, dict)
    )


async def test_operation_rows_carry_partition_and_key(alice: LedgerClient, engine: Engine) -> None:
    from worker.routing import partition_for

    account = await alice.create_account()
    k = key()
    op = await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "1.00"}, k)
    with engine.connect() as conn:
        row = conn.execute(sa.select(operations).where(operations.c.id == op)).one()
    from uuid import UUID

    assert row.idempotency_key == k
    assert row.partition == partition_for(UUID(account), 8)
    assert row.amount == 100
