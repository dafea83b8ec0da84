"""Investments end to end: assets and closes, allocations and redemptions through the real worker,
portfolio returns, captado (cached, invalidated on apply) and its WebSocket across API processes."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import secrets
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import sqlalchemy as sa
import websockets
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.support import (
    PASSWORD,
    ROOT,
    LedgerClient,
    Process,
    assert_ledger_consistent,
    wait_for_http,
)
from worker.events import captado_cache_key
from worker.store.tables import positions, prices

TODAY = dt.datetime.now(dt.UTC).date()


@pytest.fixture
def admin(service_env: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": service_env["LEDGERQ_MASTER_KEY"]}


async def new_asset(
    http: httpx.AsyncClient, admin: dict[str, str], currency: str = "USD", **extra: Any
) -> str:
    ticker = f"T{secrets.token_hex(3).upper()}"
    body = {
        "ticker": ticker,
        "name": f"{ticker} fund",
        "kind": "fund",
        "currency": currency,
        **extra,
    }
    r = await http.post("/api/v1/assets", json=body, headers=admin)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def all_assets(http: httpx.AsyncClient, headers: dict[str, str]) -> list[dict[str, Any]]:
    """Every asset, read with `headers` (the admin's, or a client's)."""
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": 500, **({"cursor": cursor} if cursor else {})}
        r = await http.get("/api/v1/assets", params=params, headers=headers)
        assert r.status_code == 200, r.text
        page = r.json()
        items += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            return items


async def set_closes(
    http: httpx.AsyncClient, admin: dict[str, str], asset: str, closes: dict[dt.date, str]
) -> None:
    r = await http.post(
        f"/api/v1/assets/{asset}/prices",
        json={"prices": [{"date": d.isoformat(), "close": c} for d, c in closes.items()]},
        headers=admin,
    )
    assert r.status_code == 200, r.text
    assert r.json()["upserted"] == len(closes)


async def invest(client: LedgerClient, body: dict[str, Any]) -> dict[str, Any]:
    return await client.wait(await client.submit_ok(body))


async def test_allocate_and_redeem_through_the_worker(
    http: httpx.AsyncClient, alice: LedgerClient, admin: dict[str, str], engine: Engine
) -> None:
    asset = await new_asset(http, admin)
    await set_closes(http, admin, asset, {TODAY - dt.timedelta(days=1): "9.00", TODAY: "12.50"})
    cash = await alice.create_account()
    await alice.deposit(cash, "1000.00")

    # 100.00 at today's close 12.50 -> 8 units exactly.
    bought = await invest(
        alice, {"type": "allocation", "account_id": cash, "asset_id": asset, "amount": "100.00"}
    )
    assert bought["status"] == "succeeded", bought
    assert (bought["quantity"], bought["price"], bought["amount"]) == (
        "8.00000000",
        "12.50000000",
        "100.00",
    )
    # 10.00 at 12.50 -> 0.8 units; then 1.00 buys 0.08.
    await invest(
        alice, {"type": "allocation", "account_id": cash, "asset_id": asset, "amount": "10.00"}
    )

    sold = await invest(
        alice, {"type": "redemption", "account_id": cash, "asset_id": asset, "quantity": "2.5"}
    )
    assert sold["status"] == "succeeded", sold
    assert (sold["amount"], sold["quantity"]) == ("31.25", "2.50000000")  # 2.5 x 12.50
    by_amount = await invest(
        alice, {"type": "redemption", "account_id": cash, "asset_id": asset, "amount": "25.00"}
    )
    assert (by_amount["amount"], by_amount["quantity"]) == ("25.00", "2.00000000")
    too_many = await invest(
        alice, {"type": "redemption", "account_id": cash, "asset_id": asset, "quantity": "5"}
    )
    assert too_many["status"] == "failed"
    assert too_many["error"]["code"] == "insufficient_units"
    too_much = await invest(
        alice, {"type": "allocation", "account_id": cash, "asset_id": asset, "amount": "5000.00"}
    )
    assert too_much["error"]["code"] == "insufficient_funds"

    # Cash: 1000 - 100 - 10 + 31.25 + 25 = 946.25; units 8 + 0.8 - 2.5 - 2 = 4.3.
    assert await alice.balance(cash) == "946.25"
    with engine.connect() as conn:
        held = conn.execute(sa.select(positions).where(positions.c.account_id == cash)).one()
    assert held.units == 430_000_000
    # Average cost: 110.00 invested, 2.5 of 8.8 units sold (31.25 -> 110 * 2.5/8.8 = 31.25), then 2 of 6.3.
    assert held.invested == 11_000 - 3_125 - (7_875 * 200_000_000) // 630_000_000

    portfolio = (await alice.request("GET", "/api/v1/portfolio")).json()
    [position] = portfolio["positions"]
    assert position["units"] == "4.30000000"
    assert position["market_value"] == "53.75"  # 4.3 x 12.50
    assert position["close"] == "12.50000000"
    entries = (await alice.request("GET", f"/api/v1/accounts/{cash}/entries")).json()["items"]
    assert [e["operation_type"] for e in entries[:4]] == [
        "redemption",
        "redemption",
        "allocation",
        "allocation",
    ]
    assert_ledger_consistent(engine)


async def test_the_admin_reads_the_catalog_it_keeps(
    http: httpx.AsyncClient, alice: LedgerClient, admin: dict[str, str]
) -> None:
    """The master key (admin scope only) lists and reads the assets and closes it created, as
    clients with accounts:read do; a key without either scope still cannot."""
    asset = await new_asset(http, admin)
    day = TODAY - dt.timedelta(days=1)
    await set_closes(http, admin, asset, {day: "12.50"})
    basic = base64.b64encode(f"{alice.username}:{PASSWORD}".encode()).decode()
    client = {"Authorization": f"Basic {basic}"}
    for headers in (admin, client):
        assert asset in {a["id"] for a in await all_assets(http, headers)}
        r = await http.get(f"/api/v1/assets/{asset}", headers=headers)
        assert r.status_code == 200 and r.json()["id"] == asset, r.text
        r = await http.get(f"/api/v1/assets/{asset}/prices", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["items"] == [{"date": day.isoformat(), "close": "12.50000000"}]
        r = await http.get(f"/api/v1/assets/{uuid.UUID(int=1)}", headers=headers)
        assert r.status_code == 404 and r.json()["code"] == "asset_not_found", r.text

    r = await alice.request(
        "POST", "/api/v1/api-keys", json={"name": "writer", "scopes": ["operations:write"]}
    )
    assert r.status_code == 201, r.text
    writer = {"X-API-Key": r.json()["secret"]}
    for path in ("/api/v1/assets", f"/api/v1/assets/{asset}", f"/api/v1/assets/{asset}/prices"):
        r = await http.get(path, headers=writer)
        assert r.status_code == 403, r.text
        assert (r.json()["code"], r.json()["required_scope"]) == (
            "insufficient_scope",
            "accounts:read",
        )
        r = await http.get(path)
        assert r.status_code == 401, r.text


async def test_investment_input_errors(
    http: httpx.AsyncClient, alice: LedgerClient, admin: dict[str, str]
) -> None:
    asset = await new_asset(http, admin, currency="EUR")
    cash = await alice.create_account("USD")
    cases = [
        ({"type": "allocation", "account_id": cash, "amount": "1.00"}, "validation_error"),
        (
            {"type": "allocation", "account_id": cash, "asset_id": asset, "amount": "1.00"},
            "currency_mismatch",
        ),
        ({"type": "redemption", "account_id": cash, "asset_id": asset}, "validation_error"),
        (
            {
                "type": "redemption",
                "account_id": cash,
                "asset_id": asset,
                "amount": "1",
                "quantity": "1",
            },
            "validation_error",
        ),
        (
            {"type": "allocation", "account_id": cash, "asset_id": cash, "amount": "1.00"},
            "asset_not_found",
        ),
        (
            {
                "type": "redemption",
                "account_id": cash,
                "asset_id": asset,
                "quantity": "0.000000001",
            },
            "invalid_decimal",
        ),
        (
            {"type": "deposit", "account_id": cash, "asset_id": asset, "amount": "1.00"},
            "validation_error",
        ),
    ]
    for body, code in cases:
        r = await alice.submit(body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["code"] == code, (body, r.json())
    # Only the admin lists assets and prices.
    r = await alice.request(
        "POST",
        "/api/v1/assets",
        json={"ticker": "X", "name": "x", "kind": "fund", "currency": "USD"},
    )
    assert r.status_code == 403
    r = await alice.request(
        "POST",
        f"/api/v1/assets/{asset}/prices",
        json={"prices": [{"date": "2026-01-02", "close": "1"}]},
    )
    assert r.status_code == 403
    r = await http.post(
        f"/api/v1/assets/{asset}/prices",
        json={"prices": [{"date": "2026-01-02", "close": "1.123456789"}]},
        headers=admin,
    )
    assert r.status_code == 422
    series = (await alice.request("GET", f"/api/v1/assets/{asset}/prices")).json()
    assert series["items"] == []


async def test_price_series_range(
    http: httpx.AsyncClient, alice: LedgerClient, admin: dict[str, str]
) -> None:
    asset = await new_asset(http, admin)
    start = dt.date(2026, 3, 2)
    await set_closes(
        http, admin, asset, {start + dt.timedelta(days=i): f"{10 + i}.5" for i in range(5)}
    )
    await set_closes(http, admin, asset, {start: "9.99"})  # upsert replaces
    r = await alice.request(
        "GET", f"/api/v1/assets/{asset}/prices", params={"from": "2026-03-02", "to": "2026-03-04"}
    )
    assert [(p["date"], p["close"]) for p in r.json()["items"]] == [
        ("2026-03-02", "9.99000000"),
        ("2026-03-03", "11.50000000"),
        ("2026-03-04", "12.50000000"),
    ]


def run_import(env: dict[str, str], path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "import-prices", str(path)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_import_prices_csv_all_or_nothing(
    http: httpx.AsyncClient,
    admin: dict[str, str],
    engine: Engine,
    service_env: dict[str, str],
    tmp_path: Path,
) -> None:
    asset = await new_asset(http, admin)
    ticker = next(a["ticker"] for a in await all_assets(http, admin) if a["id"] == asset)

    def count() -> int:
        with engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(prices).where(prices.c.asset_id == asset)
                ).scalar_one()
            )

    bad = tmp_path / "bad.csv"
    bad.write_text(
        f"ticker,date,close\n{ticker},2026-01-05,10.5\n{ticker},2026-01-06,ten\n{ticker},2026-01-07,11\n"
    )
    result = run_import(service_env, bad)
    assert result.returncode == 1
    assert "line 3" in result.stderr and "nothing was imported" in result.stderr
    assert count() == 0

    unknown = tmp_path / "unknown.csv"
    unknown.write_text(f"ticker,date,close\n{ticker},2026-01-05,10.5\nNOPE,2026-01-06,1\n")
    result = run_import(service_env, unknown)
    assert result.returncode == 1 and "line 3" in result.stderr and "NOPE" in result.stderr
    assert count() == 0

    good = tmp_path / "good.csv"
    good.write_text(
        f"ticker,date,close\n{ticker},2026-01-05,10.5\n{ticker.lower()},2026-01-06,10.75\n"
    )
    result = run_import(service_env, good)
    assert result.returncode == 0, result.stderr
    assert count() == 2


async def test_captado_report_is_the_months_net_inflow_and_cached(
    http: httpx.AsyncClient,
    alice: LedgerClient,
    bob: LedgerClient,
    admin: dict[str, str],
    redis_url: str,
) -> None:
    asset = await new_asset(http, admin)
    await set_closes(http, admin, asset, {TODAY: "10"})
    params = {"month": TODAY.month, "year": TODAY.year}

    def report() -> Any:
        return http.get("/api/v1/reports/captado", params=params, headers=admin)

    before = (await report()).json()
    cache = redis.Redis.from_url(redis_url)
    assert cache.exists(captado_cache_key(TODAY.year, TODAY.month))

    a = await alice.create_account()
    b = await bob.create_account()
    await alice.deposit(a, "500.00")
    await bob.deposit(b, "500.00")
    await invest(
        alice, {"type": "allocation", "account_id": a, "asset_id": asset, "amount": "300.00"}
    )
    await invest(
        bob, {"type": "allocation", "account_id": b, "asset_id": asset, "amount": "120.00"}
    )
    await invest(
        alice, {"type": "redemption", "account_id": a, "asset_id": asset, "amount": "50.00"}
    )
    # Applying dropped the cached figure.
    assert not cache.exists(captado_cache_key(TODAY.year, TODAY.month))

    after = (await report()).json()
    by_asset = {row["asset_id"]: row["amount"] for row in after["by_asset"]}
    assert by_asset[asset] == "370.00"
    by_client = {(row["username"], row["currency"]): row["amount"] for row in after["by_client"]}
    assert by_client[(alice.username, "USD")] == "250.00"
    assert by_client[(bob.username, "USD")] == "120.00"
    total_before = {t["currency"]: float(t["amount"]) for t in before["totals"]}.get("USD", 0.0)
    total_after = {t["currency"]: float(t["amount"]) for t in after["totals"]}["USD"]
    assert round(total_after - total_before, 2) == 370.00
    assert after["operations"] - before["operations"] == 3

    for bad in (
        {"month": 13, "year": 2026},
        {"month": 0, "year": 2026},
        {"month": 5, "year": 1999},
        {"month": "x", "year": 2026},
    ):
        r = await http.get("/api/v1/reports/captado", params=bad, headers=admin)
        assert r.status_code == 422, (bad, r.text)
    r = await alice.request("GET", "/api/v1/reports/captado", params=params)
    assert r.status_code == 403


@pytest.fixture
def second_api(service_env: dict[str, str], logs_dir: Path) -> Iterator[str]:
    port = free_port()
    process = Process(
        "api-captado",
        ["-m", "cli", "api"],
        {**service_env, "LEDGERQ_API_PORT": str(port)},
        logs_dir,
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process, timeout=60)
    yield url
    process.stop()


async def test_captado_websocket_gets_updates_from_another_api_process(
    http: httpx.AsyncClient,
    alice: LedgerClient,
    admin: dict[str, str],
    api_url: str,
    second_api: str,
) -> None:
    asset = await new_asset(http, admin)
    await set_closes(http, admin, asset, {TODAY: "4"})
    cash = await alice.create_account()
    await alice.deposit(cash, "100.00")
    ws_url = (
        api_url.replace("http://", "ws://") + f"/ws/captado?month={TODAY.month}&year={TODAY.year}"
    )
    async with websockets.connect(ws_url, additional_headers=admin) as socket:
        first = json.loads(await asyncio.wait_for(socket.recv(), 30))
        before = {row["asset_id"]: row["amount"] for row in first["by_asset"]}
        assert asset not in before
        # Submitted through the OTHER API process; applied by the worker; pushed to this socket.
        async with httpx.AsyncClient(base_url=second_api, auth=alice.auth, timeout=30) as other:
            r = await other.post(
                "/api/v1/operations",
                json={
                    "type": "allocation",
                    "account_id": cash,
                    "asset_id": asset,
                    "amount": "40.00",
                },
                headers={"Idempotency-Key": secrets.token_hex(8)},
            )
            assert r.status_code == 202, r.text
        while True:
            update = json.loads(await asyncio.wait_for(socket.recv(), 30))
            amounts = {row["asset_id"]: row["amount"] for row in update["by_asset"]}
            if asset in amounts:
                break
        assert amounts[asset] == "40.00"

    with pytest.raises(websockets.exceptions.InvalidStatus):
        async with websockets.connect(ws_url, additional_headers={"X-API-Key": "lq_wrong"}):
            pass


async def test_clients_and_allocations_for_admin(
    http: httpx.AsyncClient, alice: LedgerClient, admin: dict[str, str]
) -> None:
    asset = await new_asset(http, admin)
    await set_closes(http, admin, asset, {TODAY: "2"})
    cash = await alice.create_account()
    await alice.deposit(cash, "10.00")
    await invest(
        alice, {"type": "allocation", "account_id": cash, "asset_id": asset, "amount": "6.00"}
    )
    clients: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = (
            await http.get(
                "/api/v1/clients",
                params={"limit": 50, **({"cursor": cursor} if cursor else {})},
                headers=admin,
            )
        ).json()
        clients += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    mine = next(c for c in clients if c["username"] == alice.username)
    assert mine["totals"] == [{"currency": "USD", "invested": "6.00", "market_value": "6.00"}]
    allocations = (
        await http.get(f"/api/v1/clients/{alice.user_id}/allocations", headers=admin)
    ).json()["items"]
    assert [(a["type"], a["amount"], a["quantity"]) for a in allocations] == [
        ("allocation", "6.00", "3.00000000")
    ]
    assert (await alice.request("GET", "/api/v1/clients")).status_code == 403
