"""Identity and access: three ways to authenticate, API keys and scopes, isolation between users,
the master key, rate limits and failed-login limits across API processes, and secret hygiene."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import jwt
import pytest
from sqlalchemy import Engine

from api.auth import ACCESS, PUBLIC_PATHS
from devserver import free_port
from tests.integration.support import (
    PASSWORD,
    ROOT,
    LedgerClient,
    Process,
    failed_login_addresses,
    insert_pending,
    key,
    wait_for_http,
    wait_terminal,
)


def assert_problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = dict(r.json())
    assert body["code"] == code, body
    return body


def assert_unauthenticated(r: httpx.Response) -> dict[str, Any]:
    body = assert_problem(r, 401, "unauthenticated")
    challenge = r.headers["WWW-Authenticate"]
    assert challenge.startswith("Basic realm=") and "Bearer" in challenge, challenge
    return body


def basic_header(username: str, password: str = PASSWORD) -> dict[str, str]:
    encoded = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {encoded}"}


@dataclass
class Caller(LedgerClient):
    """A LedgerClient that authenticates with whatever headers it is given (Basic, Bearer, key)."""

    headers: dict[str, str] = field(default_factory=dict)

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return await self.http.request(method, url, headers=headers, **kw)


async def token_for(http: httpx.AsyncClient, user: LedgerClient) -> str:
    r = await http.post("/api/v1/auth/token", headers=basic_header(user.username))
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


async def create_key(
    caller: LedgerClient | Caller, scopes: list[str], **extra: Any
) -> dict[str, Any]:
    r = await caller.request(
        "POST", "/api/v1/api-keys", json={"name": f"key {key()}", "scopes": scopes, **extra}
    )
    assert r.status_code == 201, r.text
    assert r.headers["Cache-Control"] == "no-store"
    return dict(r.json())


def as_key(user: LedgerClient, secret: str) -> Caller:
    return Caller(user.http, user.username, user.user_id, headers={"X-API-Key": secret})


async def as_method(user: LedgerClient, method: str) -> Caller:
    if method == "basic":
        headers = basic_header(user.username)
    elif method == "bearer":
        headers = {"Authorization": f"Bearer {await token_for(user.http, user)}"}
    else:
        secret = (await create_key(user, ["accounts:read", "operations:write"]))["secret"]
        headers = {"X-API-Key": secret}
    return Caller(user.http, user.username, user.user_id, headers=headers)


@pytest.fixture
def master(http: httpx.AsyncClient, service_env: dict[str, str]) -> Caller:
    return Caller(
        http, "(master key)", "", headers={"X-API-Key": service_env["LEDGERQ_MASTER_KEY"]}
    )


# ---------------------------------------------------------------- three ways in


@pytest.mark.parametrize("method", ["basic", "bearer", "api_key"])
async def test_walkthrough_with_each_method(http: httpx.AsyncClient, method: str) -> None:
    user = await LedgerClient.register(http, f"walk-{method}")
    caller = await as_method(user, method)
    main = await caller.create_account()
    savings = await caller.create_account(kind="savings")
    await caller.deposit(main, "100.00", category="salary")
    withdrawal = await caller.submit_ok(
        {"type": "withdrawal", "account_id": main, "amount": "25.50"}
    )
    transfer = await caller.submit_ok(
        {"type": "transfer", "account_id": main, "to_account_id": savings, "amount": "10.00"}
    )
    results = await caller.wait_all([withdrawal, transfer])
    assert [r["status"] for r in results] == ["succeeded", "succeeded"]
    assert (await caller.balance(main), await caller.balance(savings)) == ("64.50", "10.00")

    r = await caller.request("GET", f"/api/v1/accounts/{main}/entries")
    assert r.status_code == 200, r.text
    history = [(e["operation_type"], e["amount"], e["balance_after"]) for e in r.json()["items"]]
    assert history == [
        ("transfer", "-10.00", "64.50"),
        ("withdrawal", "-25.50", "74.50"),
        ("deposit", "100.00", "100.00"),
    ]
    r = await caller.request("GET", "/api/v1/operations", params={"account_id": main})
    assert [o["type"] for o in r.json()["items"]] == ["transfer", "withdrawal", "deposit"]
    # Every method resolves to the same user: what one wrote, the others read.
    r = await user.request("GET", "/api/v1/accounts")
    assert sorted(a["id"] for a in r.json()["items"]) == sorted([main, savings])


async def test_every_401_carries_www_authenticate(
    http: httpx.AsyncClient, alice: LedgerClient
) -> None:
    unknown_key = "lq_" + secrets.token_urlsafe(32)
    attempts: list[dict[str, str]] = [
        {},
        basic_header(alice.username, "wrong-password-123"),
        basic_header("nobody-" + key(), "wrong-password-123"),
        {"Authorization": "Basic not-base64!"},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Digest username=x"},
        {"X-API-Key": unknown_key},
        {"X-API-Key": "short"},
        {**basic_header(alice.username), "X-API-Key": unknown_key},  # two methods at once
    ]
    for headers in attempts:
        body = assert_unauthenticated(await http.get("/api/v1/accounts", headers=headers))
        assert PASSWORD not in body["detail"] and unknown_key not in str(body)


async def test_every_authenticated_route_has_an_access_rule(http: httpx.AsyncClient) -> None:
    schema = (await http.get("/docs/openapi.json")).json()
    guarded = {
        op["operationId"]
        for path, item in schema["paths"].items()
        for op in item.values()
        if isinstance(op, dict) and not any(re.match(p, path) for p in PUBLIC_PATHS)
    }
    # A route without a rule is refused to everyone; a rule without a route is a stale rule.
    # WebSocket routes have no place in OpenAPI; they are checked in test_investments.py.
    websockets = {"followCaptado", "followAccount"}
    assert guarded == set(ACCESS) - websockets
    assert set(schema["components"]["securitySchemes"]) == {"basic", "bearer", "apiKey"}


# ---------------------------------------------------------------- tokens


async def test_tokens_expire_and_cannot_be_forged(
    http: httpx.AsyncClient, alice: LedgerClient, bob: LedgerClient, service_env: dict[str, str]
) -> None:
    r = await http.post("/api/v1/auth/token", headers=basic_header(alice.username))
    assert r.status_code == 200, r.text
    assert r.headers["Cache-Control"] == "no-store"
    body = r.json()
    assert (body["token_type"], body["expires_in"]) == ("bearer", 900)
    token = body["access_token"]
    account = await alice.create_account()
    r = await http.get(f"/api/v1/accounts/{account}", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200

    secret = service_env["LEDGERQ_SECRET_KEY"]
    now = int(time.time())
    claims = {"iss": "ledgerq", "sub": alice.user_id, "name": alice.username}
    expired = jwt.encode({**claims, "iat": now - 1000, "exp": now - 1}, secret, "HS256")
    header, payload, signature = token.split(".")
    bob_payload = jwt.encode({**claims, "sub": bob.user_id, "iat": now, "exp": now + 900}, "x" * 32)
    forged = {
        "expired": expired,
        "tampered signature": f"{header}.{payload}.{signature[:-4]}AAAA",
        "payload swapped": f"{header}.{bob_payload.split('.')[1]}.{signature}",
        "other key": jwt.encode({**claims, "iat": now, "exp": now + 900}, "y" * 32, "HS256"),
        "alg none": jwt.encode({**claims, "iat": now, "exp": now + 900}, None, "none"),
        "no expiry": jwt.encode({**claims, "iat": now}, secret, "HS256"),
    }
    for name, bad in forged.items():
        r = await http.get(
            f"/api/v1/accounts/{account}", headers={"Authorization": f"Bearer {bad}"}
        )
        problem = assert_unauthenticated(r)
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"], name
        if name == "expired":
            assert "expired" in problem["detail"]

    # Only a password mints a token: not a token, not a key.
    r = await http.post("/api/v1/auth/token", headers={"Authorization": f"Bearer {token}"})
    assert_unauthenticated(r)
    secret_key = (await create_key(alice, ["accounts:read"]))["secret"]
    assert_unauthenticated(await http.post("/api/v1/auth/token", headers={"X-API-Key": secret_key}))


# ---------------------------------------------------------------- API keys and scopes


async def test_api_keys_are_shown_once_listed_without_secrets_and_revoked_at_once(
    alice: LedgerClient,
) -> None:
    account = await alice.create_account()
    created = await create_key(alice, ["accounts:read", "accounts:read"], rate_limit=100)
    secret = created["secret"]
    assert re.fullmatch(r"lq_[A-Za-z0-9_-]{43}", secret)
    assert created["scopes"] == ["accounts:read"]
    assert secret.startswith(created["prefix"]) and len(created["prefix"]) < len(secret)
    assert created["last_used_at"] is None and created["user_id"] == alice.user_id

    keyed = as_key(alice, secret)
    assert (await keyed.request("GET", f"/api/v1/accounts/{account}")).status_code == 200
    listing = (await alice.request("GET", "/api/v1/api-keys")).json()["items"]
    [listed] = [k for k in listing if k["id"] == created["id"]]
    assert "secret" not in listed and secret not in str(listing)
    assert listed["prefix"] == created["prefix"] and listed["rate_limit"] == 100
    assert listed["last_used_at"] is not None

    r = await alice.request("DELETE", f"/api/v1/api-keys/{created['id']}")
    assert r.status_code == 204, r.text
    assert_unauthenticated(await keyed.request("GET", f"/api/v1/accounts/{account}"))
    listing = (await alice.request("GET", "/api/v1/api-keys")).json()["items"]
    assert created["id"] not in [k["id"] for k in listing]
    r = await alice.request("DELETE", f"/api/v1/api-keys/{created['id']}")
    assert_problem(r, 404, "api_key_not_found")


async def test_scopes_limit_what_a_key_may_do(alice: LedgerClient, bob: LedgerClient) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "5.00")
    deposit = {"type": "deposit", "account_id": account, "amount": "1.00"}

    reader = as_key(alice, (await create_key(alice, ["accounts:read"]))["secret"])
    assert (await reader.request("GET", f"/api/v1/accounts/{account}")).status_code == 200
    assert (await reader.request("GET", "/api/v1/operations")).status_code == 200
    body = assert_problem(await reader.submit(deposit), 403, "insufficient_scope")
    assert body["required_scope"] == "operations:write"
    r = await reader.request(
        "POST", "/api/v1/accounts", json={"name": "x", "type": "checking", "currency": "USD"}
    )
    assert_problem(r, 403, "insufficient_scope")

    writer = as_key(alice, (await create_key(alice, ["operations:write"]))["secret"])
    r = await writer.submit(deposit)
    assert r.status_code == 202, r.text
    r = await writer.request("GET", f"/api/v1/operations/{r.json()['id']}")
    assert_problem(r, 403, "insufficient_scope")
    assert_problem(await writer.request("GET", "/api/v1/accounts"), 403, "insufficient_scope")

    # Keys never mint or manage keys (a leaked key must not outlive its revocation).
    for keyed in (reader, writer):
        r = await keyed.request(
            "POST", "/api/v1/api-keys", json={"name": "n", "scopes": ["accounts:read"]}
        )
        assert_problem(r, 403, "forbidden")
        assert_problem(await keyed.request("GET", "/api/v1/api-keys"), 403, "forbidden")
    # Users neither grant admin nor make keys for someone else.
    r = await alice.request("POST", "/api/v1/api-keys", json={"name": "n", "scopes": ["admin"]})
    assert_problem(r, 403, "forbidden")
    r = await alice.request(
        "POST",
        "/api/v1/api-keys",
        json={"name": "n", "scopes": ["accounts:read"], "user_id": bob.user_id},
    )
    assert_problem(r, 403, "forbidden")
    r = await alice.request("POST", "/api/v1/api-keys", json={"name": "n", "scopes": ["root"]})
    assert_problem(r, 422, "validation_error")


# ---------------------------------------------------------------- isolation


async def test_a_user_cannot_reach_anything_of_another_user(
    alice: LedgerClient, bob: LedgerClient, engine: Engine
) -> None:
    theirs = await bob.create_account()
    their_deposit = (await bob.deposit(theirs, "50.00"))["id"]
    [their_pending] = insert_pending(engine, bob.user_id, theirs, [100])
    their_key = await create_key(bob, ["accounts:read"])
    mine = await alice.create_account()
    await alice.deposit(mine, "10.00")
    alice_key = as_key(
        alice, (await create_key(alice, ["accounts:read", "operations:write"]))["secret"]
    )

    for caller in (alice, alice_key):
        for method, url, params in [
            ("GET", f"/api/v1/accounts/{theirs}", None),
            ("GET", f"/api/v1/accounts/{theirs}/entries", None),
            ("GET", f"/api/v1/operations/{their_deposit}", None),
            ("GET", "/api/v1/operations", {"account_id": theirs}),
            ("DELETE", f"/api/v1/operations/{their_pending}", None),
        ]:
            r = await caller.request(method, url, params=params)
            assert r.status_code == 404, (method, url, r.text)
        for body in (
            {"type": "withdrawal", "account_id": theirs, "amount": "1.00"},
            {"type": "transfer", "account_id": theirs, "to_account_id": mine, "amount": "1.00"},
        ):
            assert_problem(await caller.submit(body), 404, "account_not_found")
        r = await caller.request(
            "POST",
            "/api/v1/operations/batch",
            json={
                "operations": [
                    {
                        "idempotency_key": key(),
                        "type": "withdrawal",
                        "account_id": theirs,
                        "amount": "1.00",
                    }
                ]
            },
        )
        assert r.status_code == 207 and r.json()["results"][0]["status"] == 404
        accounts = (await caller.request("GET", "/api/v1/accounts")).json()["items"]
        assert [a["id"] for a in accounts] == [mine]
        operations = (await caller.request("GET", "/api/v1/operations")).json()["items"]
        assert {o["account_id"] for o in operations} == {mine}
    r = await alice.request("DELETE", f"/api/v1/api-keys/{their_key['id']}")
    assert_problem(r, 404, "api_key_not_found")
    keys = (await alice.request("GET", "/api/v1/api-keys")).json()["items"]
    assert {k["user_id"] for k in keys} == {alice.user_id}

    # Crediting someone else's account is allowed; nothing of theirs was debited or cancelled.
    credit = await alice.submit_ok(
        {"type": "transfer", "account_id": mine, "to_account_id": theirs, "amount": "2.00"}
    )
    assert (await alice.wait(credit))["status"] == "succeeded"
    assert wait_terminal(engine, [their_pending])[their_pending] == "succeeded"
    assert await bob.balance(theirs) == "53.00"
    assert (
        await as_key(bob, their_key["secret"]).request("GET", "/api/v1/accounts")
    ).status_code == 200


async def test_same_idempotency_key_from_two_users_makes_two_operations(
    alice: LedgerClient, bob: LedgerClient
) -> None:
    k = key()
    a, b = await alice.create_account(), await bob.create_account()
    first = await alice.submit({"type": "deposit", "account_id": a, "amount": "1.00"}, k)
    second = await bob.submit({"type": "deposit", "account_id": b, "amount": "2.00"}, k)
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.json()["id"] != second.json()["id"]
    replay = await alice.submit({"type": "deposit", "account_id": a, "amount": "1.00"}, k)
    assert replay.status_code == 200 and replay.json()["id"] == first.json()["id"]
    await alice.wait(first.json()["id"])
    await bob.wait(second.json()["id"])
    assert (await alice.balance(a), await bob.balance(b)) == ("1.00", "2.00")


# ---------------------------------------------------------------- the master key


async def collect_pages(caller: Caller, url: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await caller.request("GET", url, params=query)
        assert r.status_code == 200, r.text
        items += r.json()["items"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return items


async def test_master_key_administers_keys_users_and_accounts(
    http: httpx.AsyncClient, alice: LedgerClient, bob: LedgerClient, master: Caller
) -> None:
    account = await alice.create_account()
    created = await create_key(master, ["accounts:read"], user_id=alice.user_id, rate_limit=50)
    assert created["user_id"] == alice.user_id
    on_behalf = as_key(alice, created["secret"])
    assert (await on_behalf.request("GET", f"/api/v1/accounts/{account}")).status_code == 200

    r = await master.request("POST", "/api/v1/api-keys", json={"name": "n", "scopes": ["admin"]})
    assert_problem(r, 422, "validation_error")  # the master key is nobody: name the user
    r = await master.request(
        "POST",
        "/api/v1/api-keys",
        json={"name": "n", "scopes": ["accounts:read"], "user_id": str(uuid4())},
    )
    assert_problem(r, 404, "user_not_found")

    users = await collect_pages(master, "/api/v1/admin/users", limit=50)
    names = {u["id"]: u["username"] for u in users}
    assert (names[alice.user_id], names[bob.user_id]) == (alice.username, bob.username)
    assert len(names) == len(users)  # pages neither repeat nor skip
    first = (await master.request("GET", "/api/v1/admin/users", params={"limit": 1})).json()
    assert len(first["items"]) == 1 and first["next_cursor"]

    theirs = await bob.create_account()
    accounts = await collect_pages(master, "/api/v1/admin/accounts", owner_id=alice.user_id)
    assert [(a["id"], a["owner_id"]) for a in accounts] == [(account, alice.user_id)]
    everyone = {a["id"] for a in await collect_pages(master, "/api/v1/admin/accounts", limit=200)}
    assert {account, theirs} <= everyone

    # The master key administers; it holds no accounts of its own.
    assert_problem(await master.request("GET", "/api/v1/accounts"), 403, "insufficient_scope")
    for user in (alice, on_behalf):
        for url in ("/api/v1/admin/users", "/api/v1/admin/accounts"):
            assert_problem(await user.request("GET", url), 403, "insufficient_scope")
    wrong = Caller(http, "", "", headers={"X-API-Key": secrets.token_urlsafe(32)})
    assert_unauthenticated(await wrong.request("GET", "/api/v1/admin/users"))

    # An admin-scoped key (only the admin can grant one) administers too.
    admin_key = await create_key(master, ["admin"], user_id=bob.user_id)
    delegate = as_key(bob, admin_key["secret"])
    assert (
        await delegate.request("GET", "/api/v1/admin/users", params={"limit": 1})
    ).status_code == 200
    assert (await create_key(delegate, ["operations:write"], user_id=alice.user_id))[
        "user_id"
    ] == alice.user_id

    r = await master.request("DELETE", f"/api/v1/api-keys/{created['id']}")
    assert r.status_code == 204
    assert_unauthenticated(await on_behalf.request("GET", f"/api/v1/accounts/{account}"))


# ---------------------------------------------------------------- limits


@pytest.fixture(scope="module")
def limited_apis(service_env: dict[str, str], logs_dir: Path) -> Iterator[list[str]]:
    """Two more API processes with small limits and short windows, sharing the suite's Redis."""
    env = {
        **service_env,
        "LEDGERQ_RATE_LIMIT": "10",
        "LEDGERQ_RATE_LIMIT_WINDOW": "4",
        "LEDGERQ_LOGIN_MAX_FAILURES": "3",
        "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS": "6",
        "LEDGERQ_LOGIN_FAILURE_WINDOW": "5",
    }
    processes, urls = [], []
    for n in (1, 2):
        port = free_port()
        process = Process(
            f"api-limited-{n}",
            ["-m", "cli", "api"],
            {**env, "LEDGERQ_API_PORT": str(port)},
            logs_dir,
        )
        process.start()
        processes.append(process)
        urls.append(f"http://127.0.0.1:{port}")
    try:
        for process, url in zip(processes, urls, strict=True):
            wait_for_http(f"{url}/health", process, timeout=60)
        yield urls
    finally:
        for process in processes:
            process.stop()


@pytest.fixture
async def clients_from() -> AsyncIterator[Any]:
    """Clients connecting from a chosen loopback address (127.0.0.x): each is another client address."""
    opened: list[httpx.AsyncClient] = []

    def client_from(base_url: str, address: str, **kw: Any) -> httpx.AsyncClient:
        transport = httpx.AsyncHTTPTransport(local_address=address)
        client = httpx.AsyncClient(base_url=base_url, transport=transport, timeout=30, **kw)
        opened.append(client)
        return client

    yield client_from
    for client in opened:
        await client.aclose()


async def test_rate_limit_is_shared_by_api_processes_and_recovers(
    http: httpx.AsyncClient, limited_apis: list[str], clients_from: Any
) -> None:
    user = await LedgerClient.register(http, "limited")
    other = await LedgerClient.register(http, "unlimited")
    bearer = {"Authorization": f"Bearer {await token_for(http, user)}"}
    one, two = (clients_from(url, "127.0.0.1") for url in limited_apis)

    started = time.monotonic()
    for n in range(10):
        r = await (one if n % 2 == 0 else two).get("/api/v1/accounts", headers=bearer)
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Limit"] == "10"
        assert r.headers["RateLimit-Remaining"] == str(9 - n)
        assert r.headers["RateLimit-Policy"] == "10;w=4"
    for client in (one, two):
        r = await client.get("/api/v1/accounts", headers=bearer)
        assert_problem(r, 429, "rate_limited")
        assert r.headers["RateLimit-Remaining"] == "0"
        retry_after = int(r.headers["Retry-After"])
        assert 1 <= retry_after <= 4
    assert time.monotonic() - started < 4, "too slow to be inside one window"

    # Per principal: another user (a token of their own) is not limited by this one.
    theirs = {"Authorization": f"Bearer {await token_for(http, other)}"}
    assert (await two.get("/api/v1/accounts", headers=theirs)).status_code == 200

    await asyncio.sleep(retry_after + 0.2)
    r = await two.get("/api/v1/accounts", headers=bearer)
    assert r.status_code == 200 and r.headers["RateLimit-Remaining"] == "9"

    # An API key may carry its own limit, counted separately from its owner's.
    limited_key = (await create_key(user, ["accounts:read"], rate_limit=3))["secret"]
    statuses = [
        (await client.get("/api/v1/accounts", headers={"X-API-Key": limited_key})).status_code
        for client in (one, two, one, two)
    ]
    assert statuses == [200, 200, 200, 429]

    # Public routes count per client address; probes are never limited.
    stranger = clients_from(limited_apis[0], "127.0.0.7")
    statuses = [(await stranger.get("/docs/openapi.json")).status_code for _ in range(11)]
    assert statuses == [200] * 10 + [429]
    assert {(await stranger.get("/health")).status_code for _ in range(12)} == {200}


async def test_failed_logins_are_limited_per_username_and_per_address(
    http: httpx.AsyncClient, limited_apis: list[str], clients_from: Any
) -> None:
    user = await LedgerClient.register(http, "target")
    here = clients_from(limited_apis[0], "127.0.0.11")
    there = clients_from(limited_apis[1], "127.0.0.12")
    right, wrong = basic_header(user.username), basic_header(user.username, "not-the-password")

    assert (await here.get("/api/v1/accounts", headers=right)).status_code == 200
    for client in (here, there, here):  # per username: counted across processes and addresses
        assert_unauthenticated(await client.get("/api/v1/accounts", headers=wrong))
    for client in (here, there):
        # The right password (even one this process remembers) is refused: the check comes
        # before any verification, so a throttled guess learns nothing.
        r = await client.get("/api/v1/accounts", headers=right)
        assert_problem(r, 429, "too_many_failed_logins")
        retry_after = int(r.headers["Retry-After"])
        assert 1 <= retry_after <= 5
    r = await there.post("/api/v1/auth/token", headers=right)
    assert_problem(r, 429, "too_many_failed_logins")

    # Per address: many usernames guessed from one address lock that address out.
    bystander = await LedgerClient.register(http, "bystander")
    guesser = clients_from(limited_apis[1], "127.0.0.13")
    for _ in range(6):
        r = await guesser.get(
            "/api/v1/accounts", headers=basic_header(f"guess-{key()}", "password-guess")
        )
        assert_unauthenticated(r)
    r = await guesser.get("/api/v1/accounts", headers=basic_header(bystander.username))
    assert_problem(r, 429, "too_many_failed_logins")
    elsewhere = clients_from(limited_apis[1], "127.0.0.14")
    assert (
        await elsewhere.get("/api/v1/accounts", headers=basic_header(bystander.username))
    ).status_code == 200

    await asyncio.sleep(retry_after + 0.2)
    assert (await there.get("/api/v1/accounts", headers=right)).status_code == 200


PER_ADDRESS = 3


@pytest.fixture(scope="module")
def proxy_apis(service_env: dict[str, str], logs_dir: Path) -> Iterator[dict[str, str]]:
    """Two API processes with a small per-address failed-login limit: "default" with
    LEDGERQ_TRUSTED_PROXIES at its default (empty; as the suite's API), "trusting" 127.0.0.1."""
    variants = {"default": "", "trusting": "127.0.0.1"}
    processes, urls = [], {}
    for name, trusted in variants.items():
        port = free_port()
        env = {
            **service_env,
            "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS": str(PER_ADDRESS),
            # Set even when empty, so that nothing in this process's environment leaks in.
            "LEDGERQ_TRUSTED_PROXIES": trusted,
            "LEDGERQ_API_PORT": str(port),
        }
        process = Process(f"api-proxy-{name}", ["-m", "cli", "api"], env, logs_dir)
        process.start()
        processes.append(process)
        urls[name] = f"http://127.0.0.1:{port}"
    try:
        for process, url in zip(processes, urls.values(), strict=True):
            wait_for_http(f"{url}/health", process, timeout=60)
        yield urls
    finally:
        for process in processes:
            process.stop()


async def guess(client: httpx.AsyncClient, forwarded_for: str) -> httpx.Response:
    """A failed login (a username of its own, so only the per-address limit can bite)."""
    return await client.get(
        "/api/v1/accounts",
        headers={
            **basic_header(f"guess-{key()}", "password-guess"),
            "X-Forwarded-For": forwarded_for,
            "X-Forwarded-Proto": "https",
        },
    )


def forged_address(network: str = "203.0.113") -> str:
    return f"{network}.{secrets.randbelow(250) + 1}"


async def test_a_local_client_cannot_dodge_the_address_limit_with_x_forwarded_for(
    http: httpx.AsyncClient,
    proxy_apis: dict[str, str],
    clients_from: Any,
    service_env: dict[str, str],
) -> None:
    """By default no proxy is trusted: X-Forwarded-For from 127.0.0.1 (which uvicorn believes
    unless told otherwise) changes nothing, every guess counts against the peer 127.0.0.1."""
    bystander = await LedgerClient.register(http, "proxied")
    local = clients_from(proxy_apis["default"], "127.0.0.1")
    forged = [forged_address() for _ in range(PER_ADDRESS + 1)]
    # 127.0.0.1 may have failures counted already (other tests, same Redis): the limit bites at
    # the latest after PER_ADDRESS guesses, however many forwarded-for addresses they claim.
    statuses = [(await guess(local, address)).status_code for address in forged]
    assert statuses[-1] == 429, statuses
    assert set(statuses) <= {401, 429}
    r = await local.get(
        "/api/v1/accounts",
        headers={**basic_header(bystander.username), "X-Forwarded-For": forged_address()},
    )
    assert_problem(r, 429, "too_many_failed_logins")
    counted = failed_login_addresses(service_env["LEDGERQ_REDIS_URL"])
    assert "127.0.0.1" in counted
    assert not counted & set(forged)


async def test_x_forwarded_for_is_believed_from_a_trusted_proxy_only(
    http: httpx.AsyncClient,
    proxy_apis: dict[str, str],
    clients_from: Any,
    service_env: dict[str, str],
) -> None:
    bystander = await LedgerClient.register(http, "behind-proxy")
    proxy = clients_from(proxy_apis["trusting"], "127.0.0.1")
    # Each client behind the proxy is an address of its own: one locked out, another not.
    # 192.0.2.x: no other test fails a login from there (test_api_server.py uses 203.0.113.x).
    [locked, free] = [forged_address("192.0.2") for _ in range(2)]
    while free == locked:
        free = forged_address("192.0.2")
    statuses = [(await guess(proxy, f"{locked}:4567")).status_code for _ in range(PER_ADDRESS)]
    assert statuses == [401] * PER_ADDRESS
    assert_problem(await guess(proxy, locked), 429, "too_many_failed_logins")
    r = await proxy.get(
        "/api/v1/accounts",
        headers={**basic_header(bystander.username), "X-Forwarded-For": free},
    )
    assert r.status_code == 200, r.text
    # From an address that is not a trusted proxy the header is ignored again.
    untrusted = forged_address()
    outsider = clients_from(proxy_apis["trusting"], "127.0.0.21")
    assert_unauthenticated(await guess(outsider, untrusted))
    counted = failed_login_addresses(service_env["LEDGERQ_REDIS_URL"])
    assert locked in counted and "127.0.0.21" in counted
    assert f"{locked}:4567" not in counted and untrusted not in counted


# ---------------------------------------------------------------- hygiene


async def test_request_bodies_are_capped(alice: LedgerClient) -> None:
    account = await alice.create_account()
    item = {"idempotency_key": key(), "type": "deposit", "account_id": account, "amount": "1.00"}
    # Just under 1 MiB (JSON allows the padding): accepted.
    padded = b'{"operations": [' + json.dumps(item).encode() + b"]" + b" " * 1_000_000 + b"}"
    r = await alice.request(
        "POST",
        "/api/v1/operations/batch",
        content=padded,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 207, r.text[:500]
    big = b'{"operations": [' + b" " * (1024 * 1024) + b"]}"
    r = await alice.request(
        "POST",
        "/api/v1/operations/batch",
        content=big,
        headers={"Content-Type": "application/json"},
    )
    assert_problem(r, 413, "body_too_large")
    r = await alice.request(
        "POST", "/api/v1/auth/register", content=big, headers={"Content-Type": "application/json"}
    )
    assert_problem(r, 413, "body_too_large")


async def test_no_secret_reaches_logs_or_error_bodies(
    http: httpx.AsyncClient, alice: LedgerClient, master: Caller, logs_dir: Path
) -> None:
    token = await token_for(http, alice)
    secret = (await create_key(alice, ["accounts:read"]))["secret"]
    answers = [
        await http.get(
            "/api/v1/accounts", headers=basic_header(alice.username, "guessed-password-1")
        ),
        await http.get("/api/v1/accounts", headers={"Authorization": f"Bearer {token}x"}),
        await http.get("/api/v1/accounts", headers={"X-API-Key": secret[:-1] + "A"}),
        await master.request("GET", "/api/v1/accounts"),
    ]
    secrets_used = [PASSWORD, "guessed-password-1", token, secret, master.headers["X-API-Key"]]
    for answer in answers:
        assert not any(s in answer.text for s in secrets_used)
    await asyncio.sleep(0.5)  # let the API write its lines
    assert leaked_into_logs(logs_dir, secrets_used) == {}


def leaked_into_logs(logs_dir: Path, secrets_used: list[str]) -> dict[str, int]:
    """How many of the secrets each API log holds (only logs that hold any)."""
    found = {}
    for log in logs_dir.glob("api*.log"):
        text = log.read_text(errors="replace")
        if leaked := sum(1 for s in secrets_used if s in text):
            found[log.name] = leaked
    return found


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERQ_")}
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env={**clean, **env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_hides_secrets_and_rejects_short_ones(service_env: dict[str, str]) -> None:
    result = _cli(service_env, "config")
    assert result.returncode == 0, result.stderr
    assert "LEDGERQ_SECRET_KEY" in result.stdout and "hidden" in result.stdout
    assert service_env["LEDGERQ_SECRET_KEY"] not in result.stdout
    assert service_env["LEDGERQ_MASTER_KEY"] not in result.stdout
    result = _cli({**service_env, "LEDGERQ_MASTER_KEY": "too-short-master"}, "config")
    assert result.returncode == 1
    assert "LEDGERQ_MASTER_KEY must be at least 32 characters" in result.stderr
    assert "too-short-master" not in result.stdout + result.stderr


def test_api_refuses_to_start_without_a_secret_key(service_env: dict[str, str]) -> None:
    env = {k: v for k, v in service_env.items() if k != "LEDGERQ_SECRET_KEY"}
    result = _cli({**env, "LEDGERQ_API_PORT": str(free_port())}, "api")
    assert result.returncode != 0
    assert "LEDGERQ_SECRET_KEY is not set" in result.stdout + result.stderr
