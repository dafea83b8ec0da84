"""Webhooks end to end: endpoints registered over HTTP, events written by the transactions that
apply or cancel operations, and delivered by the dispatcher (`ledgerq dispatcher`) to a real
local HTTP receiver, signed, retried, given up; isolation between users.

The suite's API refuses private endpoint URLs (the default); these tests run an API process and a
dispatcher of their own with LEDGERQ_WEBHOOKS_ALLOW_PRIVATE=true, on the suite's database, Redis,
worker and beat, so they can deliver to 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from domain.webhooks import event_id
from tests.integration.support import LedgerClient, Process, extra_api, insert_pending
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
