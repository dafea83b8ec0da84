"""Holds, captures, voids and reversals through the real pipeline: HTTP -> queue -> worker."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from domain.holds import EXPIRY_PRINCIPAL, expiry_key
from domain.idempotency import request_fingerprint
from tests.integration.support import (
    LedgerClient,
    Process,
    assert_ledger_consistent,
    key,
    wait_terminal,
)
from worker.routing import partition_for
from worker.store.queries import new_id
from worker.store.tables import operations


@pytest.fixture
def admin(service_env: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": service_env["LEDGERQ_MASTER_KEY"]}


async def hold(client: LedgerClient, account: str, amount: str, **extra: Any) -> dict[str, Any]:
    op = await client.submit_ok({"type": "hold", "account_id": account, "amount": amount, **extra})
    return await client.wait(op)


async def settle(client: LedgerClient, body: dict[str, Any]) -> dict[str, Any]:
    return await client.wait(await client.submit_ok(body))


async def get_hold(client: LedgerClient, hold_id: str) -> dict[str, Any]:
    r = await client.request("GET", f"/api/v1/holds/{hold_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_hold_reserves_and_a_partial_capture_pays_and_releases_the_rest(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    a = await alice.create_account("USD")
    b = await bob.create_account("USD")
    await alice.deposit(a, "100.00")

    h = await hold(alice, a, "60.00", to_account_id=b, expires_in=3600)
    assert h["status"] == "succeeded" and h["expires_in"] == 3600
    acc = await alice.account(a)
    assert (acc["balance"], acc["held_balance"], acc["available_balance"]) == (
        "100.00",
        "60.00",
        "40.00",
    )
    # The held money is not available to a later debit.
    w = await settle(alice, {"type": "withdrawal", "account_id": a, "amount": "40.01"})
    assert w["status"] == "failed" and w["error"]["code"] == "insufficient_funds"
    # Nor to a second hold.
    h2 = await hold(alice, a, "40.01")
    assert h2["status"] == "failed" and h2["error"]["code"] == "insufficient_funds"

    # Above the held amount: refused at submit, nothing stored.
    r = await alice.submit({"type": "capture", "hold_id": h["id"], "amount": "60.01"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_amount"

    c = await settle(alice, {"type": "capture", "hold_id": h["id"], "amount": "25.00"})
    assert c["status"] == "succeeded", c
    assert (c["account_id"], c["to_account_id"], c["hold_id"]) == (a, b, h["id"])
    acc = await alice.account(a)
    assert (acc["balance"], acc["held_balance"], acc["available_balance"]) == (
        "75.00",
        "0.00",
        "75.00",
    )
    assert await bob.balance(b) == "25.00"
    got = await get_hold(alice, h["id"])
    assert (got["status"], got["amount"], got["captured"], got["released"]) == (
        "captured",
        "60.00",
        "25.00",
        "35.00",
    )
    assert got["closed_by"] == c["id"] and got["closed_at"] is not None

    # A closed hold takes no second capture, and no void.
    again = await settle(alice, {"type": "capture", "hold_id": h["id"]})
    assert again["status"] == "failed" and again["error"]["code"] == "hold_closed"
    void = await settle(alice, {"type": "void", "hold_id": h["id"]})
    assert void["status"] == "failed" and void["error"]["code"] == "hold_closed"

    # Listings: by account and status; Bob does not see Alice's holds.
    r = await alice.request("GET", "/api/v1/holds", params={"account_id": a, "status": "captured"})
    assert [x["id"] for x in r.json()["items"]] == [h["id"]]
    assert (await bob.request("GET", f"/api/v1/holds/{h['id']}")).status_code == 404
    assert (await bob.request("GET", "/api/v1/holds")).json()["items"] == []
    # Bob cannot capture Alice's hold: it reads as missing.
    r = await bob.submit({"type": "capture", "hold_id": h["id"]})
    assert r.status_code == 404 and r.json()["code"] == "hold_not_found"
    assert_ledger_consistent(engine)


async def test_void_releases_and_a_capture_without_payee_leaves_the_ledger(
    alice: LedgerClient, engine: Engine
) -> None:
    a = await alice.create_account("EUR")
    await alice.deposit(a, "50.00")
    h = await hold(alice, a, "20.00")
    v = await settle(alice, {"type": "void", "hold_id": h["id"]})
    assert v["status"] == "succeeded"
    assert (await get_hold(alice, h["id"]))["status"] == "voided"
    assert (await alice.account(a))["available_balance"] == "50.00"

    h = await hold(alice, a, "30.00")
    c = await settle(alice, {"type": "capture", "hold_id": h["id"]})
    assert c["status"] == "succeeded" and c["amount"] == "30.00" and c["to_account_id"] is None
    acc = await alice.account(a)
    assert (acc["balance"], acc["held_balance"]) == ("20.00", "0.00")
    entries = (await alice.request("GET", f"/api/v1/accounts/{a}/entries")).json()["items"]
    assert [(e["operation_type"], e["amount"]) for e in entries][:1] == [("capture", "-30.00")]
    assert_ledger_consistent(engine)


async def test_shapes_are_checked_at_submit(alice: LedgerClient) -> None:
    a = await alice.create_account("USD")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"type": "capture", "account_id": a, "hold_id": a}, "account_id"),
        ({"type": "capture"}, "hold_id"),
        ({"type": "void", "hold_id": a, "amount": "1.00"}, "amount"),
        ({"type": "reversal"}, "operation_id"),
        ({"type": "deposit", "account_id": a, "amount": "1", "expires_in": 5}, "expires_in"),
        ({"type": "hold", "account_id": a, "amount": "1.00", "expires_in": 10**9}, "expires_in"),
    ]
    for body, field in cases:
        r = await alice.submit(body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["field"] == field, (body, r.json())
    # A capture of something that is not a hold.
    d = (await alice.deposit(a, "1.00"))["id"]
    r = await alice.submit({"type": "capture", "hold_id": d})
    assert r.status_code == 404 and r.json()["code"] == "hold_not_found"


async def test_reversals_take_back_partly_then_the_rest_never_more(
    alice: LedgerClient, bob: LedgerClient, engine: Engine, admin: dict[str, str]
) -> None:
    a = await alice.create_account("USD")
    b = await bob.create_account("USD")
    dep = await alice.deposit(a, "100.00")

    r1 = await settle(alice, {"type": "reversal", "operation_id": dep["id"], "amount": "30.00"})
    assert r1["status"] == "succeeded" and r1["reversal_of"] == dep["id"]
    assert await alice.balance(a) == "70.00"
    original = await alice.wait(dep["id"])
    assert original["reversed_amount"] == "30.00"
    # More than is left: refused at submit.
    r = await alice.submit({"type": "reversal", "operation_id": dep["id"], "amount": "70.01"})
    assert r.status_code == 422 and r.json()["code"] == "reversal_exceeds_original"
    # No amount: the rest.
    rest = await settle(alice, {"type": "reversal", "operation_id": dep["id"]})
    assert rest["status"] == "succeeded" and rest["amount"] == "70.00"
    assert await alice.balance(a) == "0.00"
    assert (await alice.wait(dep["id"]))["reversed_amount"] == "100.00"
    nothing_left = await settle(alice, {"type": "reversal", "operation_id": dep["id"]})
    assert nothing_left["status"] == "failed"
    assert nothing_left["error"]["code"] == "reversal_exceeds_original"

    # A reversal is not reversible.
    r = await alice.submit({"type": "reversal", "operation_id": r1["id"]})
    assert r.status_code == 422 and r.json()["code"] == "not_reversible"

    # A transfer is reversed by its payee (whose account gives the money back), not the payer.
    await alice.deposit(a, "10.00")
    t = await settle(
        alice, {"type": "transfer", "account_id": a, "to_account_id": b, "amount": "4"}
    )
    r = await alice.submit({"type": "reversal", "operation_id": t["id"]})
    assert r.status_code == 404 and r.json()["code"] == "operation_not_found"
    back = await bob.wait(await bob.submit_ok({"type": "reversal", "operation_id": t["id"]}))
    assert back["status"] == "succeeded"
    assert (await alice.balance(a), await bob.balance(b)) == ("10.00", "0.00")
    # The payee lacking funds: the reversal fails like any debit.
    t2 = await settle(
        alice, {"type": "transfer", "account_id": a, "to_account_id": b, "amount": "5"}
    )
    await settle(bob, {"type": "withdrawal", "account_id": b, "amount": "5.00"})
    broke = await bob.wait(await bob.submit_ok({"type": "reversal", "operation_id": t2["id"]}))
    assert broke["status"] == "failed" and broke["error"]["code"] == "insufficient_funds"

    # A withdrawal's reversal brings money from outside: only the admin may.
    w = await settle(alice, {"type": "withdrawal", "account_id": a, "amount": "1.00"})
    r = await alice.submit({"type": "reversal", "operation_id": w["id"]})
    assert r.status_code == 404
    r = await alice.http.post(
        "/api/v1/admin/reversals",
        json={"operation_id": w["id"]},
        headers={**admin, "Idempotency-Key": key()},
    )
    assert r.status_code == 202, r.text
    statuses = wait_terminal(engine, [UUID(r.json()["id"])])
    assert set(statuses.values()) == {"succeeded"}
    assert await alice.balance(a) == "5.00"
    assert_ledger_consistent(engine)


async def test_metadata_is_stored_fingerprinted_and_filtered(alice: LedgerClient) -> None:
    a = await alice.create_account("USD")
    k = key()
    body = {
        "type": "deposit",
        "account_id": a,
        "amount": "1.00",
        "metadata": {"order_id": "A-1", "channel": "web"},
    }
    r = await alice.submit(body, idempotency_key=k)
    assert r.status_code == 202 and r.json()["metadata"] == {"channel": "web", "order_id": "A-1"}
    other = await alice.submit_ok({**body, "metadata": {"order_id": "A-2"}})
    await alice.submit_ok({"type": "deposit", "account_id": a, "amount": "2.00"})
    # Same key, other metadata: another request.
    r2 = await alice.submit({**body, "metadata": {"order_id": "A-9"}}, idempotency_key=k)
    assert r2.status_code == 422 and r2.json()["code"] == "idempotency_key_reused"
    found = await alice.request("GET", "/api/v1/operations", params={"metadata[order_id]": "A-2"})
    assert found.status_code == 200, found.text
    assert [o["id"] for o in found.json()["items"]] == [other]
    none = await alice.request("GET", "/api/v1/operations", params={"metadata[order_id]": "nope"})
    assert none.json()["items"] == []
    too_many: dict[str, Any] = {**body, "metadata": {f"k{i}": "v" for i in range(21)}}
    r3 = await alice.submit(too_many)
    assert r3.status_code in (400, 422)


async def test_captures_and_voids_racing_on_one_hold_close_it_exactly_once(
    alice: LedgerClient, engine: Engine
) -> None:
    a = await alice.create_account("USD")
    await alice.deposit(a, "100.00")
    h = await hold(alice, a, "80.00")

    async def one(i: int) -> str:
        body: dict[str, Any] = (
            {"type": "capture", "hold_id": h["id"], "amount": "1.00"}
            if i % 2
            else {"type": "void", "hold_id": h["id"]}
        )
        return await alice.submit_ok(body)

    ids = await asyncio.gather(*(one(i) for i in range(100)))
    results = await alice.wait_all(list(ids))
    won = [r for r in results if r["status"] == "succeeded"]
    assert len(won) == 1
    assert {r["error"]["code"] for r in results if r["status"] == "failed"} == {"hold_closed"}
    got = await get_hold(alice, h["id"])
    assert got["closed_by"] == won[0]["id"]
    acc = await alice.account(a)
    assert acc["held_balance"] == "0.00"
    assert acc["balance"] == ("99.00" if won[0]["type"] == "capture" else "100.00")
    assert_ledger_consistent(engine)


def _insert_capture(
    engine: Engine, principal: str, hold_id: str, account: str, amount: int
) -> UUID:
    """A capture committed as pending with no bell rung (the API died after its INSERT)."""
    op_id = new_id()
    with engine.begin() as conn:
        conn.execute(
            operations.insert().values(
                id=op_id,
                partition=partition_for(UUID(account), 8),
                principal_id=UUID(principal),
                idempotency_key=key(),
                fingerprint=request_fingerprint({"k": str(op_id)}),
                type="capture",
                account_id=UUID(account),
                amount=amount,
                currency="USD",
                hold_id=UUID(hold_id),
            )
        )
    return op_id


async def test_expiry_void_goes_through_the_queue_and_a_queued_capture_wins(
    alice: LedgerClient, engine: Engine
) -> None:
    a = await alice.create_account("USD")
    await alice.deposit(a, "10.00")
    # Expires on its own: the sweep (beat) submits the void.
    lone = await hold(alice, a, "1.00", expires_in=1)
    # Queued first: a capture stored before the expiry void settles the hold.
    raced = await hold(alice, a, "2.00", expires_in=1)
    capture = _insert_capture(engine, alice.user_id, raced["id"], a, 150)

    deadline = time.monotonic() + 60
    while (await get_hold(alice, lone["id"]))["status"] == "open":
        assert time.monotonic() < deadline, "the expiry sweep never voided the hold"
        await asyncio.sleep(0.2)
    assert (await get_hold(alice, lone["id"]))["status"] == "expired"
    wait_terminal(engine, [capture])

    settled = await get_hold(alice, raced["id"])
    assert (settled["status"], settled["captured"], settled["released"]) == (
        "captured",
        "1.50",
        "0.50",
    )
    with engine.connect() as conn:
        voids = conn.execute(
            sa.select(operations.c.seq, operations.c.status, operations.c.error_code).where(
                operations.c.principal_id == EXPIRY_PRINCIPAL,
                operations.c.idempotency_key.in_([expiry_key(UUID(raced["id"]))]),
            )
        ).all()
        capture_seq = conn.execute(
            sa.select(operations.c.seq).where(operations.c.id == capture)
        ).scalar_one()
    # If the sweep reached the raced hold before the capture applied, its void came later in
    # the queue and failed; either way the capture, first in the queue, settled it.
    for seq, status, code in voids:
        assert seq > capture_seq and (status, code) == ("failed", "hold_closed")
    acc = await alice.account(a)
    assert (acc["balance"], acc["held_balance"]) == ("8.50", "0.00")
    assert_ledger_consistent(engine)


async def test_holds_captures_and_reversals_survive_a_worker_killed_mid_batch(
    alice: LedgerClient, bob: LedgerClient, engine: Engine, worker: Process
) -> None:
    a = await alice.create_account("USD")
    b = await bob.create_account("USD")
    await alice.deposit(a, "10000.00")
    deposits = [(await alice.deposit(a, "1.00"))["id"] for _ in range(3)]  # reversible originals
    with engine.connect() as holder:
        # Hold Bob's account row: the worker's next batch that credits it waits there (NO KEY
        # UPDATE, as the worker takes it: the API's inserts referencing it still go through).
        holder.execute(
            sa.text("SELECT 1 FROM accounts WHERE id = :id FOR NO KEY UPDATE"), {"id": b}
        )
        holds_ = [
            await alice.submit_ok(
                {"type": "hold", "account_id": a, "amount": "2.00", "to_account_id": b}
            )
            for _ in range(20)
        ]
        captures = [
            await alice.submit_ok({"type": "capture", "hold_id": h, "amount": "1.00"})
            for h in holds_
        ]
        reversals = [
            await alice.submit_ok({"type": "reversal", "operation_id": d}) for d in deposits
        ]
        deadline = time.monotonic() + 30
        while True:
            with engine.connect() as conn:
                waiting = conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock'"
                        " AND query ILIKE '%FROM accounts%FOR NO KEY UPDATE%'"
                    )
                ).scalar_one()
            if waiting:
                break
            assert time.monotonic() < deadline, "the worker's batch never reached the account lock"
            await asyncio.sleep(0.05)
        worker.kill()
        holder.rollback()

    worker.start()
    worker.wait_for_log("ready", timeout=60)
    ids = [UUID(i) for i in holds_ + captures + reversals]
    # The sweeper rings the partition for what the dead worker left pending.
    result = wait_terminal(engine, ids, timeout=120)
    assert set(result.values()) == {"succeeded"}, result
    acc = await alice.account(a)
    assert acc["held_balance"] == "0.00"
    assert acc["balance"] == f"{10000 + 3 - 20 - 3}.00"
    assert await bob.balance(b) == "20.00"
    for h in holds_:
        got = await get_hold(alice, h)
        assert (got["status"], got["captured"], got["released"]) == ("captured", "1.00", "1.00")
    assert_ledger_consistent(engine)


async def test_operation_list_metadata_filter_needs_a_key(http: httpx.AsyncClient) -> None:
    """Only `metadata[<key>]=<value>` is a metadata filter; a bare `metadata` is refused."""
    client = await LedgerClient.register(http, "meta")
    r = await client.request("GET", "/api/v1/operations", params={"metadata": "x"})
    assert r.status_code == 422, r.text
