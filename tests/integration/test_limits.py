"""Money creation is limited (issue 13.1): deposits per operation and per rolling day, per user
and per API key, every item of a batch counted; one user can no longer use up a world shard and
fail other users' deposits; the admin sets limits and may deposit past them."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from api import intake
from api.errors import ApiError
from api.schemas import OperationRequest
from domain.limits import DEFAULT_LIMITS, USER, Subject
from tests.integration.support import (
    LedgerClient,
    assert_ledger_consistent,
    extra_api,
    key,
    operation_count,
    wait_terminal,
)
from tests.integration.test_access import Caller, as_key, assert_problem, create_key, master
from tests.integration.test_group_commit import in_process_api
from worker.routing import partition_for
from worker.store import queries
from worker.store.fast import FastStore
from worker.store.tables import accounts, deposit_limits, operations

__all__ = ["master"]  # a fixture

PARTITIONS = 8
MAX_AMOUNT = "10000000000000.00"  # the largest amount one operation takes, in USD
DAILY_DEFAULT = "100000000000000.00"  # ten of them


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


def accepted_ids(r: httpx.Response) -> list[UUID]:
    assert r.status_code == 207, r.text[:500]
    results = r.json()["results"]
    assert all(res["status"] == 202 for res in results), [
        res for res in results if res["status"] != 202
    ][:3]
    return [UUID(res["operation"]["id"]) for res in results]


def limit_problem(r: httpx.Response, status: int, limit: str, scope: str) -> dict[str, Any]:
    problem = assert_problem(r, status, "deposit_limit_exceeded")
    assert (problem["limit"], problem["limit_scope"]) == (limit, scope), problem
    assert ("Retry-After" in r.headers) == (status == 429)
    return problem


async def set_limits(
    caller: Caller, url: str, currency: str = "USD", **limits: str | None
) -> dict[str, Any]:
    r = await caller.request("PUT", url, json={"currency": currency, **limits})
    assert r.status_code == 200, r.text
    return dict(r.json())


def user_limits(user: LedgerClient) -> str:
    return f"/api/v1/admin/users/{user.user_id}/deposit-limits"


async def test_one_user_cannot_create_unbounded_money_or_fail_other_users_deposits(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    # The reproduction: one batch of 1,000 deposits of the largest amount into her own account.
    mallory = alice
    target = await mallory.create_account()
    r = await batch(mallory, deposits(target, MAX_AMOUNT, 1000))
    accepted = [
        res["operation"]["id"] for res in r.json().get("results", []) if res["status"] == 202
    ]
    if accepted:  # before the fix: wait until they applied (the world shard then was used up)
        wait_terminal(engine, [UUID(i) for i in accepted], timeout=120)

    # Whatever she did, another user's deposits into accounts on every world shard succeed.
    victims = await accounts_on_every_partition(bob)
    ids = [
        await bob.submit_ok({"type": "deposit", "account_id": a, "amount": "12.34"})
        for a in victims.values()
    ]
    results = await bob.wait_all(ids)
    assert [(res["status"], res["error"]) for res in results] == [("succeeded", None)] * PARTITIONS

    # And her batch was stopped whole, with a clear problem, nothing of it stored.
    problem = limit_problem(r, 422, "daily", "user")
    assert problem["currency"] == "USD" and problem["limit_amount"] == DAILY_DEFAULT
    assert problem["requested"] == "10000000000000000.00"
    assert problem["remaining"] == DAILY_DEFAULT
    assert operation_count(engine, mallory.user_id) == 0
    assert await mallory.balance(target) == "0.00"
    assert_ledger_consistent(engine)


async def test_a_world_shard_past_the_customer_limit_takes_other_users_deposits(
    alice: LedgerClient, bob: LedgerClient, master: Caller, engine: Engine
) -> None:
    """The world fix end to end: with her limit raised by the admin, one user brings 1e18 minor
    units (the customer limit) into one account and more through a second on the same partition;
    that partition's world shard is then past 1e18 below zero and still takes deposits."""
    await set_limits(master, user_limits(alice), daily="10000000000000000.00")
    first = await alice.create_account()
    partition = partition_for(UUID(first), PARTITIONS)
    second = await alice.create_account()
    while partition_for(UUID(second), PARTITIONS) != partition:
        second = await alice.create_account()
    wait_terminal(engine, accepted_ids(await batch(alice, deposits(first, MAX_AMOUNT, 1000))), 180)
    # Past her (raised) daily limit: the admin deposits the rest.
    r = await master.request(
        "POST",
        "/api/v1/admin/deposits",
        json={"account_id": second, "amount": MAX_AMOUNT},
        headers={"Idempotency-Key": key(), "Prefer": "wait=20"},
    )
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    victim = (await accounts_on_every_partition(bob))[partition]
    await bob.deposit(victim, "12.34")
    assert await alice.balance(first) == "10000000000000000.00"  # the customer limit, exactly
    with engine.connect() as conn:
        world = conn.execute(
            sa.select(accounts.c.balance).where(
                accounts.c.kind == "world",
                accounts.c.currency == "USD",
                accounts.c.shard == partition,
            )
        ).scalar_one()
    assert world <= -(10**18 + 10**15 + 1234)
    assert_ledger_consistent(engine)


async def test_defaults_keep_every_amount_and_ten_a_day_then_refuse_with_retry_after(
    http: httpx.AsyncClient, engine: Engine
) -> None:
    user = await LedgerClient.register(http, "defaults")
    account = await user.create_account()
    # One maximal deposit, then nine more in one batch: all taken (every item counted).
    first_key = key()
    first = await user.submit_ok(
        {"type": "deposit", "account_id": account, "amount": MAX_AMOUNT}, first_key
    )
    ids = accepted_ids(await batch(user, deposits(account, MAX_AMOUNT, 9)))
    wait_terminal(engine, [UUID(first), *ids])
    assert await user.balance(account) == DAILY_DEFAULT
    # The day is full: a cent more would fit once those leave the window, so 429.
    r = await user.submit({"type": "deposit", "account_id": account, "amount": "0.01"})
    problem = limit_problem(r, 429, "daily", "user")
    assert problem["remaining"] == "0.00" and problem["requested"] == "0.01"
    assert 23 * 3600 < int(r.headers["Retry-After"]) <= 24 * 3600 + 900
    # Idempotency holds at a full window: the first deposit's replay answers 200, not 429.
    r = await user.submit(
        {"type": "deposit", "account_id": account, "amount": MAX_AMOUNT}, first_key
    )
    assert r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true", r.text
    # Withdrawals and transfers create no money: never limited.
    savings = await user.create_account(kind="savings")
    out = await user.submit_ok({"type": "withdrawal", "account_id": account, "amount": MAX_AMOUNT})
    move = await user.submit_ok(
        {"type": "transfer", "account_id": account, "to_account_id": savings, "amount": "1.00"}
    )
    assert [r["status"] for r in await user.wait_all([out, move])] == ["succeeded"] * 2
    assert operation_count(engine, user.user_id) == 12


async def test_a_refused_batch_stores_none_of_its_items(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "50.00")
    await set_limits(master, user_limits(alice), daily="100.00")
    before = operation_count(engine, alice.user_id)
    items = [
        {"idempotency_key": key(), "type": "withdrawal", "account_id": account, "amount": "5.00"},
        *deposits(account, "30.00", 2),  # 50 + 60 > 100
    ]
    r = await batch(alice, items)
    problem = limit_problem(r, 429, "daily", "user")
    assert (problem["requested"], problem["remaining"]) == ("60.00", "50.00")
    assert operation_count(engine, alice.user_id) == before
    # Within the limit the same kind of batch is taken, every item of it.
    items[1:] = deposits(account, "25.00", 2)
    wait_terminal(engine, accepted_ids(await batch(alice, items)))
    assert await alice.balance(account) == "95.00"


async def test_the_per_operation_limit(alice: LedgerClient, master: Caller, engine: Engine) -> None:
    account = await alice.create_account("JPY")
    listed = await set_limits(master, user_limits(alice), currency="JPY", per_operation="1000")
    [jpy] = [item for item in listed["items"] if item["currency"] == "JPY"]
    assert (jpy["per_operation"], jpy["per_operation_set"], jpy["daily_set"]) == (
        "1000",
        "1000",
        None,
    )
    assert jpy["daily"] == "10000000000000000"  # the default, in yen
    r = await alice.submit({"type": "deposit", "account_id": account, "amount": "1001"})
    problem = limit_problem(r, 422, "per_operation", "user")
    assert (problem["currency"], problem["limit_amount"], problem["requested"]) == (
        "JPY",
        "1000",
        "1001",
    )
    await alice.deposit(account, "1000")
    # Other currencies keep the defaults.
    usd = await alice.create_account("USD")
    await alice.deposit(usd, "1001.00")
    # Back to the default.
    await set_limits(master, user_limits(alice), currency="JPY", per_operation=None)
    await alice.deposit(account, "1001")
    assert operation_count(engine, alice.user_id) == 3


async def test_an_api_keys_limits_count_on_top_of_its_users(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account()
    created = await create_key(alice, ["operations:write", "accounts:read"])
    keyed = as_key(alice, created["secret"])
    key_url = f"/api/v1/admin/api-keys/{created['id']}/deposit-limits"
    await set_limits(master, key_url, daily="100.00")
    await set_limits(master, user_limits(alice), daily="250.00")

    await keyed.deposit(account, "60.00")
    r = await keyed.submit({"type": "deposit", "account_id": account, "amount": "50.00"})
    assert limit_problem(r, 429, "daily", "api_key")["remaining"] == "40.00"
    # Her password is not the key: only the user's limit applies, and it counts the key's 60.
    await alice.deposit(account, "170.00")
    r = await alice.submit({"type": "deposit", "account_id": account, "amount": "20.01"})
    assert limit_problem(r, 429, "daily", "user")["remaining"] == "20.00"
    # The key has 40 left of its own, but its user only 20: the user's limit binds the key too.
    r = await keyed.submit({"type": "deposit", "account_id": account, "amount": "30.00"})
    assert limit_problem(r, 429, "daily", "user")["remaining"] == "20.00"
    await keyed.deposit(account, "20.00")

    listed = (await master.request("GET", key_url)).json()
    assert listed["subject_kind"] == "api_key" and listed["subject_id"] == created["id"]
    [usd] = listed["items"]
    assert (usd["daily"], usd["deposited_last_day"], usd["remaining"]) == (
        "100.00",
        "80.00",
        "20.00",
    )
    listed = (await master.request("GET", user_limits(alice))).json()
    [usd] = [item for item in listed["items"] if item["currency"] == "USD"]
    assert (usd["deposited_last_day"], usd["remaining"]) == ("250.00", "0.00")
    assert listed["default_daily_minor"] == 10**16
    assert await alice.balance(account) == "250.00"


async def test_concurrent_deposits_never_pass_the_limit(
    alice: LedgerClient, master: Caller, engine: Engine, second_api: str
) -> None:
    """Forty deposits at once through two API processes (many group commits, each process its own
    groups): exactly as many are taken as the day holds, the others refused, none stored."""
    accounts_ = [await alice.create_account() for _ in range(4)]
    await set_limits(master, user_limits(alice), daily="100.00")
    async with httpx.AsyncClient(base_url=second_api, timeout=60) as other:
        callers = [alice, LedgerClient(other, alice.username, alice.user_id)]
        responses = await asyncio.gather(
            *(
                callers[i % 2].submit(
                    {"type": "deposit", "account_id": accounts_[i % 4], "amount": "10.00"}
                )
                for i in range(40)
            )
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [202] * 10 + [429] * 30, statuses
    for r in responses:
        if r.status_code == 429:
            limit_problem(r, 429, "daily", "user")
    wait_terminal(engine, [UUID(r.json()["id"]) for r in responses if r.status_code == 202])
    balances = [await alice.balance(a) for a in accounts_]
    assert sum(float(b) for b in balances) == 100.0
    assert operation_count(engine, alice.user_id) == 10
    with engine.connect() as conn:
        sums = conn.execute(
            sa.select(deposit_limits.c.window_sums).where(
                deposit_limits.c.subject_id == UUID(alice.user_id)
            )
        ).scalar_one()
    assert sum(sums) == 100_00


async def test_the_admin_deposits_past_the_limits(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account()
    await set_limits(master, user_limits(alice), per_operation="10.00", daily="10.00")
    body = {"account_id": account, "amount": "5000.00", "description": "wire 2026-12-02"}
    idem = {"Idempotency-Key": key(), "Prefer": "wait=20"}
    r = await master.request("POST", "/api/v1/admin/deposits", json=body, headers=idem)
    assert r.status_code == 200, r.text
    done = r.json()
    assert (done["status"], done["amount"], done["type"]) == ("succeeded", "5000.00", "deposit")
    # Replayed: the same operation, its state now; another body under the key: refused.
    r = await master.request("POST", "/api/v1/admin/deposits", json=body, headers=idem)
    assert r.status_code == 200 and r.headers["Idempotent-Replayed"] == "true"
    assert r.json()["id"] == done["id"]
    r = await master.request(
        "POST", "/api/v1/admin/deposits", json={**body, "amount": "1.00"}, headers=idem
    )
    assert_problem(r, 422, "idempotency_key_reused")
    # Not counted against her: her own ten still fit.
    await alice.deposit(account, "10.00")
    assert await alice.balance(account) == "5010.00"
    # She sees it in her history; it is not hers to cancel or read as an operation.
    r = await alice.request("GET", f"/api/v1/accounts/{account}/entries")
    assert [(e["operation_type"], e["amount"]) for e in r.json()["items"]][-1] == (
        "deposit",
        "5000.00",
    )
    assert (await alice.request("GET", f"/api/v1/operations/{done['id']}")).status_code == 404

    # Only the admin; only customer accounts; amounts checked like any deposit.
    r = await alice.request(
        "POST", "/api/v1/admin/deposits", json=body, headers={"Idempotency-Key": key()}
    )
    assert_problem(r, 403, "insufficient_scope")
    with engine.connect() as conn:
        world = conn.execute(
            sa.select(accounts.c.id).where(accounts.c.kind == "world").limit(1)
        ).scalar_one()
    for bad, status, code in (
        ({**body, "account_id": str(world)}, 404, "account_not_found"),
        ({**body, "account_id": str(UUID(int=5))}, 404, "account_not_found"),
        ({**body, "amount": "0.001"}, 422, "invalid_amount"),
    ):
        r = await master.request(
            "POST", "/api/v1/admin/deposits", json=bad, headers={"Idempotency-Key": key()}
        )
        assert_problem(r, status, code)
    r = await master.request("POST", "/api/v1/admin/deposits", json=body)
    assert_problem(r, 400, "idempotency_key_missing")


async def test_setting_limits_is_the_admins_and_checked(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    url = user_limits(alice)
    for bad, code, field in (
        ({"currency": "XYZ", "daily": "1"}, "unknown_currency", "currency"),
        ({"currency": "USD", "daily": "0"}, "invalid_amount", "daily"),
        ({"currency": "USD", "per_operation": "0.001"}, "invalid_amount", "per_operation"),
        ({"currency": "USD", "daily": "10000000000000000.01"}, "invalid_amount", "daily"),
        ({"currency": "usd", "daily": "1"}, "validation_error", "currency"),
        ({"daily": "1"}, "validation_error", None),
    ):
        r = await master.request("PUT", url, json=bad)
        problem = assert_problem(r, 422, code)
        if field is not None:
            assert problem.get("field") == field, problem
    r = await master.request("GET", f"/api/v1/admin/users/{UUID(int=7)}/deposit-limits")
    assert_problem(r, 404, "user_not_found")
    r = await master.request(
        "PUT", f"/api/v1/admin/api-keys/{UUID(int=7)}/deposit-limits", json={"currency": "USD"}
    )
    assert_problem(r, 404, "api_key_not_found")
    for method in ("GET", "PUT"):
        r = await alice.request(method, url, json={"currency": "USD", "daily": "1e18"})
        assert_problem(r, 403, "insufficient_scope")
    fresh = (await master.request("GET", url)).json()
    assert fresh["items"] == [] and fresh["default_per_operation_minor"] == 10**15


# ---------------------------------------------------------------- a second API process


@pytest.fixture(scope="module")
def second_api(service_env: dict[str, str], logs_dir: Path, api_url: str) -> Iterator[str]:
    """Another API process on the suite's database and Redis."""
    with extra_api("api-limits", service_env, logs_dir) as url:
        yield url


# ---------------------------------------------------------------- one group commit, many requests


async def test_in_one_group_each_request_is_judged_alone_and_in_order(
    alice: LedgerClient, bob: LedgerClient, master: Caller, engine: Engine
) -> None:
    """Requests of one group commit (submitted in one event-loop turn): a request over the limit
    is refused whole and alone; one that shared a key with it lost its row with it and is refused
    too (never answered as the replay of a row that is gone); others, and other users, go on."""
    mine, theirs = await alice.create_account(), await bob.create_account()
    await set_limits(master, user_limits(alice), daily="100.00")
    async with in_process_api() as services:
        for user, account in ((alice, mine), (bob, theirs)):
            await intake.submit(services, UUID(user.user_id), [one(key(), account, "1.00")])
        shared = key()
        requests = [
            (alice, [one(key(), mine, "50.00")]),  # taken: 51 of 100
            (alice, [one(shared, mine, "30.00"), one(key(), mine, "30.00")]),  # 111: refused
            (alice, [one(shared, mine, "30.00")]),  # its row went with the refused request
            (bob, [one(key(), theirs, "500.00")]),  # another user: not affected
            (alice, [one(key(), mine, "49.00")]),  # taken: 100 of 100
        ]
        before = services.committer.groups
        results = await asyncio.gather(
            *(intake.submit(services, UUID(u.user_id), batch_) for u, batch_ in requests),
            return_exceptions=True,
        )
        assert services.committer.groups == before + 1
        # The same request alone, later: taken once the day has room (it has none now).
        retried = await asyncio.gather(
            intake.submit(services, UUID(alice.user_id), [one(shared, mine, "30.00")]),
            return_exceptions=True,
        )
    taken = [r[0] for r in (results[0], results[3], results[4]) if isinstance(r, list)]
    assert len(taken) == 3 and all(isinstance(o, intake.Accepted) and o.created for o in taken)
    for refused in (results[1], results[2], retried[0]):
        assert isinstance(refused, ApiError), refused
        assert (refused.status_code, refused.code) == (429, "deposit_limit_exceeded")
    wait_terminal(engine, [o.row.id for o in taken if isinstance(o, intake.Accepted)])
    assert (await alice.balance(mine), await bob.balance(theirs)) == ("100.00", "501.00")
    with engine.connect() as conn:
        stored = conn.execute(
            sa.select(sa.func.count()).where(operations.c.idempotency_key == shared)
        ).scalar_one()
    assert stored == 0


def one(idempotency_key: str, account: str, amount: str) -> intake.Submission:
    return intake.Submission(
        idempotency_key,
        OperationRequest(type="deposit", account_id=UUID(account), amount=Decimal(amount)),
    )


async def test_a_limit_row_taken_for_created_but_missing_is_created(
    alice: LedgerClient, engine: Engine, service_env: dict[str, str]
) -> None:
    """A process remembers which limit rows exist (to skip creating them); when its database was
    replaced under it, the group commit creates the missing row instead of failing."""
    account = await alice.create_account()
    user = Subject(USER, UUID(alice.user_id))
    queries._known_limit_rows.add((user, "USD"))
    new = queries.NewOperation(
        principal_id=user.id,
        idempotency_key=key(),
        fingerprint="f",
        type="deposit",
        account_id=UUID(account),
        to_account_id=None,
        amount=1_00,
        currency="USD",
        partition=partition_for(UUID(account), PARTITIONS),
        category=None,
        description=None,
        limits=DEFAULT_LIMITS,
    )
    fast = FastStore(service_env["LEDGERQ_DATABASE_URL"], size=2)
    await fast.open()
    try:
        stored = await queries.insert_operations_limited(fast, [[new]])
    finally:
        await fast.close()
    assert stored[(user.id, new.idempotency_key)].id == new.id and stored.refused == {}
    with engine.connect() as conn:
        sums = conn.execute(
            sa.select(deposit_limits.c.window_sums).where(deposit_limits.c.subject_id == user.id)
        ).scalar_one()
    assert sums == [1_00]
    wait_terminal(engine, [new.id])
