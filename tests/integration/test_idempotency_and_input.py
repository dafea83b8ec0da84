"""Idempotency keys and bad input: clear 4xx problem details, and nothing changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine

from tests.integration.support import LedgerClient, key, operation_count


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["title"] and body["type"].endswith(code)
    return body


async def test_missing_and_oversized_keys_are_400(alice: LedgerClient, engine: Engine) -> None:
    account = await alice.create_account()
    body = {"type": "deposit", "account_id": account, "amount": "1.00"}
    r = await alice.request("POST", "/api/v1/operations", json=body)
    assert_problem(r, 400, "idempotency_key_missing")
    r = await alice.submit(body, "x" * 256)
    assert_problem(r, 400, "idempotency_key_invalid")
    assert (await alice.submit(body, "x" * 255)).status_code == 202
    assert operation_count(engine, alice.user_id) == 1


async def test_replay_same_body_returns_same_operation(alice: LedgerClient, engine: Engine) -> None:
    account = await alice.create_account()
    body = {"type": "deposit", "account_id": account, "amount": "7.00"}
    k = key()
    first = await alice.submit(body, k)
    assert first.status_code == 202
    assert "Idempotent-Replayed" not in first.headers
    await alice.wait(first.json()["id"])

    again = await alice.submit(body, k)
    assert again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.json()["status"] == "succeeded"
    # The same amount written differently is the same request.
    same = await alice.submit({**body, "amount": "7"}, k)
    assert same.status_code == 200 and same.json()["id"] == first.json()["id"]
    assert await alice.balance(account) == "7.00"
    assert operation_count(engine, alice.user_id) == 1


async def test_structured_field_quoted_key_is_the_same_key(alice: LedgerClient) -> None:
    account = await alice.create_account()
    body = {"type": "deposit", "account_id": account, "amount": "2.00"}
    first = await alice.submit(body, "order-8812")
    replay = await alice.submit(body, '"order-8812"')
    assert first.status_code == 202
    assert replay.status_code == 200
    assert replay.json()["id"] == first.json()["id"]


async def test_same_key_different_body_is_422(alice: LedgerClient, engine: Engine) -> None:
    account = await alice.create_account()
    k = key()
    first = await alice.submit({"type": "deposit", "account_id": account, "amount": "1.00"}, k)
    assert first.status_code == 202
    r = await alice.submit({"type": "deposit", "account_id": account, "amount": "2.00"}, k)
    assert_problem(r, 422, "idempotency_key_reused")
    assert operation_count(engine, alice.user_id) == 1


async def test_twenty_concurrent_identical_requests_make_one_operation(
    alice: LedgerClient, engine: Engine
) -> None:
    account = await alice.create_account()
    body = {"type": "deposit", "account_id": account, "amount": "3.00"}
    k = key()
    responses = await asyncio.gather(*(alice.submit(body, k) for _ in range(20)))
    assert sorted(r.status_code for r in responses) == [200] * 19 + [202]
    assert len({r.json()["id"] for r in responses}) == 1
    assert all(
        r.headers.get("Idempotent-Replayed") == "true" for r in responses if r.status_code == 200
    )
    await alice.wait(responses[0].json()["id"])
    assert await alice.balance(account) == "3.00"
    assert operation_count(engine, alice.user_id) == 1


async def test_keys_are_scoped_per_user(alice: LedgerClient, bob: LedgerClient) -> None:
    a = await alice.create_account()
    b = await bob.create_account()
    k = key()
    ra = await alice.submit({"type": "deposit", "account_id": a, "amount": "1.00"}, k)
    rb = await bob.submit({"type": "deposit", "account_id": b, "amount": "1.00"}, k)
    assert ra.status_code == rb.status_code == 202
    assert ra.json()["id"] != rb.json()["id"]


BAD_BODIES: list[tuple[str, dict[str, Any], int, str, str | None]] = [
    ("too many decimals", {"amount": "12.345"}, 422, "invalid_amount", "amount"),
    ("too many decimals as number", {"amount": 12.345}, 422, "invalid_amount", "amount"),
    ("zero", {"amount": "0.00"}, 422, "invalid_amount", "amount"),
    ("negative", {"amount": "-1.00"}, 422, "invalid_amount", "amount"),
    ("NaN", {"amount": "NaN"}, 422, "invalid_amount", "amount"),
    ("infinity", {"amount": "Infinity"}, 422, "invalid_amount", "amount"),
    ("over the limit", {"amount": "10000000000000.01"}, 422, "invalid_amount", "amount"),
    ("not a number", {"amount": "ten"}, 422, "validation_error", "amount"),
    # Python's Decimal (and so the JSON decoder) reads these; the documented grammar does not.
    ("leading space", {"amount": " 1.00"}, 422, "invalid_amount", "amount"),
    ("trailing space", {"amount": "1.00 "}, 422, "invalid_amount", "amount"),
    ("digit separator", {"amount": "1_000"}, 422, "invalid_amount", "amount"),
    ("plus sign", {"amount": "+1"}, 422, "invalid_amount", "amount"),
    ("exponent", {"amount": "1e2"}, 422, "invalid_amount", "amount"),
    ("boolean", {"amount": True}, 422, "validation_error", "amount"),
    ("missing amount", {"amount": None}, 422, "validation_error", "amount"),
    ("unknown type", {"type": "mint"}, 422, "validation_error", "type"),
    ("unknown field", {"currency": "USD"}, 422, "validation_error", None),
    ("bad account id", {"account_id": "nope"}, 422, "validation_error", "account_id"),
    (
        "deposit with a target",
        {"to_account_id": "00000000-0000-7000-8000-000000000000"},
        422,
        "validation_error",
        "to_account_id",
    ),
    ("description too long", {"description": "x" * 501}, 422, "validation_error", "description"),
]


@pytest.mark.parametrize(
    ("name", "change", "status", "code", "field"), BAD_BODIES, ids=[b[0] for b in BAD_BODIES]
)
async def test_bad_operation_bodies_change_nothing(
    alice: LedgerClient,
    engine: Engine,
    name: str,
    change: dict[str, Any],
    status: int,
    code: str,
    field: str | None,
) -> None:
    account = await alice.create_account()
    body: dict[str, Any] = {"type": "deposit", "account_id": account, "amount": "1.00", **change}
    body = {k: v for k, v in body.items() if v is not None}
    r = await alice.submit(body)
    problem = assert_problem(r, status, code)
    if field is not None:
        assert problem.get("field") == field or field in problem["detail"], problem
    assert operation_count(engine, alice.user_id) == 0
    assert await alice.balance(account) == "0.00"


async def test_bad_transfers_and_foreign_accounts(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    a = await alice.create_account("USD")
    a_eur = await alice.create_account("EUR")
    b = await bob.create_account("USD")
    await alice.deposit(a, "5.00")
    await bob.deposit(b, "5.00")
    before = operation_count(engine, alice.user_id)

    transfer = {"type": "transfer", "account_id": a, "amount": "1.00"}
    assert_problem(await alice.submit(transfer), 422, "validation_error")
    assert_problem(await alice.submit({**transfer, "to_account_id": a}), 422, "same_account")
    assert_problem(
        await alice.submit({**transfer, "to_account_id": a_eur}), 422, "currency_mismatch"
    )
    missing = "01890000-0000-7000-8000-000000000000"
    assert_problem(
        await alice.submit({**transfer, "to_account_id": missing}), 422, "account_not_found"
    )
    # Debiting someone else's account: 404, as if it did not exist.
    assert_problem(
        await alice.submit({"type": "withdrawal", "account_id": b, "amount": "1.00"}),
        404,
        "account_not_found",
    )
    assert_problem(
        await alice.submit(
            {"type": "transfer", "account_id": b, "to_account_id": a, "amount": "1.00"}
        ),
        404,
        "account_not_found",
    )
    assert_problem(await alice.request("GET", f"/api/v1/accounts/{b}"), 404, "account_not_found")
    assert_problem(
        await alice.request("GET", f"/api/v1/accounts/{b}/entries"), 404, "account_not_found"
    )
    assert_problem(
        await alice.request("GET", "/api/v1/operations", params={"account_id": b}),
        404,
        "account_not_found",
    )
    bob_op = (await bob.request("GET", "/api/v1/operations")).json()["items"][0]["id"]
    assert_problem(
        await alice.request("GET", f"/api/v1/operations/{bob_op}"), 404, "operation_not_found"
    )
    assert_problem(
        await alice.request("DELETE", f"/api/v1/operations/{bob_op}"), 404, "operation_not_found"
    )

    assert operation_count(engine, alice.user_id) == before
    assert await alice.balance(a) == "5.00"
    assert await bob.balance(b) == "5.00"


async def test_malformed_requests(alice: LedgerClient, http: httpx.AsyncClient) -> None:
    r = await alice.request(
        "POST",
        "/api/v1/operations",
        content=b"{not json",
        headers={"Idempotency-Key": key(), "Content-Type": "application/json"},
    )
    assert r.status_code in (400, 422)
    assert r.headers["content-type"].startswith("application/problem+json")

    assert_problem(
        await alice.request(
            "POST", "/api/v1/accounts", json={"name": "x", "type": "checking", "currency": "XYZ"}
        ),
        422,
        "unknown_currency",
    )
    assert_problem(
        await alice.request(
            "POST", "/api/v1/accounts", json={"name": "x", "type": "brokerage", "currency": "USD"}
        ),
        422,
        "validation_error",
    )
    assert_problem(
        await alice.request("GET", "/api/v1/accounts", params={"limit": 501}),
        422,
        "validation_error",
    )
    assert_problem(
        await alice.request("GET", "/api/v1/accounts", params={"cursor": "garbage"}),
        422,
        "invalid_cursor",
    )
    assert_problem(await http.get("/api/v1/accounts"), 401, "unauthenticated")
    r = await http.get("/api/v1/accounts", auth=(alice.username, "wrong-password-123"))
    body = assert_problem(r, 401, "unauthenticated")
    assert r.headers["WWW-Authenticate"].startswith("Basic")
    assert "wrong-password" not in r.text and body["detail"]


async def test_register_rules(http: httpx.AsyncClient, alice: LedgerClient) -> None:
    r = await http.post(
        "/api/v1/auth/register", json={"username": alice.username.upper(), "password": "x" * 12}
    )
    assert_problem(r, 409, "username_taken")
    r = await http.post("/api/v1/auth/register", json={"username": "shorty", "password": "short"})
    assert_problem(r, 422, "validation_error")
    r = await http.post("/api/v1/auth/register", json={"username": "a b", "password": "x" * 12})
    assert_problem(r, 422, "validation_error")


async def test_bodies_must_be_declared_json(alice: LedgerClient, engine: Engine) -> None:
    account = await alice.create_account()
    body = json.dumps({"type": "deposit", "account_id": account, "amount": "1.00"})
    # A JSON body declared as something else was parsed as JSON all the same: now 415, unread.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Idempotency-Key": key()}
        if content_type is not None:
            headers["Content-Type"] = content_type
        r = await alice.request("POST", "/api/v1/operations", content=body, headers=headers)
        assert_problem(r, 415, "unsupported_media_type")
    r = await alice.request(
        "POST",
        "/api/v1/accounts",
        content=json.dumps({"name": "x", "type": "checking", "currency": "USD"}),
        headers={"Content-Type": "text/plain"},
    )
    assert_problem(r, 415, "unsupported_media_type")
    assert operation_count(engine, alice.user_id) == 0
    # JSON with parameters, and +json types, are JSON.
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        r = await alice.request(
            "POST",
            "/api/v1/operations",
            content=body,
            headers={"Content-Type": content_type, "Idempotency-Key": key()},
        )
        assert r.status_code == 202, r.text
    assert operation_count(engine, alice.user_id) == 2


async def test_amounts_written_outside_the_grammar_change_nothing(
    alice: LedgerClient, engine: Engine
) -> None:
    """A JSON number with an exponent (raw JSON: no encoder writes 1e2 for us), alone or as one
    item of a batch, whose other item is stored."""
    account = await alice.create_account()
    headers = {"Content-Type": "application/json"}
    body = f'{{"type": "deposit", "account_id": "{account}", "amount": 1e2}}'
    r = await alice.request(
        "POST", "/api/v1/operations", content=body, headers={**headers, "Idempotency-Key": key()}
    )
    assert assert_problem(r, 422, "invalid_amount")["field"] == "amount"
    items = [
        f'{{"idempotency_key": "{key()}", "type": "deposit", "account_id": "{account}", '
        f'"amount": {amount}}}'
        for amount in ('"1.00"', '" 2.00"', "3E0")
    ]
    r = await alice.request(
        "POST",
        "/api/v1/operations/batch",
        content=f'{{"operations": [{", ".join(items)}]}}',
        headers=headers,
    )
    assert r.status_code == 207, r.text
    results = r.json()["results"]
    assert [x["status"] for x in results] == [202, 422, 422]
    assert {x["error"]["code"] for x in results[1:]} == {"invalid_amount"}
    assert operation_count(engine, alice.user_id) == 1
