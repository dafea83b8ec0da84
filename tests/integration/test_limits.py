"""Money creation is limited (issue 13.1): deposits per operation and per rolling day, per user
and per API key, every item of a batch counted; one user can no longer use up a world shard and
fail other users' deposits; the admin sets limits and may deposit past them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import httpx
from sqlalchemy import Engine

from tests.integration.support import (
    LedgerClient,
    assert_ledger_consistent,
    key,
    operation_count,
    wait_terminal,
)
from worker.routing import partition_for

PARTITIONS = 8
MAX_AMOUNT = "10000000000000.00"  # the largest amount one operation takes, in USD


async def accounts_on_every_partition(user: LedgerClient) -> dict[int, str]:
    """One account of `user` per partition (so, per world shard)."""
    found: dict[int, str] = {}
    while len(found) < PARTITIONS:
        account = await user.create_account()
        found.setdefault(partition_for(UUID(account), PARTITIONS), account)
    return found


def deposits(account: str, amount: str, count: int) -> list[dict[str, Any]]:
    return [
        {"idempotency_key": key(), "type": "deposit", "account_id": account, "amount": amount}
        for _ in range(count)
    ]


async def batch(user: LedgerClient, items: list[dict[str, Any]], **kw: Any) -> httpx.Response:
    return await user.request("POST", "/api/v1/operations/batch", json={"operations": items}, **kw)


async def test_one_user_cannot_create_unbounded_money_or_fail_other_users_deposits(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    # The reproduction: one batch of 1,000 deposits of the largest amount into her own account.
    mallory = alice
    target = await mallory.create_account()
    r = await batch(mallory, deposits(target, MAX_AMOUNT, 1000))
    accepted = [res["operation"]["id"] for res in r.json().get("results", []) if res["status"] == 202]
    if accepted:  # before the fix: wait until they applied (the world shard then was used up)
        wait_terminal(engine, [UUID(i) for i in accepted], timeout=120)

    # Whatever she did, another user's deposits into accounts on every world shard succeed.
    victims = await accounts_on_every_partition(bob)
    ids = [await bob.submit_ok({"type": "deposit", "account_id": a, "amount": "12.34"}) for a in victims.values()]
    results = await bob.wait_all(ids)
    assert [(res["status"], res["error"]) for res in results] == [("succeeded", None)] * PARTITIONS

    # And her batch was stopped whole, with a clear problem, nothing of it stored.
    assert r.status_code == 422, r.text[:500]
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert problem["code"] == "deposit_limit_exceeded", problem
    assert (problem["limit"], problem["limit_scope"], problem["currency"]) == ("daily", "user", "USD")
    assert problem["limit_amount"] == "100000000000000.00"
    assert problem["requested"] == "10000000000000000.00"
    assert "Retry-After" not in r.headers  # waiting never lets 1,000 of them in
    assert operation_count(engine, mallory.user_id) == 0
    assert await mallory.balance(target) == "0.00"
    assert_ledger_consistent(engine)
