"""Account changes and controls through the real API: the owner's PATCH (name, metadata), the
admin's PATCH (overdraft limit, name), opening an account with its first deposit (atomic,
idempotent, through intake), freeze/unfreeze (admin) and close (owner) as queued operations."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy import Engine

from tests.integration.support import (
    LedgerClient,
    assert_ledger_consistent,
    key,
    operation_count,
)
from tests.integration.test_access import Caller, as_key, assert_problem, create_key, master
from worker.store.tables import accounts

__all__ = ["master"]  # a fixture


def account_count(engine: Engine, owner_id: str) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(accounts)
                .where(accounts.c.owner_id == owner_id)
            ).scalar_one()
        )


def system_account(engine: Engine, kind: str = "world") -> str:
    with engine.connect() as conn:
        return str(
            conn.execute(sa.select(accounts.c.id).where(accounts.c.kind == kind).limit(1)).scalar()
        )


async def run(client: LedgerClient, body: dict[str, Any]) -> dict[str, Any]:
    """Submit and wait until final."""
    return await client.wait(await client.submit_ok(body))


async def open_account(
    client: LedgerClient, body: dict[str, Any], idempotency_key: str | None = None
) -> httpx.Response:
    headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
    return await client.request("POST", "/api/v1/accounts", json=body, headers=headers)


def opening(amount: str | int = "100.00", **extra: Any) -> dict[str, Any]:
    return {
        "name": "main",
        "type": "checking",
        "currency": "USD",
        "initial_deposit": amount,
        **extra,
    }


async def control(
    caller: LedgerClient, account: str, action: str, idempotency_key: str | None = None, **kw: Any
) -> httpx.Response:
    path = (
        f"/api/v1/accounts/{account}/close"
        if action == "close"
        else f"/api/v1/admin/accounts/{account}/{action}"
    )
    headers = {"Idempotency-Key": idempotency_key or key(), "Prefer": "wait=10", **kw}
    return await caller.request("POST", path, headers=headers)


# ---------------------------------------------------------------- the owner's PATCH


async def test_owner_renames_and_replaces_metadata(alice: LedgerClient, bob: LedgerClient) -> None:
    r = await alice.request(
        "POST",
        "/api/v1/accounts",
        json={"name": "n", "type": "savings", "currency": "EUR", "metadata": {"b": "2", "a": "1"}},
    )
    assert r.status_code == 201, r.text
    created = r.json()
    account = created["id"]
    assert created["metadata"] == {"a": "1", "b": "2"}
    assert r.headers["Location"] == f"/api/v1/accounts/{account}"

    path = f"/api/v1/accounts/{account}"
    r = await alice.request("PATCH", path, json={"name": "rainy day"})
    assert r.status_code == 200, r.text
    assert (r.json()["name"], r.json()["metadata"]) == ("rainy day", {"a": "1", "b": "2"})
    assert r.json()["updated_at"] > created["updated_at"]
    r = await alice.request("PATCH", path, json={"metadata": {"ref": "X-1"}})
    assert (r.json()["name"], r.json()["metadata"]) == ("rainy day", {"ref": "X-1"})
    r = await alice.request("PATCH", path, json={"name": "both", "metadata": {}})
    assert (r.json()["name"], r.json()["metadata"]) == ("both", {})
    r = await alice.request("PATCH", path, json={})
    assert r.status_code == 200 and r.json()["name"] == "both"
    assert (await alice.account(account))["name"] == "both"

    # Bad bodies change nothing.
    for body in (
        {"name": ""},
        {"metadata": {"bad key": "v"}},
        {"type": "checking"},
        {"balance": "100.00"},
    ):
        r = await alice.request("PATCH", path, json=body)
        assert_problem(r, 422, "validation_error")
    # Someone else's account is missing.
    assert_problem(
        await bob.request("PATCH", path, json={"name": "mine"}), 404, "account_not_found"
    )
    assert (await alice.account(account))["name"] == "both"


async def test_a_read_only_key_cannot_patch(alice: LedgerClient) -> None:
    account = await alice.create_account()
    reader = as_key(alice, (await create_key(alice, ["accounts:read"]))["secret"])
    r = await reader.request("PATCH", f"/api/v1/accounts/{account}", json={"name": "x"})
    assert_problem(r, 403, "insufficient_scope")
    r = await reader.request(
        "POST", f"/api/v1/accounts/{account}/close", headers={"Idempotency-Key": key()}
    )
    assert_problem(r, 403, "insufficient_scope")


# ---------------------------------------------------------------- the admin's PATCH


async def test_admin_sets_the_overdraft_limit_never_below_what_is_used(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "10.00")
    path = f"/api/v1/admin/accounts/{account}"

    w = await run(alice, {"type": "withdrawal", "account_id": account, "amount": "60.00"})
    assert w["error"]["code"] == "insufficient_funds", w
    r = await master.request("PATCH", path, json={"overdraft_limit": "100.00"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["overdraft_limit"], body["owner_id"], body["name"]) == (
        "100.00",
        alice.user_id,
        "checking USD",
    )
    assert (await alice.account(account))["overdraft_limit"] == "100.00"
    w = await run(alice, {"type": "withdrawal", "account_id": account, "amount": "60.00"})
    assert w["status"] == "succeeded", w
    assert await alice.balance(account) == "-50.00"

    # Below what the account uses: refused, nothing changed (the name neither).
    r = await master.request(
        "PATCH", path, json={"overdraft_limit": "49.99", "name": "should not stick"}
    )
    problem = assert_problem(r, 409, "overdraft_in_use")
    assert problem["overdraft_used"] == "50.00"
    after = await alice.account(account)
    assert (after["overdraft_limit"], after["name"]) == ("100.00", "checking USD")
    # Exactly what it uses is fine, and the name alone too.
    r = await master.request("PATCH", path, json={"overdraft_limit": "50", "name": "credit line"})
    assert r.status_code == 200, r.text
    assert (r.json()["overdraft_limit"], r.json()["name"]) == ("50.00", "credit line")
    w = await run(alice, {"type": "withdrawal", "account_id": account, "amount": "0.01"})
    assert w["error"]["code"] == "insufficient_funds", w
    r = await master.request("PATCH", path, json={"name": "renamed"})
    assert (r.json()["overdraft_limit"], r.json()["name"]) == ("50.00", "renamed")

    # Back to zero once the account is above it again.
    assert_problem(
        await master.request("PATCH", path, json={"overdraft_limit": "0"}), 409, "overdraft_in_use"
    )
    await alice.deposit(account, "50.00")
    r = await master.request("PATCH", path, json={"overdraft_limit": "0.00"})
    assert r.status_code == 200 and r.json()["overdraft_limit"] == "0.00", r.text

    # Amounts are exact in the account's currency, zero or more.
    for bad in ("0.001", "1.001", "-1.00", "1e2", " 5.00"):
        r = await master.request("PATCH", path, json={"overdraft_limit": bad})
        assert_problem(r, 422, "invalid_amount")
    r = await master.request("PATCH", path, json={"overdraft_limit": "100000000000000.00"})
    assert_problem(r, 422, "invalid_amount")
    assert (await alice.account(account))["overdraft_limit"] == "0.00"
    assert_ledger_consistent(engine)


async def test_admin_patch_is_the_admins_and_customer_accounts_only(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account("JPY")
    r = await alice.request(
        "PATCH", f"/api/v1/admin/accounts/{account}", json={"overdraft_limit": "100"}
    )
    assert_problem(r, 403, "insufficient_scope")
    r = await master.request(
        "PATCH", f"/api/v1/admin/accounts/{account}", json={"overdraft_limit": "100"}
    )
    assert r.status_code == 200 and r.json()["overdraft_limit"] == "100", r.text
    for system in (system_account(engine, "world"), "00000000-0000-7000-8000-000000000000"):
        r = await master.request(
            "PATCH", f"/api/v1/admin/accounts/{system}", json={"overdraft_limit": "1"}
        )
        assert_problem(r, 404, "account_not_found")
    r = await master.request("PATCH", f"/api/v1/admin/accounts/{account}", json={"frozen": True})
    assert_problem(r, 422, "validation_error")


# ---------------------------------------------------------------- opening with a deposit


async def test_opening_with_a_deposit_is_one_idempotent_request(
    alice: LedgerClient, engine: Engine
) -> None:
    k = key()
    body = opening("100.00", metadata={"crm": "C-7"})
    r = await open_account(alice, body, k)
    assert r.status_code == 201, r.text
    account = r.json()
    assert (account["balance"], account["metadata"]) == ("0.00", {"crm": "C-7"})
    assert r.headers["Location"] == f"/api/v1/accounts/{account['id']}"
    deposit_path = r.headers["Operation-Location"]
    deposit = await alice.wait(deposit_path.rsplit("/", 1)[1])
    assert (deposit["type"], deposit["status"], deposit["amount"], deposit["account_id"]) == (
        "deposit",
        "succeeded",
        "100.00",
        account["id"],
    )
    assert await alice.balance(account["id"]) == "100.00"
    # The deposit is the account's operation, as any other.
    r = await alice.request("GET", "/api/v1/operations", params={"account_id": account["id"]})
    assert [o["id"] for o in r.json()["items"]] == [deposit["id"]]

    # A replay (the amount spelled otherwise) answers the same account; nothing new.
    for again in (body, {**body, "initial_deposit": "100"}):
        r = await open_account(alice, again, k)
        assert r.status_code == 200, r.text
        assert r.headers["Idempotent-Replayed"] == "true"
        assert r.headers["Operation-Location"] == deposit_path
        assert (r.json()["id"], r.json()["balance"]) == (account["id"], "100.00")
    # Later renames do not make a replay another request.
    await alice.request("PATCH", f"/api/v1/accounts/{account['id']}", json={"name": "renamed"})
    r = await open_account(alice, body, k)
    assert (r.status_code, r.json()["id"], r.json()["name"]) == (200, account["id"], "renamed")
    assert (account_count(engine, alice.user_id), operation_count(engine, alice.user_id)) == (1, 1)

    # The same key with another body: 422, nothing stored.
    for other in (
        {**body, "initial_deposit": "100.01"},
        {**body, "name": "other"},
        {**body, "metadata": {"crm": "C-8"}},
        {**body, "type": "savings"},
        {**body, "currency": "EUR"},
    ):
        r = await open_account(alice, other, k)
        assert_problem(r, 422, "idempotency_key_reused")
        assert r.headers["Location"] == deposit_path
    # A key another operation already took: the same.
    used = key()
    await alice.submit_ok(
        {"type": "deposit", "account_id": account["id"], "amount": "1.00"}, idempotency_key=used
    )
    assert_problem(await open_account(alice, body, used), 422, "idempotency_key_reused")
    assert (account_count(engine, alice.user_id), operation_count(engine, alice.user_id)) == (1, 2)
    assert_ledger_consistent(engine)


async def test_opening_needs_a_key_and_a_valid_deposit_and_stores_nothing_otherwise(
    alice: LedgerClient, engine: Engine
) -> None:
    assert_problem(await open_account(alice, opening()), 400, "idempotency_key_missing")
    assert_problem(await open_account(alice, opening(), ""), 400, "idempotency_key_missing")
    assert_problem(await open_account(alice, opening(), "k" * 256), 400, "idempotency_key_invalid")
    for bad in ("10.001", "0", "-5.00", "1e2", " 1.00", "100000000000000.00"):
        r = await open_account(alice, opening(bad), key())
        problem = assert_problem(r, 422, "invalid_amount")
        assert problem["field"] == "initial_deposit", problem
    r = await open_account(alice, {**opening(), "currency": "XXX"}, key())
    assert_problem(r, 422, "unknown_currency")
    r = await open_account(alice, opening(10), key())  # a JSON number, exact: fine
    assert r.status_code == 201, r.text
    assert (account_count(engine, alice.user_id), operation_count(engine, alice.user_id)) == (1, 1)
    # Without initial_deposit the key is not needed (nor used).
    r = await open_account(alice, {"name": "plain", "type": "checking", "currency": "USD"})
    assert r.status_code == 201 and "Operation-Location" not in r.headers, r.text


async def test_a_refused_deposit_leaves_no_account_and_the_retry_opens_it(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    limits = f"/api/v1/admin/users/{alice.user_id}/deposit-limits"
    r = await master.request("PUT", limits, json={"currency": "USD", "per_operation": "50.00"})
    assert r.status_code == 200, r.text
    k = key()
    r = await open_account(alice, opening("75.00"), k)
    problem = assert_problem(r, 422, "deposit_limit_exceeded")
    assert (problem["limit"], problem["requested"]) == ("per_operation", "75.00")
    assert (account_count(engine, alice.user_id), operation_count(engine, alice.user_id)) == (0, 0)
    r = await alice.request("GET", "/api/v1/accounts")
    assert r.json()["items"] == []

    # The same request once the limit allows it: opened, once.
    r = await master.request("PUT", limits, json={"currency": "USD", "per_operation": None})
    assert r.status_code == 200, r.text
    r = await open_account(alice, opening("75.00"), k)
    assert r.status_code == 201, r.text
    r2 = await open_account(alice, opening("75.00"), k)
    assert (r2.status_code, r2.json()["id"]) == (200, r.json()["id"])
    assert (account_count(engine, alice.user_id), operation_count(engine, alice.user_id)) == (1, 1)


async def test_concurrent_identical_openings_make_one_account_and_one_deposit(
    alice: LedgerClient, engine: Engine
) -> None:
    k = key()
    answers = await asyncio.gather(*(open_account(alice, opening("5.00"), k) for _ in range(12)))
    assert sorted(r.status_code for r in answers) == [200] * 11 + [201], [
        r.text for r in answers if r.status_code not in (200, 201)
    ]
    assert len({r.json()["id"] for r in answers}) == 1
    assert len({r.headers["Operation-Location"] for r in answers}) == 1
    assert (account_count(engine, alice.user_id), operation_count(engine, alice.user_id)) == (1, 1)
    account = answers[0].json()["id"]
    deposit = answers[0].headers["Operation-Location"].rsplit("/", 1)[1]
    assert (await alice.wait(deposit))["status"] == "succeeded"
    assert await alice.balance(account) == "5.00"


# ---------------------------------------------------------------- freeze, unfreeze, close


async def test_freeze_stops_debits_not_credits_until_unfrozen(
    alice: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "100.00")

    k = key()
    r = await control(master, account, "freeze", k)
    assert r.status_code == 200, r.text  # final within the wait
    frozen = r.json()
    assert (frozen["type"], frozen["status"], frozen["account_id"]) == (
        "freeze",
        "succeeded",
        account,
    )
    assert r.headers["Location"] == f"/api/v1/operations/{frozen['id']}"
    assert (await alice.account(account))["frozen"] is True
    # A replay of the freeze answers it again.
    r = await control(master, account, "freeze", k)
    assert (r.status_code, r.json()["id"], r.headers["Idempotent-Replayed"]) == (
        200,
        frozen["id"],
        "true",
    )

    w = await run(alice, {"type": "withdrawal", "account_id": account, "amount": "10.00"})
    assert (w["status"], w["error"]["code"]) == ("failed", "account_frozen"), w
    d = await run(alice, {"type": "deposit", "account_id": account, "amount": "5.00"})
    assert d["status"] == "succeeded", d
    assert await alice.balance(account) == "105.00"

    r = await control(master, account, "unfreeze")
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    assert (await alice.account(account))["frozen"] is False
    w = await run(alice, {"type": "withdrawal", "account_id": account, "amount": "10.00"})
    assert w["status"] == "succeeded", w
    assert await alice.balance(account) == "95.00"
    assert_ledger_consistent(engine)


async def test_freeze_and_unfreeze_are_the_admins(
    alice: LedgerClient, bob: LedgerClient, master: Caller, engine: Engine
) -> None:
    account = await alice.create_account()
    for action in ("freeze", "unfreeze"):
        assert_problem(await control(alice, account, action), 403, "insufficient_scope")
    # The admin acts on customer accounts only.
    world = system_account(engine, "world")
    assert_problem(await control(master, world, "freeze"), 404, "account_not_found")
    # Like any submit: the key is required.
    r = await master.request("POST", f"/api/v1/admin/accounts/{account}/freeze")
    assert_problem(r, 400, "idempotency_key_missing")
    # Bob cannot close Alice's account.
    assert_problem(await control(bob, account, "close"), 404, "account_not_found")
    assert (await alice.account(account))["closed_at"] is None


async def test_close_needs_an_empty_account_and_then_takes_nothing(
    alice: LedgerClient, engine: Engine
) -> None:
    account = await alice.create_account()
    other = await alice.create_account()
    await alice.deposit(account, "20.00")

    r = await control(alice, account, "close")
    assert r.status_code == 200, r.text
    failed = r.json()
    assert (failed["type"], failed["status"], failed["error"]["code"]) == (
        "close",
        "failed",
        "account_not_empty",
    )
    assert (await alice.account(account))["closed_at"] is None

    t = await run(
        alice,
        {"type": "transfer", "account_id": account, "to_account_id": other, "amount": "20.00"},
    )
    assert t["status"] == "succeeded", t
    r = await control(alice, account, "close")
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    closed = await alice.account(account)
    assert closed["closed_at"] is not None and closed["balance"] == "0.00"

    # A closed account takes no operation, as the debited or the credited account.
    for body in (
        {"type": "deposit", "account_id": account, "amount": "1.00"},
        {"type": "withdrawal", "account_id": account, "amount": "1.00"},
        {"type": "transfer", "account_id": other, "to_account_id": account, "amount": "1.00"},
    ):
        assert_problem(await alice.submit(body), 409, "account_closed")
    assert_problem(await control(alice, account, "close"), 409, "account_closed")
    # Nor a change.
    r = await alice.request("PATCH", f"/api/v1/accounts/{account}", json={"name": "again"})
    assert_problem(r, 409, "account_closed")
    r = await alice.request("PATCH", f"/api/v1/accounts/{account}", json={})
    assert_problem(r, 409, "account_closed")
    # It is still read, with its history.
    r = await alice.request("GET", f"/api/v1/accounts/{account}/entries")
    assert [e["balance_after"] for e in r.json()["items"]] == ["0.00", "20.00"]
    assert_ledger_consistent(engine)
