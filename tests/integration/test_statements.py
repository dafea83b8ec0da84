"""Account statements: `GET /api/v1/accounts/{id}/statement` as CSV and JSON, their exact contents
for a small account, the owner-only and validation answers, and the stream of 200,000 entries
through a real API process whose memory stays flat."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.support import LedgerClient, Process, wait_for_http
from worker.routing import partition_for

CSV_HEADER = (
    "row_type,time,entry_id,operation_id,operation_type,category,description,"
    "amount,balance_after,currency\r\n"
)


def statement_url(account: str) -> str:
    return f"/api/v1/accounts/{account}/statement"


async def entries_oldest_first(client: LedgerClient, account: str) -> list[dict[str, Any]]:
    r = await client.request("GET", f"/api/v1/accounts/{account}/entries")
    assert r.status_code == 200, r.text
    return list(reversed(r.json()["items"]))


def problem(r: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["code"] == code, body
    if field is not None:
        assert body["field"] == field, body


async def withdraw(client: LedgerClient, account: str, amount: str, **extra: Any) -> None:
    op = await client.submit_ok(
        {"type": "withdrawal", "account_id": account, "amount": amount, **extra}
    )
    result = await client.wait(op)
    assert result["status"] == "succeeded", result


async def test_statement_of_a_window_as_csv_and_json(alice: LedgerClient) -> None:
    account = await alice.create_account("USD")
    tricky = 'Gift, from "Ann"\nwith love'
    await alice.deposit(account, "100.00", category="salary", description="March pay")
    await alice.deposit(account, "25.50", category="gift", description=tricky)
    await withdraw(alice, account, "40.25", category="-cash", description="=1+2")
    await alice.deposit(account, "1.00", category="salary", description="late")
    first, second, third, fourth = await entries_oldest_first(alice, account)
    assert [e["balance_after"] for e in (first, second, third, fourth)] == [
        "100.00",
        "125.50",
        "85.25",
        "86.25",
    ]
    # The window cuts the history: from the second entry (inclusive) to the fourth (exclusive).
    since, until = second["created_at"], fourth["created_at"]
    window = {"from": since, "to": until}

    r = await alice.request("GET", statement_url(account), params={**window, "format": "csv"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    stamp = {
        name: dt.datetime.fromisoformat(value).astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        for name, value in window.items()
    }
    assert r.headers["content-disposition"] == (
        f'attachment; filename="statement-{account}-{stamp["from"]}-{stamp["to"]}.csv"'
    )
    assert r.content.decode() == (
        CSV_HEADER
        + f"opening_balance,{since},,,,,,,100.00,USD\r\n"
        + f"entry,{since},{second['id']},{second['operation_id']},deposit,gift,"
        + '"Gift, from ""Ann""\nwith love",25.50,125.50,USD\r\n'
        + f"entry,{third['created_at']},{third['id']},{third['operation_id']},withdrawal,"
        + "'-cash,'=1+2,-40.25,85.25,USD\r\n"
        + f"closing_balance,{until},,,,,,,85.25,USD\r\n"
    )

    r = await alice.request("GET", statement_url(account), params={**window, "format": "json"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "content-disposition" not in r.headers
    assert r.json() == {
        "account_id": account,
        "currency": "USD",
        "from": since,
        "to": until,
        "opening_balance": "100.00",
        "closing_balance": "85.25",
        # As the entries listing answers them, text as stored (no formula guard in JSON).
        "entries": [second, third],
    }
    assert second["description"] == tricky and third["description"] == "=1+2"

    # No bounds: from the account's opening to now; JSON is the default format.
    opened = (await alice.account(account))["created_at"]
    before = dt.datetime.now(dt.UTC)
    r = await alice.request("GET", statement_url(account))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["from"] == opened
    assert abs(dt.datetime.fromisoformat(body["to"]) - before) < dt.timedelta(seconds=30)
    assert (body["opening_balance"], body["closing_balance"]) == ("0.00", "86.25")
    assert body["entries"] == [first, second, third, fourth]

    # A `to` in the future is taken as now; a window with no entry still has its balances.
    future = (dt.datetime.now(dt.UTC) + dt.timedelta(days=3)).isoformat()
    r = await alice.request("GET", statement_url(account), params={"from": until, "to": future})
    assert r.status_code == 200, r.text
    body = r.json()
    assert dt.datetime.fromisoformat(body["to"]) < dt.datetime.fromisoformat(future)
    assert [e["id"] for e in body["entries"]] == [fourth["id"]]
    assert (body["opening_balance"], body["closing_balance"]) == ("85.25", "86.25")
    r = await alice.request(
        "GET", statement_url(account), params={"from": since, "to": second["created_at"]}
    )
    problem(r, 422, "validation_error", "from")  # from == to: an empty period
    tiny = dt.datetime.fromisoformat(since) + dt.timedelta(microseconds=1)
    r = await alice.request(
        "GET", statement_url(account), params={"from": since, "to": tiny.isoformat()}
    )
    assert r.status_code == 200, r.text
    assert [e["id"] for e in r.json()["entries"]] == [second["id"]]


async def test_empty_account_csv(alice: LedgerClient) -> None:
    account = await alice.create_account("JPY")
    r = await alice.request("GET", statement_url(account), params={"format": "csv"})
    assert r.status_code == 200, r.text
    lines = r.content.decode().split("\r\n")
    assert lines[0] + "\r\n" == CSV_HEADER
    assert lines[1].startswith("opening_balance,") and lines[1].endswith(",,,,,,,0,JPY")
    assert lines[2].startswith("closing_balance,") and lines[2].endswith(",,,,,,,0,JPY")
    assert lines[3:] == [""]


async def test_someone_elses_account_is_not_found(alice: LedgerClient, bob: LedgerClient) -> None:
    account = await alice.create_account()
    await alice.deposit(account, "5.00")
    for fmt in ("csv", "json"):
        r = await bob.request("GET", statement_url(account), params={"format": fmt})
        problem(r, 404, "account_not_found")
    r = await bob.request("GET", statement_url(str(UUID(int=1))))
    problem(r, 404, "account_not_found")


async def test_invalid_periods_are_422(alice: LedgerClient) -> None:
    account = await alice.create_account()
    url = statement_url(account)
    now = dt.datetime.now(dt.UTC)
    cases: list[tuple[dict[str, str], str | None]] = [
        ({"from": "2025-01-01T00:00:00"}, "from"),  # no offset
        ({"to": "2025-01-01T00:00:00"}, "to"),
        ({"from": (now - dt.timedelta(hours=1)).isoformat(), "to": now.replace(tzinfo=None).isoformat()}, "to"),
        ({"from": now.isoformat(), "to": (now - dt.timedelta(hours=1)).isoformat()}, "from"),
        ({"from": (now + dt.timedelta(days=1)).isoformat()}, "from"),  # after now
        ({"from": (now + dt.timedelta(days=1)).isoformat(), "to": (now + dt.timedelta(days=2)).isoformat()}, "from"),
        ({"to": (now - dt.timedelta(days=1)).isoformat()}, "to"),  # before the opening
        ({"from": "0001-01-01T00:00:00+01:00"}, "from"),  # before year 1 in UTC
        ({"to": "9999-12-31T23:59:59-01:00"}, "to"),  # after year 9999 in UTC
        ({"from": "yesterday"}, None),
        ({"format": "xlsx"}, None),
    ]  # fmt: skip
    for params, field in cases:
        r = await alice.request("GET", url, params=params)
        problem(r, 422, "validation_error", field)


async def test_statement_is_documented(http: httpx.AsyncClient) -> None:
    r = await http.get("/docs/openapi.json")
    assert r.status_code == 200
    document = r.json()
    operation = document["paths"]["/api/v1/accounts/{account_id}/statement"]["get"]
    assert operation["operationId"] == "getStatement"
    assert {p["name"] for p in operation["parameters"]} >= {"account_id", "from", "to", "format"}
    ok = operation["responses"]["200"]
    assert set(ok["content"]) == {"application/json", "text/csv"}
    assert ok["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Statement"}
    assert "Content-Disposition" in ok["headers"]
    for status in ("401", "403", "404", "422"):
        assert "application/problem+json" in operation["responses"][status]["content"]
    statement = document["components"]["schemas"]["Statement"]
    assert set(statement["required"]) == {
        "account_id",
        "currency",
        "from",
        "to",
        "opening_balance",
        "closing_balance",
        "entries",
    }


# ---------------------------------------------------------------- 200,000 entries, flat memory

BULK = 200_000
# The API process may grow by less than this while it streams the whole statement.
RSS_GROWTH_LIMIT = 60 * 1024 * 1024


def insert_bulk_history(engine: Engine, user_id: str, source: str, target: str, n: int) -> int:
    """`n` transfers from `source` to `target` (both the user's), applied and dated 50 ms apart
    over the last hours, with both entries each and consistent balances: the ledger's invariants
    hold (the source may go that far below zero). Returns the target's closing balance."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                """
                WITH n AS MATERIALIZED (
                    SELECT i, gen_random_uuid() AS op_id, (i % 997) + 1 AS amount,
                           :t0 + i * interval '50 milliseconds' AS at
                    FROM generate_series(1, :n) AS i
                ),
                ops AS (
                    INSERT INTO operations (id, partition, principal_id, idempotency_key,
                        fingerprint, type, account_id, to_account_id, amount, currency, status,
                        category, description, created_at, updated_at, applied_at)
                    SELECT op_id, :partition, :user_id, 'statement-bulk-' || i, 'bulk',
                           'transfer', :source, :target, amount, 'USD', 'succeeded', 'bulk',
                           'transfer #' || i, at, at, at
                    FROM n
                ),
                credits AS (
                    INSERT INTO entries (account_id, operation_id, amount, balance_after,
                        currency, category, created_at)
                    SELECT :target, op_id, amount, sum(amount) OVER (ORDER BY i), 'USD', 'bulk',
                           at
                    FROM n ORDER BY i
                )
                INSERT INTO entries (account_id, operation_id, amount, balance_after, currency,
                    category, created_at)
                SELECT :source, op_id, -amount, -sum(amount) OVER (ORDER BY i), 'USD', 'bulk', at
                FROM n ORDER BY i
                """
            ),
            {
                "t0": dt.datetime.now(dt.UTC) - dt.timedelta(hours=3),
                "n": n,
                "partition": partition_for(UUID(source), 8),
                "user_id": user_id,
                "source": source,
                "target": target,
            },
        )
        total = int(
            conn.execute(
                sa.text("SELECT sum((i % 997) + 1) FROM generate_series(1, :n) AS i"), {"n": n}
            ).scalar_one()
        )
        conn.execute(
            sa.text(
                """
                UPDATE accounts SET
                    balance = CASE WHEN id = :target THEN :total ELSE -:total END,
                    overdraft_limit = CASE WHEN id = :target THEN 0 ELSE :total END,
                    created_at = now() - interval '4 hours'
                WHERE id IN (:source, :target)
                """
            ),
            {"source": source, "target": target, "total": total},
        )
    return total


@pytest.fixture(scope="module")
def statement_api(service_env: dict[str, str], logs_dir: Path) -> Iterator[tuple[str, Process]]:
    """An API process of this module's own, to measure its memory alone."""
    port = free_port()
    process = Process(
        "api-statements",
        ["-m", "cli", "api"],
        {**service_env, "LEDGERQ_API_PORT": str(port), "LEDGERQ_API_WORKERS": "1"},
        logs_dir,
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process, timeout=60)
        yield url, process
    finally:
        process.stop()


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (the peak RSS) of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values


@pytest.mark.timeout(600)
async def test_200k_entries_stream_with_flat_memory(
    alice: LedgerClient, engine: Engine, statement_api: tuple[str, Process]
) -> None:
    url, process = statement_api
    assert process.proc is not None
    pid = process.proc.pid
    source = await alice.create_account("USD")
    target = await alice.create_account("USD")
    started = time.monotonic()
    total = insert_bulk_history(engine, alice.user_id, source, target, BULK)
    inserted_in = time.monotonic() - started
    r = await alice.request("POST", "/api/v1/auth/token")
    assert r.status_code in (200, 201), r.text
    headers = {"Authorization": f"Bearer {r.json()['access_token']}"}

    async with httpx.AsyncClient(base_url=url, timeout=120, headers=headers) as client:
        # Warm up: the route, its imports and the token check are there before the baseline.
        for fmt in ("csv", "json"):
            r = await client.get(
                statement_url(target), params={"format": fmt, "to": "2000-01-01T00:00:00Z"}
            )
            assert r.status_code == 422, r.text
        small = await alice.create_account("USD")
        r = await client.get(statement_url(small), params={"format": "csv"})
        assert r.status_code == 200, r.text
        baseline = memory_kb(pid)
        peak_rss = baseline["VmRSS"]
        lines = 0
        received = 0
        head = b""
        tail = b""
        # Meanwhile the process keeps answering others: its event loop is not held for long.
        latencies: list[float] = []
        done = asyncio.Event()

        async def ping() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=30) as other:
                while not done.is_set():
                    sent = time.monotonic()
                    assert (await other.get("/health")).status_code == 200
                    latencies.append(time.monotonic() - sent)
                    await asyncio.sleep(0.05)

        pinger = asyncio.create_task(ping())
        started = time.monotonic()
        async with client.stream("GET", statement_url(target), params={"format": "csv"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/csv; charset=utf-8"
            async for chunk in r.aiter_bytes():
                received += len(chunk)
                lines += chunk.count(b"\r\n")
                if len(head) < 4096:
                    head += chunk[:4096]
                tail = (tail + chunk)[-4096:]
                peak_rss = max(peak_rss, memory_kb(pid)["VmRSS"])
        streamed_in = time.monotonic() - started
        after = memory_kb(pid)
        done.set()
        await pinger

    growth = (peak_rss - baseline["VmRSS"]) * 1024
    report = (
        f"inserted {BULK} entries in {inserted_in:.1f}s; streamed {received / 1e6:.1f} MB "
        f"({lines} lines) in {streamed_in:.1f}s; API RSS {baseline['VmRSS'] / 1024:.1f} MB "
        f"before, peak {peak_rss / 1024:.1f} MB, after {after['VmRSS'] / 1024:.1f} MB; "
        f"VmHWM {baseline['VmHWM'] / 1024:.1f} -> {after['VmHWM'] / 1024:.1f} MB; "
        f"/health meanwhile: {len(latencies)} answers, slowest {max(latencies) * 1000:.0f} ms "
        f"{[round(x * 1000) for x in sorted(latencies)[-5:]]} first {latencies[0] * 1000:.0f} ms"
    )
    print(report)
    assert lines == BULK + 3, report  # header, opening, 200,000 entries, closing
    first_lines = head.split(b"\r\n")
    assert first_lines[0] + b"\r\n" == CSV_HEADER.encode()
    assert first_lines[1].endswith(b",,,,,,,0.00,USD")
    assert b",transfer,bulk,transfer #1,0.02,0.02,USD" in first_lines[2]
    closing = tail.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].decode()
    dollars, cents = divmod(total, 100)
    assert closing.startswith("closing_balance,")
    assert closing.endswith(f",,,,,,,{dollars}.{cents:02d},USD"), closing
    assert growth < RSS_GROWTH_LIMIT, report
    # Generous (a loaded machine, garbage collections): a loop held for the whole stream fails.
    assert latencies and max(latencies) < 5, report


async def test_json_statement_of_a_busy_account_parses(alice: LedgerClient, engine: Engine) -> None:
    """A JSON statement over several chunks is one valid document, opening + amounts = closing."""
    source = await alice.create_account("USD")
    target = await alice.create_account("USD")
    n = 12_345
    total = insert_bulk_history(engine, alice.user_id, source, target, n)
    r = await alice.request("GET", statement_url(target))
    assert r.status_code == 200
    body = json.loads(r.content)
    assert len(body["entries"]) == n
    ids = [int(e["id"]) for e in body["entries"]]
    assert ids == sorted(ids)
    cents = sum(round(float(e["amount"]) * 100) for e in body["entries"])
    assert cents == total
    assert body["closing_balance"] == f"{total // 100}.{total % 100:02d}"
    # And a window in the middle: its opening and closing match the entries around it.
    since, until = body["entries"][1000]["created_at"], body["entries"][9000]["created_at"]
    r = await alice.request("GET", statement_url(target), params={"from": since, "to": until})
    window = r.json()
    assert [e["id"] for e in window["entries"]] == [e["id"] for e in body["entries"][1000:9000]]
    assert window["opening_balance"] == body["entries"][999]["balance_after"]
    assert window["closing_balance"] == body["entries"][8999]["balance_after"]
