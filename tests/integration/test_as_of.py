"""Balances and history as of an instant: `GET /api/v1/accounts/{id}?as_of=` reads the balance from
the account's entries and the held balance from its holds as they stood then; the entries listing
takes the same bound."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx

from tests.integration.support import LedgerClient


def instant(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value)


def param(when: dt.datetime) -> str:
    return when.isoformat()


async def as_of(client: LedgerClient, account: str, when: dt.datetime | str) -> httpx.Response:
    value = when if isinstance(when, str) else param(when)
    return await client.request("GET", f"/api/v1/accounts/{account}", params={"as_of": value})


async def balances_as_of(
    client: LedgerClient, account: str, when: dt.datetime
) -> tuple[str, str, str]:
    r = await as_of(client, account, when)
    assert r.status_code == 200, r.text
    body = r.json()
    assert instant(body["as_of"]) == when
    return body["balance"], body["held_balance"], body["available_balance"]


async def entries_as_of(client: LedgerClient, account: str, when: dt.datetime | str) -> Any:
    value = when if isinstance(when, str) else param(when)
    return await client.request(
        "GET", f"/api/v1/accounts/{account}/entries", params={"as_of": value}
    )


async def entry_times(client: LedgerClient, account: str) -> list[dt.datetime]:
    """The account's entries' dates, oldest first."""
    r = await client.request("GET", f"/api/v1/accounts/{account}/entries")
    assert r.status_code == 200, r.text
    return [instant(e["created_at"]) for e in reversed(r.json()["items"])]


def problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["code"] == code, r.text


async def test_balance_as_of_each_entry(alice: LedgerClient) -> None:
    account = await alice.create_account()
    opened = instant((await alice.account(account))["created_at"])
    await alice.deposit(account, "100.00")
    await alice.deposit(account, "50.00")
    w = await alice.submit_ok({"type": "withdrawal", "account_id": account, "amount": "30.00"})
    assert (await alice.wait(w))["status"] == "succeeded"
    first, second, third = await entry_times(alice, account)
    micro = dt.timedelta(microseconds=1)

    # Before the first entry the account held nothing.
    assert await balances_as_of(alice, account, opened) == ("0.00", "0.00", "0.00")
    assert await balances_as_of(alice, account, first - micro) == ("0.00", "0.00", "0.00")
    # An entry counts from its own instant on (inclusive).
    assert await balances_as_of(alice, account, first) == ("100.00", "0.00", "100.00")
    assert await balances_as_of(alice, account, second - micro) == ("100.00", "0.00", "100.00")
    assert await balances_as_of(alice, account, second) == ("150.00", "0.00", "150.00")
    assert await balances_as_of(alice, account, third) == ("120.00", "0.00", "120.00")
    # Another offset, the same instant.
    plus_five = second.astimezone(dt.timezone(dt.timedelta(hours=5)))
    r = await as_of(alice, account, plus_five)
    assert r.status_code == 200 and r.json()["balance"] == "150.00", r.text

    # Without as_of: now, as_of null.
    now = await alice.account(account)
    assert (now["balance"], now["as_of"]) == ("120.00", None)

    # The entries listing takes the same bound.
    r = await entries_as_of(alice, account, second)
    assert r.status_code == 200, r.text
    assert [(e["operation_type"], e["balance_after"]) for e in r.json()["items"]] == [
        ("deposit", "150.00"),
        ("deposit", "100.00"),
    ]
    r = await entries_as_of(alice, account, opened)
    assert r.status_code == 200 and r.json()["items"] == [], r.text
    # With the other filters and pages.
    r = await alice.request(
        "GET",
        f"/api/v1/accounts/{account}/entries",
        params={"as_of": param(third), "limit": 1},
    )
    body = r.json()
    assert [e["balance_after"] for e in body["items"]] == ["120.00"]
    r = await alice.request(
        "GET",
        f"/api/v1/accounts/{account}/entries",
        params={"as_of": param(second), "limit": 1, "cursor": body["next_cursor"]},
    )
    assert [e["balance_after"] for e in r.json()["items"]] == ["150.00"], r.text


async def test_held_balance_as_of_from_the_holds_open_then(alice: LedgerClient) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "100.00")
    h = await alice.wait(
        await alice.submit_ok({"type": "hold", "account_id": account, "amount": "40.00"})
    )
    assert h["status"] == "succeeded", h
    r = await alice.request("GET", f"/api/v1/holds/{h['id']}")
    assert r.status_code == 200, r.text
    placed = instant(r.json()["created_at"])
    v = await alice.wait(await alice.submit_ok({"type": "void", "hold_id": h["id"]}))
    assert v["status"] == "succeeded", v
    r = await alice.request("GET", f"/api/v1/holds/{h['id']}")
    closed = instant(r.json()["closed_at"])
    micro = dt.timedelta(microseconds=1)

    assert await balances_as_of(alice, account, placed - micro) == ("100.00", "0.00", "100.00")
    assert await balances_as_of(alice, account, placed) == ("100.00", "40.00", "60.00")
    assert await balances_as_of(alice, account, closed - micro) == ("100.00", "40.00", "60.00")
    # Closed at that instant: no longer held.
    assert await balances_as_of(alice, account, closed) == ("100.00", "0.00", "100.00")
    now = await alice.account(account)
    assert (now["held_balance"], now["available_balance"]) == ("0.00", "100.00")


async def test_as_of_bounds_and_offsets(alice: LedgerClient, bob: LedgerClient) -> None:
    account = await alice.create_account()
    opened = instant((await alice.account(account))["created_at"])
    future = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    before = opened - dt.timedelta(seconds=1)

    problem(await as_of(alice, account, future), 422, "as_of_in_future")
    problem(await as_of(alice, account, before), 422, "as_of_before_account")
    problem(await as_of(alice, account, "2026-01-01T00:00:00"), 422, "validation_error")
    problem(await as_of(alice, account, "yesterday"), 422, "validation_error")
    problem(await entries_as_of(alice, account, future), 422, "as_of_in_future")
    problem(await entries_as_of(alice, account, before), 422, "as_of_before_account")
    problem(await entries_as_of(alice, account, "2026-01-01T00:00:00"), 422, "validation_error")
    # Someone else's account is missing, whatever the instant.
    problem(await as_of(bob, account, opened), 404, "account_not_found")
    problem(await entries_as_of(bob, account, opened), 404, "account_not_found")
    problem(await as_of(bob, account, future), 404, "account_not_found")
