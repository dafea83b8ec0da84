"""Webhooks end to end: endpoints registered over HTTP, events written by the transactions that
apply or cancel operations, and delivered by the dispatcher (`ledgerq dispatcher`) to a real
local HTTP receiver, signed, retried, given up; isolation between users.

The suite's API refuses private endpoint URLs (the default); these tests run an API process and a
dispatcher of their own with LEDGERQ_WEBHOOKS_ALLOW_PRIVATE=true, on the suite's database, Redis,
worker and beat, so they can deliver to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import redis
import sqlalchemy as sa
from sqlalchemy import Engine

from devserver import EmbeddedServer, free_port, start_redis
from domain.webhooks import event_id
from tests.integration.isolated import deployment_env, migrated_database
from tests.integration.support import (
    LedgerClient,
    Process,
    extra_api,
    insert_pending,
    wait_for_http,
)
from tests.unit.test_webhooks import receiver_verify
from worker.store.tables import webhook_deliveries

# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def webhook_api(
    service_env: dict[str, str], logs_dir: Path, worker: Process, beat: Process
) -> Iterator[str]:
    """An API process that accepts private endpoint URLs (127.0.0.1: the receivers here)."""
    with extra_api(
        "webhook-api", service_env, logs_dir, LEDGERQ_WEBHOOKS_ALLOW_PRIVATE="true"
    ) as url:
        yield url


@pytest.fixture
async def wh(webhook_api: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=webhook_api, timeout=60) as client:
        yield client


@pytest.fixture
def master_key(service_env: dict[str, str]) -> dict[str, str]:
    return {"X-API-Key": service_env["LEDGERQ_MASTER_KEY"]}


async def register(
    client: LedgerClient | httpx.AsyncClient,
    url: str,
    events: list[str] | None = None,
    expect: int = 201,
    **extra: Any,
) -> dict[str, Any]:
    body = {"url": url, "events": events or ["operation.succeeded"], **extra}
    if isinstance(client, LedgerClient):
        r = await client.request("POST", "/api/v1/webhooks", json=body)
    else:
        r = await client.post("/api/v1/webhooks", json=body)
    assert r.status_code == expect, r.text
    return dict(r.json())


async def deliveries(
    client: LedgerClient | httpx.AsyncClient, webhook_id: str, **params: Any
) -> list[dict[str, Any]]:
    path = f"/api/v1/webhooks/{webhook_id}/deliveries"
    if isinstance(client, LedgerClient):
        r = await client.request("GET", path, params=params)
    else:
        r = await client.get(path, params=params)
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


def outbox(engine: Engine, endpoint_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(webhook_deliveries).where(
                    webhook_deliveries.c.endpoint_id == UUID(endpoint_id)
                )
            ).all()
        )


# ---------------------------------------------------------------- registration and isolation


async def test_registering_shows_the_secret_once(wh: httpx.AsyncClient) -> None:
    carol = await LedgerClient.register(wh, "carol")
    created = await register(
        carol,
        "http://127.0.0.1:9/hook",
        ["operation.succeeded", "operation.failed", "operation.succeeded"],
        description="ledger sync",
    )
    assert created["secret"].startswith("whsec_")
    assert created["events"] == ["operation.succeeded", "operation.failed"]
    assert created["owner_id"] == carol.user_id and created["all_accounts"] is False
    assert created["enabled"] is True and created["disabled_reason"] is None
    r = await carol.request("GET", f"/api/v1/webhooks/{created['id']}")
    assert r.status_code == 200 and "secret" not in r.json()
    listed = await carol.request("GET", "/api/v1/webhooks")
    assert [w["id"] for w in listed.json()["items"]] == [created["id"]]
    assert "secret" not in listed.json()["items"][0]

    rotated = await carol.request(
        "POST",
        f"/api/v1/webhooks/{created['id']}/rotate-secret",
        json={"previous_secret_valid_for": 600},
    )
    assert rotated.status_code == 200, rotated.text
    assert rotated.json()["secret"] not in (created["secret"], None)
    assert rotated.json()["previous_secret_expires_at"] is not None
    assert rotated.headers["cache-control"] == "no-store"

    r = await carol.request("DELETE", f"/api/v1/webhooks/{created['id']}")
    assert r.status_code == 204
    r = await carol.request("GET", f"/api/v1/webhooks/{created['id']}")
    assert r.status_code == 404 and r.json()["code"] == "webhook_not_found"


async def test_only_http_urls_to_public_addresses_by_default(
    http: httpx.AsyncClient, wh: httpx.AsyncClient
) -> None:
    """The suite's API runs with the default policy: loopback, private, link-local addresses and
    other schemes are refused (422 webhook_url_not_allowed); the webhook API allows private ones
    but never other schemes or credentials in the URL."""
    alice = await LedgerClient.register(http, "alice")
    for url in (
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/hook",
        "http://[::ffff:192.168.0.1]/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
        "http://user:pw@example.com/hook",
        "http://no-such-host.invalid/hook",
    ):
        r = await alice.request(
            "POST", "/api/v1/webhooks", json={"url": url, "events": ["operation.failed"]}
        )
        assert r.status_code == 422, (url, r.text)
        assert r.json()["code"] == "webhook_url_not_allowed" and r.json()["field"] == "url"
    r = await alice.request(
        "POST", "/api/v1/webhooks", json={"url": "http://127.0.0.1:1/", "events": ["nope"]}
    )
    assert r.status_code == 422 and r.json()["code"] == "validation_error"

    dave = await LedgerClient.register(wh, "dave")
    await register(dave, "http://127.0.0.1:9/private-is-fine-here")
    for url in ("ftp://127.0.0.1/hook", "http://u:p@127.0.0.1/hook", "http://0.0.0.0/hook"):
        r = await dave.request(
            "POST", "/api/v1/webhooks", json={"url": url, "events": ["operation.failed"]}
        )
        assert r.status_code == 422, (url, r.text)


async def test_only_the_admin_registers_for_every_account(
    wh: httpx.AsyncClient, master_key: dict[str, str]
) -> None:
    erin = await LedgerClient.register(wh, "erin")
    r = await erin.request(
        "POST",
        "/api/v1/webhooks",
        json={"url": "http://127.0.0.1:9/", "events": ["operation.failed"], "all_accounts": True},
    )
    assert r.status_code == 403 and r.json()["code"] == "forbidden"
    r = await wh.post(
        "/api/v1/webhooks",
        headers=master_key,
        json={"url": "http://127.0.0.1:9/", "events": ["operation.failed"]},
    )
    assert r.status_code == 201, r.text
    everyone = r.json()
    assert everyone["all_accounts"] is True and everyone["owner_id"] is None
    # The admin sees and manages it; a user does not see it at all.
    r = await erin.request("GET", f"/api/v1/webhooks/{everyone['id']}")
    assert r.status_code == 404
    r = await wh.delete(f"/api/v1/webhooks/{everyone['id']}", headers=master_key)
    assert r.status_code == 204


async def test_an_owner_keeps_at_most_twenty_endpoints(wh: httpx.AsyncClient) -> None:
    frank = await LedgerClient.register(wh, "frank")
    made = [await register(frank, f"http://127.0.0.1:9/{i}") for i in range(20)]
    r = await frank.request(
        "POST", "/api/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["hold.created"]}
    )
    assert r.status_code == 409 and r.json()["code"] == "webhook_limit_reached"
    page = await frank.request("GET", "/api/v1/webhooks", params={"limit": 15})
    assert len(page.json()["items"]) == 15 and page.json()["next_cursor"]
    rest = await frank.request(
        "GET", "/api/v1/webhooks", params={"limit": 15, "cursor": page.json()["next_cursor"]}
    )
    seen = [w["id"] for w in page.json()["items"] + rest.json()["items"]]
    assert seen == [w["id"] for w in made]


async def test_an_endpoint_changed_sends_its_pending_deliveries_to_the_new_url(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    """PATCH: a delivery retrying against the old URL goes to the new one with its event id; the
    new event list applies to later operations; a refused URL changes nothing; absent fields
    stay and `description: ""` removes it."""
    quinn = await LedgerClient.register(wh, "quinn")
    account = await quinn.create_account()
    old, new = path(), path()
    endpoint = await register(quinn, receiver.url(old), description="first")
    receiver.plan(old, 503)
    deposit = await quinn.deposit(account, "3.00")
    await receiver.wait(old, 1)  # failed once: pending, retried

    url = f"/api/v1/webhooks/{endpoint['id']}"
    r = await quinn.request(
        "PATCH",
        url,
        json={"url": receiver.url(new), "events": ["operation.succeeded", "operation.failed"]},
    )
    assert r.status_code == 200, r.text
    changed = r.json()
    assert changed["url"] == receiver.url(new)
    assert changed["events"] == ["operation.succeeded", "operation.failed"]
    assert changed["description"] == "first" and changed["enabled"] is True
    [moved] = await receiver.wait(new, 1)
    assert moved.headers["Ledgerq-Event-Id"] == str(
        event_id(UUID(deposit["id"]), "operation.succeeded")
    )
    failed = await quinn.wait(
        await quinn.submit_ok({"type": "withdrawal", "account_id": account, "amount": "99.00"})
    )
    assert failed["status"] == "failed"
    second = (await receiver.wait(new, 2))[1]
    assert second.event["type"] == "operation.failed"

    for body, field in (
        ({"url": "ftp://example.com/x"}, "url"),
        ({"events": []}, None),
        ({"events": ["operation.exploded"]}, None),
        ({"secret": "mine"}, None),
    ):
        r = await quinn.request("PATCH", url, json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        if field:
            assert r.json()["code"] == "webhook_url_not_allowed" and r.json()["field"] == field
    r = await quinn.request("PATCH", url, json={"description": ""})
    assert r.status_code == 200, r.text
    assert r.json()["url"] == receiver.url(new) and r.json()["description"] is None
    assert r.json()["events"] == ["operation.succeeded", "operation.failed"]
    await quinn.request("DELETE", url)


async def test_events_go_only_to_their_owners_endpoints_and_the_admins(
    wh: httpx.AsyncClient, engine: Engine, master_key: dict[str, str]
) -> None:
    """The outbox rows themselves: alice's endpoint gets alice's operations, bob's bob's (a
    transfer from bob to alice is bob's operation), the admin's every one; nobody reads or
    resends another user's deliveries."""
    alice = await LedgerClient.register(wh, "alice")
    bob = await LedgerClient.register(wh, "bob")
    a, b = await alice.create_account(), await bob.create_account()
    events = ["operation.succeeded", "operation.failed"]
    to_alice = await register(alice, "http://127.0.0.1:9/alice", events)
    to_bob = await register(bob, "http://127.0.0.1:9/bob", events)
    r = await wh.post(
        "/api/v1/webhooks",
        headers=master_key,
        json={"url": "http://127.0.0.1:9/all", "events": ["operation.failed"]},
    )
    assert r.status_code == 201, r.text
    to_admin = r.json()
    # Disabled at once: the admin's endpoint must not send to a dead port for the whole suite.
    await wh.post(f"/api/v1/webhooks/{to_admin['id']}/disable", headers=master_key)

    deposit_a = (await alice.deposit(a, "10.00"))["id"]
    deposit_b = (await bob.deposit(b, "10.00"))["id"]
    transfer = await bob.wait(
        await bob.submit_ok(
            {"type": "transfer", "account_id": b, "to_account_id": a, "amount": "1.00"}
        )
    )
    failed = await alice.wait(
        await alice.submit_ok({"type": "withdrawal", "account_id": a, "amount": "99.00"})
    )
    assert failed["status"] == "failed"

    def pairs(rows: list[Any]) -> set[tuple[str, str]]:
        return {(str(r.operation_id), r.event_type) for r in rows}

    assert pairs(outbox(engine, to_alice["id"])) == {
        (deposit_a, "operation.succeeded"),
        (failed["id"], "operation.failed"),
    }
    assert pairs(outbox(engine, to_bob["id"])) == {
        (deposit_b, "operation.succeeded"),
        (transfer["id"], "operation.succeeded"),
    }
    # Disabled endpoints get no events written.
    assert outbox(engine, to_admin["id"]) == []
    for row in outbox(engine, to_alice["id"]):
        assert row.event_id == event_id(row.operation_id, row.event_type)
        assert row.payload["operation"]["id"] == str(row.operation_id)

    # The admin's all-accounts endpoint, enabled, gets every user's failures.
    r = await wh.post(f"/api/v1/webhooks/{to_admin['id']}/enable", headers=master_key)
    assert r.status_code == 200 and r.json()["enabled"] is True
    fail_b = await bob.wait(
        await bob.submit_ok({"type": "withdrawal", "account_id": b, "amount": "99.00"})
    )
    fail_a = await alice.wait(
        await alice.submit_ok({"type": "withdrawal", "account_id": a, "amount": "99.00"})
    )
    await wh.post(f"/api/v1/webhooks/{to_admin['id']}/disable", headers=master_key)
    assert pairs(outbox(engine, to_admin["id"])) == {
        (fail_b["id"], "operation.failed"),
        (fail_a["id"], "operation.failed"),
    }
    assert (fail_b["id"], "operation.failed") not in pairs(outbox(engine, to_alice["id"]))

    # Management is isolated too.
    for method, path in (
        ("GET", f"/api/v1/webhooks/{to_alice['id']}"),
        ("GET", f"/api/v1/webhooks/{to_alice['id']}/deliveries"),
        ("POST", f"/api/v1/webhooks/{to_alice['id']}/disable"),
        ("POST", f"/api/v1/webhooks/{to_alice['id']}/rotate-secret"),
        ("DELETE", f"/api/v1/webhooks/{to_alice['id']}"),
    ):
        r = await bob.request(method, path)
        assert r.status_code == 404, (method, path, r.text)
    r = await bob.request(
        "PATCH", f"/api/v1/webhooks/{to_alice['id']}", json={"url": "http://127.0.0.1:9/bob"}
    )
    assert r.status_code == 404 and r.json()["code"] == "webhook_not_found"
    some = (await deliveries(alice, to_alice["id"]))[0]["id"]
    r = await bob.request("POST", f"/api/v1/webhooks/{to_bob['id']}/deliveries/{some}/retry")
    assert r.status_code == 404 and r.json()["code"] == "webhook_delivery_not_found"
    listed = await bob.request("GET", "/api/v1/webhooks")
    assert [w["id"] for w in listed.json()["items"]] == [to_bob["id"]]
    for endpoint in (to_alice, to_bob):
        owner = alice if endpoint is to_alice else bob
        await owner.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")
    await wh.delete(f"/api/v1/webhooks/{to_admin['id']}", headers=master_key)


async def test_a_cancel_writes_its_event_in_its_own_transaction(
    wh: httpx.AsyncClient, engine: Engine
) -> None:
    grace = await LedgerClient.register(wh, "grace")
    account = await grace.create_account()
    endpoint = await register(grace, "http://127.0.0.1:9/grace", ["operation.cancelled"])
    # Stored pending without ringing (as if the API died after its INSERT): cancel it before the
    # sweeper rings its partition; should the worker win, try again.
    for _ in range(5):
        [pending] = insert_pending(engine, grace.user_id, account, [100])
        r = await grace.request("DELETE", f"/api/v1/operations/{pending}")
        if r.status_code == 200:
            break
        assert r.status_code == 409, r.text
    else:
        pytest.fail("the worker applied every operation before its cancel")
    [row] = outbox(engine, endpoint["id"])
    assert (row.operation_id, row.event_type) == (pending, "operation.cancelled")
    assert row.payload["operation"]["status"] == "cancelled"
    await grace.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_disable_and_enable(wh: httpx.AsyncClient) -> None:
    heidi = await LedgerClient.register(wh, "heidi")
    endpoint = await register(heidi, "http://127.0.0.1:9/heidi")
    r = await heidi.request("POST", f"/api/v1/webhooks/{endpoint['id']}/disable")
    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is False and r.json()["disabled_reason"] == (
        f"disabled by {heidi.username}"
    )
    assert r.json()["disabled_at"] is not None
    r = await heidi.request("POST", f"/api/v1/webhooks/{endpoint['id']}/enable")
    assert r.status_code == 200
    assert (r.json()["enabled"], r.json()["disabled_reason"], r.json()["disabled_at"]) == (
        True,
        None,
        None,
    )
    await heidi.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


# ---------------------------------------------------------------- a real receiver, the dispatcher


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    @property
    def event(self) -> dict[str, Any]:
        return dict(json.loads(self.body))


class Receiver:
    """A local HTTP server that records every POST and answers as planned per path: a status
    code, ("sleep", seconds) then 200, or ("hang", event): no answer until the event is set (or
    a minute passed). The last step of a plan repeats; no plan: 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.plans: dict[str, list[Any]] = {}
        self.lock = threading.Lock()
        self.closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    receiver.requests.append(
                        Received(self.path, dict(self.headers.items()), body, time.monotonic())
                    )
                    plan = receiver.plans.get(self.path, [200])
                    step = plan.pop(0) if len(plan) > 1 else plan[0]
                if isinstance(step, tuple) and step[0] == "hang":
                    step[1].wait(60)
                    step = 200
                elif isinstance(step, tuple):
                    receiver.closing.wait(step[1])
                    step = 200
                self.send_response(step)
                if step in (301, 302, 307, 308):
                    self.send_header("Location", "/redirected")
                payload = b"ok" if step < 300 else b"nope " * 2000
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def plan(self, path: str, *steps: Any) -> None:
        with self.lock:
            self.plans[path] = list(steps)

    def at(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    async def wait(self, path: str, count: int, within: float = 60) -> list[Received]:
        deadline = time.monotonic() + within
        while len(self.at(path)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(self.at(path))} of {count} requests came")
            await asyncio.sleep(0.1)
        return self.at(path)

    def close(self) -> None:
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# The dispatcher of these tests: private addresses allowed (the receiver), a short timeout and
# backoff so retries come within seconds.
DISPATCHER_ENV = {
    "LEDGERQ_WEBHOOKS_ALLOW_PRIVATE": "true",
    "LEDGERQ_WEBHOOK_TIMEOUT": "2",
    "LEDGERQ_WEBHOOK_BACKOFF_BASE": "1",
    "LEDGERQ_WEBHOOK_BACKOFF_MAX": "2",
}


@pytest.fixture(scope="module")
def dispatcher(
    service_env: dict[str, str], logs_dir: Path, worker: Process, beat: Process, engine: Engine
) -> Iterator[Process]:
    # Only the receivers of these tests get anything: endpoints other tests of the session
    # registered (the schema fuzz may register public addresses) are disabled first.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE webhook_endpoints SET enabled = false, disabled_at = now(),"
                " disabled_reason = 'not a receiver of tests/integration/test_webhooks.py'"
                " WHERE enabled AND url NOT LIKE 'http://127.0.0.1:%'"
            )
        )
    process = Process(
        "dispatcher", ["-m", "cli", "dispatcher"], {**service_env, **DISPATCHER_ENV}, logs_dir
    )
    process.start()
    process.wait_for_log("ready", timeout=60)
    yield process
    process.stop()


def path() -> str:
    return f"/hook-{secrets.token_hex(6)}"


async def operation(client: LedgerClient, operation_id: str) -> dict[str, Any]:
    r = await client.request("GET", f"/api/v1/operations/{operation_id}")
    assert r.status_code == 200, r.text
    return dict(r.json())


async def test_a_delivery_is_signed_carries_the_operation_and_verifies(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    ivan = await LedgerClient.register(wh, "ivan")
    account = await ivan.create_account()
    hook = path()
    endpoint = await register(ivan, receiver.url(hook), ["operation.succeeded", "operation.failed"])
    deposit = await ivan.deposit(account, "12.50", description="salary", metadata={"k": "v"})
    [got] = await receiver.wait(hook, 1)

    verify = receiver_verify()
    assert verify(got.body, got.headers["Ledgerq-Signature"], endpoint["secret"])
    assert not verify(got.body, got.headers["Ledgerq-Signature"], "whsec_someone_else")
    event = got.event
    assert event["type"] == "operation.succeeded" == got.headers["Ledgerq-Event-Type"]
    assert event["id"] == got.headers["Ledgerq-Event-Id"]
    assert UUID(event["id"]) == event_id(UUID(deposit["id"]), "operation.succeeded")
    # The operation as the REST API shows it, field for field.
    assert event["data"]["operation"] == await operation(ivan, deposit["id"])
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["Host"] == receiver.url("").removeprefix("http://")

    # The delivery's record: succeeded at the first attempt, with its status and duration.
    for _ in range(50):
        [delivery] = await deliveries(ivan, endpoint["id"])
        if delivery["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1
    assert delivery["event_id"] == event["id"] and delivery["next_attempt_at"] is None
    [attempt] = delivery["attempt_log"]
    assert attempt["status_code"] == 200 and attempt["error"] is None
    assert attempt["duration_ms"] >= 0 and delivery["delivered_at"] is not None

    failed = await ivan.wait(
        await ivan.submit_ok({"type": "withdrawal", "account_id": account, "amount": "99.00"})
    )
    [_, second] = await receiver.wait(hook, 2)
    assert second.event["type"] == "operation.failed"
    assert second.event["data"]["operation"] == await operation(ivan, failed["id"])
    await ivan.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_hold_events_carry_the_hold(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    judy = await LedgerClient.register(wh, "judy")
    account = await judy.create_account()
    await judy.deposit(account, "50.00")
    hook = path()
    endpoint = await register(
        judy, receiver.url(hook), ["hold.created", "hold.captured", "hold.voided"]
    )
    held = await judy.wait(
        await judy.submit_ok({"type": "hold", "account_id": account, "amount": "20.00"})
    )
    [created] = await receiver.wait(hook, 1)
    assert created.event["type"] == "hold.created"
    assert created.event["data"]["operation"]["id"] == held["id"]
    assert created.event["data"]["hold"]["status"] == "open"
    assert created.event["data"]["hold"]["amount"] == "20.00"
    capture = await judy.wait(
        await judy.submit_ok({"type": "capture", "hold_id": held["id"], "amount": "5.00"})
    )
    [_, captured] = await receiver.wait(hook, 2)
    assert captured.event["type"] == "hold.captured"
    assert captured.event["data"]["operation"] == await operation(judy, capture["id"])
    r = await judy.request("GET", f"/api/v1/holds/{held['id']}")
    assert captured.event["data"]["hold"] == r.json()
    await judy.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_a_void_and_an_expiry_close_holds_with_their_events(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    tess = await LedgerClient.register(wh, "tess")
    account = await tess.create_account()
    await tess.deposit(account, "50.00")
    hook = path()
    endpoint = await register(tess, receiver.url(hook), ["hold.voided", "hold.expired"])
    voided = await tess.wait(
        await tess.submit_ok({"type": "hold", "account_id": account, "amount": "3.00"})
    )
    void = await tess.wait(await tess.submit_ok({"type": "void", "hold_id": voided["id"]}))
    [got] = await receiver.wait(hook, 1)
    assert got.event["type"] == "hold.voided"
    assert got.event["data"]["operation"]["id"] == void["id"]
    assert got.event["data"]["hold"]["status"] == "voided"
    # The sweeper (beat, every second here) voids it once expired: hold.expired.
    expiring = await tess.wait(
        await tess.submit_ok(
            {"type": "hold", "account_id": account, "amount": "4.00", "expires_in": 1}
        )
    )
    [_, got] = await receiver.wait(hook, 2, within=60)
    assert got.event["type"] == "hold.expired"
    assert got.event["data"]["hold"]["id"] == expiring["id"]
    assert got.event["data"]["hold"]["status"] == "expired"
    assert got.event["data"]["operation"]["type"] == "void"
    await tess.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_500s_and_timeouts_are_retried_with_the_same_event(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    ken = await LedgerClient.register(wh, "ken")
    account = await ken.create_account()
    hook = path()
    # A 500, then an answer later than LEDGERQ_WEBHOOK_TIMEOUT (2 s), then a 302 (redirects are
    # not followed: a failure), then 200.
    receiver.plan(hook, 500, ("sleep", 4), 302, 200)
    endpoint = await register(ken, receiver.url(hook))
    deposit = await ken.deposit(account, "1.00")
    got = await receiver.wait(hook, 4, within=60)
    assert receiver.at("/redirected") == []
    ids = {r.headers["Ledgerq-Event-Id"] for r in got}
    assert ids == {str(event_id(UUID(deposit["id"]), "operation.succeeded"))}
    assert len({r.body for r in got}) == 1  # the same body every time; a fresh signature
    # Backoff: the retries come later and later (1-2 s, then at most 2 s with the cap).
    gaps = [b.at - a.at for a, b in itertools.pairwise(got)]
    assert all(gap >= 0.4 for gap in gaps), gaps
    for _ in range(50):
        [delivery] = await deliveries(ken, endpoint["id"])
        if delivery["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 4, delivery
    log = delivery["attempt_log"]
    assert [a["status_code"] for a in log] == [500, None, 302, 200]
    assert log[0]["error"].startswith("HTTP 500: nope") and len(log[0]["error"]) < 400
    assert log[1]["error"].startswith("timed out after 2 s")
    assert log[1]["duration_ms"] >= 1900
    # The failure clock of the endpoint was cleared by the success.
    r = await ken.request("GET", f"/api/v1/webhooks/{endpoint['id']}")
    assert r.json()["failing_since"] is None and r.json()["enabled"] is True
    await ken.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_a_rotation_signs_with_both_secrets_for_its_grace_period(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    leo = await LedgerClient.register(wh, "leo")
    account = await leo.create_account()
    hook = path()
    endpoint = await register(leo, receiver.url(hook))
    r = await leo.request("POST", f"/api/v1/webhooks/{endpoint['id']}/rotate-secret")
    new = r.json()["secret"]
    await leo.deposit(account, "1.00")
    [got] = await receiver.wait(hook, 1)
    header = got.headers["Ledgerq-Signature"]
    assert header.count("v1=") == 2
    verify = receiver_verify()
    assert verify(got.body, header, new) and verify(got.body, header, endpoint["secret"])
    # Without a grace period the old secret stops at once.
    r = await leo.request(
        "POST",
        f"/api/v1/webhooks/{endpoint['id']}/rotate-secret",
        json={"previous_secret_valid_for": 0},
    )
    newest = r.json()["secret"]
    await leo.deposit(account, "1.00")
    [_, got] = await receiver.wait(hook, 2)
    header = got.headers["Ledgerq-Signature"]
    assert header.count("v1=") == 1
    assert verify(got.body, header, newest) and not verify(got.body, header, new)
    await leo.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_an_endpoint_failing_for_the_retry_period_is_disabled_and_says_why(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process, engine: Engine
) -> None:
    """Three days are simulated: the delivery's and the failure clock's start moved back."""
    mia = await LedgerClient.register(wh, "mia")
    account = await mia.create_account()
    hook = path()
    receiver.plan(hook, 503)
    endpoint = await register(mia, receiver.url(hook))
    await mia.deposit(account, "1.00")
    await receiver.wait(hook, 1)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE webhook_deliveries SET created_at = now() - interval '4 days'"
                " WHERE endpoint_id = :id"
            ),
            {"id": endpoint["id"]},
        )
        conn.execute(
            sa.text(
                "UPDATE webhook_endpoints SET failing_since = now() - interval '4 days'"
                " WHERE id = :id"
            ),
            {"id": endpoint["id"]},
        )
    for _ in range(200):
        r = await mia.request("GET", f"/api/v1/webhooks/{endpoint['id']}")
        if not r.json()["enabled"]:
            break
        await asyncio.sleep(0.1)
    state = r.json()
    assert state["enabled"] is False, state
    assert "HTTP 503" in state["disabled_reason"] and "259200" in state["disabled_reason"]
    assert state["failing_since"] is not None and state["disabled_at"] is not None
    [delivery] = await deliveries(mia, endpoint["id"])
    assert delivery["status"] == "failed" and delivery["next_attempt_at"] is None
    tried = len(receiver.at(hook))

    # No events are written for a disabled endpoint; a retry needs it enabled first.
    await mia.deposit(account, "1.00")
    assert len(await deliveries(mia, endpoint["id"])) == 1
    retry = f"/api/v1/webhooks/{endpoint['id']}/deliveries/{delivery['id']}/retry"
    r = await mia.request("POST", retry)
    assert r.status_code == 409 and r.json()["code"] == "webhook_disabled"
    receiver.plan(hook, 200)
    r = await mia.request("POST", f"/api/v1/webhooks/{endpoint['id']}/enable")
    assert r.status_code == 200 and r.json()["failing_since"] is None
    r = await mia.request("POST", retry)
    assert r.status_code == 202 and r.json()["status"] == "pending"
    got = await receiver.wait(hook, tried + 1)
    assert got[-1].headers["Ledgerq-Event-Id"] == delivery["event_id"]
    for _ in range(50):
        [delivery] = await deliveries(mia, endpoint["id"])
        if delivery["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert delivery["status"] == "succeeded"
    # Resent on request even after a success: the same event again.
    r = await mia.request("POST", retry)
    assert r.status_code == 202
    got = await receiver.wait(hook, tried + 2)
    assert got[-1].headers["Ledgerq-Event-Id"] == delivery["event_id"]
    await mia.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


async def test_each_user_receives_only_their_own_events(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    nina = await LedgerClient.register(wh, "nina")
    omar = await LedgerClient.register(wh, "omar")
    n, o = await nina.create_account(), await omar.create_account()
    to_nina, to_omar = path(), path()
    e1 = await register(nina, receiver.url(to_nina), ["operation.succeeded", "operation.failed"])
    e2 = await register(omar, receiver.url(to_omar), ["operation.succeeded", "operation.failed"])
    mine = [(await nina.deposit(n, "3.00"))["id"] for _ in range(3)]
    theirs = [(await omar.deposit(o, "4.00"))["id"] for _ in range(2)]
    theirs.append(
        (
            await omar.wait(
                await omar.submit_ok(
                    {"type": "transfer", "account_id": o, "to_account_id": n, "amount": "1.00"}
                )
            )
        )["id"]
    )
    got_n = await receiver.wait(to_nina, 3)
    got_o = await receiver.wait(to_omar, 3)
    await asyncio.sleep(2)  # anything misrouted would have come by now
    assert sorted(r.event["data"]["operation"]["id"] for r in receiver.at(to_nina)) == sorted(mine)
    assert sorted(r.event["data"]["operation"]["id"] for r in receiver.at(to_omar)) == sorted(
        theirs
    )
    assert len(got_n) == len(got_o) == 3
    await nina.request("DELETE", f"/api/v1/webhooks/{e1['id']}")
    await omar.request("DELETE", f"/api/v1/webhooks/{e2['id']}")


# ---------------------------------------------------------------- what dies, and what survives


def restart(process: Process) -> None:
    process.start()
    process.wait_for_log("ready", timeout=60)


async def test_a_dispatcher_killed_mid_delivery_sends_the_event_again_with_its_id(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process
) -> None:
    """SIGKILL while the receiver holds the request: the attempt is never recorded, so the claim's
    lease runs out and the restarted dispatcher sends the same event (same id, same body)."""
    pat = await LedgerClient.register(wh, "pat")
    account = await pat.create_account()
    hook = path()
    held = threading.Event()
    receiver.plan(hook, ("hang", held), 200)
    endpoint = await register(pat, receiver.url(hook))
    deposit = await pat.deposit(account, "7.00")
    [first] = await receiver.wait(hook, 1)
    dispatcher.kill()
    held.set()
    restart(dispatcher)
    [_, again] = await receiver.wait(hook, 2, within=60)
    assert again.headers["Ledgerq-Event-Id"] == first.headers["Ledgerq-Event-Id"]
    assert UUID(again.event["id"]) == event_id(UUID(deposit["id"]), "operation.succeeded")
    assert again.body == first.body
    for _ in range(50):
        [delivery] = await deliveries(pat, endpoint["id"])
        if delivery["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    # The killed attempt left no record: one attempt, the one that succeeded.
    assert delivery["status"] == "succeeded" and delivery["attempts"] == 1, delivery
    await pat.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


@pytest.mark.timeout(300)
async def test_worker_and_dispatcher_killed_mid_stream_every_event_arrives(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process, worker: Process
) -> None:
    """Operations keep coming while the partition worker and the dispatcher are SIGKILLed
    together (a batch may be mid-transaction, deliveries in flight): after both restart, every
    operation's event arrives, each with the id it must have, however often it came."""
    quinn = await LedgerClient.register(wh, "quinn")
    accounts = [await quinn.create_account() for _ in range(4)]
    hook = path()
    receiver.plan(hook, ("sleep", 0.05))
    endpoint = await register(quinn, receiver.url(hook))
    submitted: list[str] = []

    async def submit(n: int) -> None:
        for i in range(n):
            body = {"type": "deposit", "account_id": accounts[i % 4], "amount": "1.00"}
            submitted.append(await quinn.submit_ok(body))
            await asyncio.sleep(0.01)

    stream = asyncio.create_task(submit(120))
    await receiver.wait(hook, 5)
    worker.kill()
    dispatcher.kill()
    await asyncio.sleep(1)
    restart(worker)
    restart(dispatcher)
    await stream
    results = await quinn.wait_all(submitted, within=120)
    assert {r["status"] for r in results} == {"succeeded"}
    expected = {str(event_id(UUID(op), "operation.succeeded")) for op in submitted}
    deadline = time.monotonic() + 90
    while {r.headers["Ledgerq-Event-Id"] for r in receiver.at(hook)} != expected:
        assert time.monotonic() < deadline, (
            f"{len(expected - {r.headers['Ledgerq-Event-Id'] for r in receiver.at(hook)})} "
            f"of {len(expected)} events never arrived"
        )
        await asyncio.sleep(0.2)
    by_id: dict[str, set[bytes]] = {}
    for r in receiver.at(hook):
        by_id.setdefault(r.headers["Ledgerq-Event-Id"], set()).add(r.body)
        assert r.event["id"] == r.headers["Ledgerq-Event-Id"]
    # A repeated event is the same event: one body per id.
    assert all(len(bodies) == 1 for bodies in by_id.values())
    await quinn.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


@dataclass
class RedisKillDeployment:
    """A deployment of its own whose Redis the test kills (emptied) and starts again."""

    redis_dir: Path
    server: EmbeddedServer
    env: dict[str, str]
    processes: dict[str, Process]

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['LEDGERQ_API_PORT']}"

    def kill_redis(self) -> None:
        """SIGKILL; it comes back empty: queues, bells, leases gone."""
        os.kill(self.server.pid, signal.SIGKILL)
        shutil.rmtree(self.redis_dir)

    def restart_redis(self) -> None:
        port = int(self.server.url.rsplit(":", 1)[1].split("/")[0])
        self.server = start_redis(self.redis_dir, port=port)


@contextlib.asynccontextmanager
async def redis_kill_deployment(
    server_urls: tuple[str, str], tmp_path: Path, names: tuple[str, ...], **env: str
) -> AsyncIterator[RedisKillDeployment]:
    """`names` of `ledgerq` processes (the api among them) on a fresh database and a private
    Redis; yielded once workers and dispatchers are ready and the API answers."""
    redis_dir = tmp_path / "redis"
    server = start_redis(redis_dir)
    with migrated_database(server_urls[0], "ledgerq_webhooks") as database_url:
        deployment = RedisKillDeployment(
            redis_dir,
            server,
            {
                **deployment_env(database_url, server.url, tmp_path / "data"),
                **DISPATCHER_ENV,
                "LEDGERQ_API_PORT": str(free_port()),
                **env,
            },
            {},
        )
        try:
            for name in names:
                process = Process(f"redis-{name}", ["-m", "cli", name], deployment.env, tmp_path)
                process.start()
                deployment.processes[name] = process
            for name in ("worker", "dispatcher"):
                if name in deployment.processes:
                    deployment.processes[name].wait_for_log("ready", timeout=60)
            api = deployment.processes["api"]
            await asyncio.to_thread(wait_for_http, f"{deployment.api_url}/health", api, 60)
            yield deployment
        finally:
            # Before the database goes: the processes, then Redis.
            for process in deployment.processes.values():
                process.stop()
            deployment.server.stop()


@pytest.mark.timeout(300)
async def test_events_written_while_redis_was_down_still_go_out(
    server_urls: tuple[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    """A deployment of its own (Redis is killed here): events of operations applied before the
    outage whose receiver was failing, an operation cancelled during it (its event written while
    Redis was down) and one submitted during it (applied after) all arrive once Redis is back,
    empty: the work list is PostgreSQL's, which the dispatcher looks at itself."""
    names = ("worker", "dispatcher", "beat", "api")
    async with (
        redis_kill_deployment(server_urls, tmp_path, names) as deployment,
        httpx.AsyncClient(base_url=deployment.api_url, timeout=30) as http,
    ):
        rosa = await LedgerClient.register(http, "rosa")
        account = await rosa.create_account()
        hook = path()
        await register(rosa, receiver.url(hook), ["operation.succeeded", "operation.cancelled"])
        before = await rosa.deposit(account, "5.00")
        await receiver.wait(hook, 1)

        # The receiver fails: this event stays pending in PostgreSQL, retried.
        receiver.plan(hook, 503)
        failing = await rosa.deposit(account, "6.00")
        await receiver.wait(hook, 2)

        deployment.kill_redis()
        # Stored, not applied (no broker to ring it); then one cancelled: its event is written by
        # the cancel's transaction while Redis is down.
        during = await rosa.submit_ok({"type": "deposit", "account_id": account, "amount": "7.00"})
        cancelled = await rosa.submit_ok(
            {"type": "deposit", "account_id": account, "amount": "8.00"}
        )
        r = await rosa.request("DELETE", f"/api/v1/operations/{cancelled}")
        assert r.status_code == 200, r.text
        receiver.plan(hook, 200)
        await asyncio.sleep(2)
        deployment.restart_redis()

        expected = {
            str(event_id(UUID(before["id"]), "operation.succeeded")),
            str(event_id(UUID(failing["id"]), "operation.succeeded")),
            str(event_id(UUID(during), "operation.succeeded")),
            str(event_id(UUID(cancelled), "operation.cancelled")),
        }
        deadline = time.monotonic() + 120
        while {r.headers["Ledgerq-Event-Id"] for r in receiver.at(hook)} != expected:
            got = {r.headers["Ledgerq-Event-Id"] for r in receiver.at(hook)}
            assert time.monotonic() < deadline, f"missing {expected - got}"
            await asyncio.sleep(0.2)
        assert (await rosa.wait(during))["status"] == "succeeded"


def ring_dispatcher(env: dict[str, str]) -> None:
    """One dispatch message on the webhook queue, sent as beat sends it (a process of the
    deployment's settings)."""
    code = "from worker.settings import get_settings; from worker.webhooks import app, ring; "
    code += "ring(get_settings()); app.close()"
    subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, check=True, timeout=30)


@pytest.mark.timeout(300)
async def test_the_dispatcher_outlives_a_redis_sigkill_with_a_delivery_in_flight(
    server_urls: tuple[str, str], receiver: Receiver, tmp_path: Path
) -> None:
    """A dispatch task (a Celery message, acknowledged when it ends) is waiting on a receiver
    when Redis is SIGKILLed. Celery 5.7.0 alone crashed here: closing the lost connection tried
    to restore that unacknowledged message through a client it had just dropped ("Unrecoverable
    error", the dispatcher exited and sent nothing more; worker/consumer.py corrects it). The
    delivery completes, the dispatcher reconnects once Redis is back (empty) and sends the next
    event. No beat, and its own look at PostgreSQL only hourly: every delivery here comes from
    a Celery task."""
    names = ("worker", "dispatcher", "api")
    async with (
        redis_kill_deployment(
            server_urls, tmp_path, names, LEDGERQ_WEBHOOK_INTERVAL="3600"
        ) as deployment,
        httpx.AsyncClient(base_url=deployment.api_url, timeout=30) as http,
    ):
        dispatcher = deployment.processes["dispatcher"]
        rosa = await LedgerClient.register(http, "rosa")
        account = await rosa.create_account()
        hook = path()
        await register(rosa, receiver.url(hook))
        held = threading.Event()
        receiver.plan(hook, ("hang", held), 200)
        first = await rosa.deposit(account, "5.00")
        await asyncio.to_thread(ring_dispatcher, deployment.env)
        await receiver.wait(hook, 1)  # the task is in flight, its message unacknowledged

        deployment.kill_redis()
        await asyncio.to_thread(dispatcher.wait_for_log, "Connection to broker lost", timeout=30)
        held.set()  # the delivery ends; its message cannot be acknowledged
        await asyncio.sleep(1)
        assert "Unrecoverable error" not in dispatcher.log_text(), dispatcher.log_text()
        dispatcher.assert_alive()
        deployment.restart_redis()

        second = await rosa.deposit(account, "6.00")
        await asyncio.to_thread(ring_dispatcher, deployment.env)
        requests = await receiver.wait(hook, 2)
        assert [r.headers["Ledgerq-Event-Id"] for r in requests] == [
            str(event_id(UUID(op["id"]), "operation.succeeded")) for op in (first, second)
        ]
        dispatcher.assert_alive()
        assert "Unrecoverable error" not in dispatcher.log_text()


async def test_a_disabled_endpoints_deliveries_wait_parked_until_it_is_enabled(
    wh: httpx.AsyncClient, receiver: Receiver, dispatcher: Process, engine: Engine
) -> None:
    sam = await LedgerClient.register(wh, "sam")
    account = await sam.create_account()
    hook = path()
    receiver.plan(hook, 503)
    endpoint = await register(sam, receiver.url(hook))
    await sam.deposit(account, "2.00")
    await receiver.wait(hook, 1)
    r = await sam.request("POST", f"/api/v1/webhooks/{endpoint['id']}/disable")
    assert r.status_code == 200
    await asyncio.sleep(0.5)  # an attempt in flight when it was disabled may still land
    [delivery] = await deliveries(sam, endpoint["id"])
    assert delivery["status"] == "pending"
    with engine.connect() as conn:
        parked = conn.execute(
            sa.select(webhook_deliveries.c.next_attempt_at).where(
                webhook_deliveries.c.id == UUID(delivery["id"])
            )
        ).scalar_one()
    if parked.year == 9999:  # not re-scheduled by an attempt that was in flight
        assert delivery["next_attempt_at"] is None
    seen = len(receiver.at(hook))
    await asyncio.sleep(4)  # retries came every 1-2 s while enabled; none now
    assert len(receiver.at(hook)) <= seen + 1
    receiver.plan(hook, 200)
    r = await sam.request("POST", f"/api/v1/webhooks/{endpoint['id']}/enable")
    assert r.status_code == 200
    for _ in range(100):
        [delivery] = await deliveries(sam, endpoint["id"])
        if delivery["status"] == "succeeded":
            break
        await asyncio.sleep(0.1)
    assert delivery["status"] == "succeeded", delivery
    await sam.request("DELETE", f"/api/v1/webhooks/{endpoint['id']}")


# ----------------------------------------------------------------------------- retention


def delivery_id_at(at: dt.datetime) -> UUID:
    """A UUIDv7 of that instant, as the outbox makes them."""
    millis = int(at.timestamp() * 1000)
    return UUID(int=millis << 80 | 0x7 << 76 | 0b10 << 62 | secrets.randbits(62))


def test_the_sweeper_prunes_finished_deliveries_past_the_retention(
    server_urls: tuple[str, str], service_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Finished deliveries created before LEDGERQ_WEBHOOK_RETENTION go, oldest first and a batch
    at a time; pending ones stay however old, and so do recent ones."""
    from worker import tasks
    from worker.settings import get_settings, normalize_database_url
    from worker.store.db import make_engine
    from worker.store.webhooks import prune_deliveries

    with migrated_database(server_urls[0], "ledgerq_retention") as url:
        engine = make_engine(normalize_database_url(url), pool_size=2)
        client = redis.Redis.from_url(server_urls[1])
        try:
            now = dt.datetime.now(dt.UTC)
            endpoint = uuid4()
            rows = {
                "old-succeeded": (now - dt.timedelta(days=40), "succeeded"),
                "old-failed": (now - dt.timedelta(days=31), "failed"),
                "old-pending": (now - dt.timedelta(days=45), "pending"),
                "recent": (now - dt.timedelta(days=29), "succeeded"),
                **{f"batch-{n}": (now - dt.timedelta(days=50 + n), "succeeded") for n in range(3)},
            }
            ids = {name: delivery_id_at(at) for name, (at, _) in rows.items()}
            with engine.begin() as conn:
                conn.execute(
                    sa.text(
                        "INSERT INTO webhook_endpoints (id, owner_id, created_by, url, events,"
                        " secret) VALUES (:id, NULL, :id, 'https://example.com/h',"
                        " ARRAY['operation.succeeded'], 'whsec_x')"
                    ),
                    {"id": endpoint},
                )
                for name, (at, status) in rows.items():
                    conn.execute(
                        sa.insert(webhook_deliveries).values(
                            id=ids[name],
                            event_id=uuid4(),
                            endpoint_id=endpoint,
                            event_type="operation.succeeded",
                            operation_id=uuid4(),
                            payload={},
                            status=status,
                            created_at=at,
                        )
                    )

            def left() -> set[str]:
                with engine.connect() as conn:
                    found = set(conn.execute(sa.select(webhook_deliveries.c.id)).scalars())
                return {name for name, id_ in ids.items() if id_ in found}

            thirty_days = 30 * 24 * 3600.0
            # A batch at a time, oldest first: the three oldest (the batch rows) go first.
            with engine.begin() as conn:
                assert prune_deliveries(conn, thirty_days, limit=3) == 3
            assert left() == {"old-succeeded", "old-failed", "old-pending", "recent"}
            # The sweeper, with the retention of the settings, takes the rest of what is due.
            settings = get_settings()
            monkeypatch.setattr(tasks, "resources", lambda: tasks.Resources(engine, client))
            monkeypatch.setattr(
                tasks,
                "get_settings",
                lambda: dataclasses.replace(settings, webhook_retention=thirty_days),
            )
            assert tasks.sweep() == []
            assert left() == {"old-pending", "recent"}
            # 0 keeps everything.
            monkeypatch.setattr(
                tasks, "get_settings", lambda: dataclasses.replace(settings, webhook_retention=0)
            )
            with engine.begin() as conn:
                conn.execute(sa.update(webhook_deliveries).values(status="failed"))
            tasks.sweep()
            assert left() == {"old-pending", "recent"}
        finally:
            client.close()
            engine.dispose()
