"""Following without polling: an operation's server-sent events and an account's WebSocket,
scoped like the REST API, with followers unregistered when the client goes away."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import sqlalchemy as sa
import websockets
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from tests.integration.isolated import wait_until
from tests.integration.support import PASSWORD, LedgerClient
from worker.routing import partition_for
from worker.store.ledger import ADVISORY_NAMESPACE

# A guard against a hung test, not a measurement.
RECEIVE_TIMEOUT = 30


@contextmanager
def partition_held(engine: Engine, account_id: str) -> Iterator[Callable[[], None]]:
    """Hold the apply lock of the account's partition (its operations stay pending) until the
    yielded function is called or the block ends."""
    partition = partition_for(UUID(account_id), 8)
    with engine.connect() as holder:
        holder.execute(sa.select(sa.func.pg_advisory_lock(ADVISORY_NAMESPACE, partition)))
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                holder.execute(sa.select(sa.func.pg_advisory_unlock(ADVISORY_NAMESPACE, partition)))
                holder.commit()

        try:
            yield release
        finally:
            release()


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream: yields {"event": ..., "data": <decoded JSON>} per event."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if line == "":
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):  # ":" starts a comment (keep-alive)
            name, _, content = line.partition(":")
            content = content.removeprefix(" ")
            event[name] = json.loads(content) if name == "data" else content


def followers(api_url: str) -> dict[str, float]:
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "ledgerq_followers":
            return {s.labels["kind"]: s.value for s in family.samples}
    raise AssertionError("no ledgerq_followers in /metrics")


def back_to(api_url: str, kind: str, count: float) -> None:
    wait_until(
        lambda: followers(api_url)[kind] <= count,
        RECEIVE_TIMEOUT,
        lambda: f"{kind} followers {followers(api_url)}, expected {count}",
    )


# ----------------------------------------------------------------- server-sent events


async def test_sse_sends_the_current_state_then_the_final_one_and_ends(
    api_url: str, alice: LedgerClient, engine: Engine
) -> None:
    account = await alice.create_account()
    before = followers(api_url)["operation"]
    with partition_held(engine, account) as release:
        op = await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "12.34"})
        async with alice.http.stream(
            "GET", f"/api/v1/operations/{op}/events", auth=alice.auth, timeout=RECEIVE_TIMEOUT
        ) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r)
            first = await anext(events)
            assert first["event"] == "operation"
            assert (first["data"]["id"], first["data"]["status"]) == (op, "pending")
            assert followers(api_url)["operation"] >= before + 1

            release()  # the worker applies it now; the stream tells
            final = await anext(events)
            assert final["event"] == "operation"
            assert (final["data"]["id"], final["data"]["status"]) == (op, "succeeded")
            assert final["data"]["amount"] == "12.34" and final["data"]["applied_at"]
            with pytest.raises(StopAsyncIteration):
                await anext(events)  # and ends there
    back_to(api_url, "operation", before)


async def test_sse_of_a_final_operation_is_one_event(alice: LedgerClient) -> None:
    account = await alice.create_account()
    op = await alice.submit_ok({"type": "withdrawal", "account_id": account, "amount": "1.00"})
    await alice.wait(op)
    async with alice.http.stream(
        "GET", f"/api/v1/operations/{op}/events", auth=alice.auth, timeout=RECEIVE_TIMEOUT
    ) as r:
        events = [e async for e in sse_events(r)]
    assert len(events) == 1
    assert events[0]["data"]["status"] == "failed"
    assert events[0]["data"]["error"]["code"] == "insufficient_funds"


async def test_sse_is_scoped_like_the_rest_api(alice: LedgerClient, bob: LedgerClient) -> None:
    account = await alice.create_account()
    op = await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "1.00"})
    for path in (f"/api/v1/operations/{op}/events", f"/api/v1/operations/{uuid4()}/events"):
        r = await bob.request("GET", path)
        assert r.status_code == 404, r.text
        assert r.json()["code"] == "operation_not_found"
    r = await alice.http.get(f"/api/v1/operations/{op}/events")
    assert r.status_code == 401


async def test_sse_follower_is_dropped_when_the_client_leaves(
    api_url: str, alice: LedgerClient, engine: Engine
) -> None:
    account = await alice.create_account()
    before = followers(api_url)["operation"]
    with partition_held(engine, account):
        op = await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "2.00"})
        async with alice.http.stream(
            "GET", f"/api/v1/operations/{op}/events", auth=alice.auth, timeout=RECEIVE_TIMEOUT
        ) as r:
            assert (await anext(sse_events(r)))["data"]["status"] == "pending"
            assert followers(api_url)["operation"] >= before + 1
        # Gone while the operation is still pending: its follower must not linger.
        back_to(api_url, "operation", before)


# ----------------------------------------------------------------- the account's WebSocket


def ws_url(api_url: str, account_id: str) -> str:
    return api_url.replace("http://", "ws://") + f"/ws/accounts/{account_id}"


def basic(user: LedgerClient) -> dict[str, str]:
    token = base64.b64encode(f"{user.username}:{PASSWORD}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def receive(socket: Any) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(socket.recv(), RECEIVE_TIMEOUT)))


async def test_websocket_pushes_status_changes_and_balances_of_the_account(
    api_url: str, alice: LedgerClient, bob: LedgerClient
) -> None:
    account = await alice.create_account()
    bobs = await bob.create_account()
    await bob.deposit(bobs, "50.00")
    before = followers(api_url)["account"]
    async with websockets.connect(ws_url(api_url, account), additional_headers=basic(alice)) as ws:
        snapshot = await receive(ws)
        assert snapshot["type"] == "account"
        assert (snapshot["account"]["id"], snapshot["account"]["balance"]) == (account, "0.00")
        assert followers(api_url)["account"] >= before + 1

        deposit = await alice.submit_ok(
            {"type": "deposit", "account_id": account, "amount": "25.00"}
        )
        update = await receive(ws)
        assert update["type"] == "operation"
        assert update["operation"] == {
            "id": deposit,
            "type": "deposit",
            "status": "succeeded",
            "error_code": None,
        }
        assert (update["amount"], update["balance_after"]) == ("25.00", "25.00")
        assert update["account"]["balance"] == "25.00"

        overdraw = await alice.submit_ok(
            {"type": "withdrawal", "account_id": account, "amount": "100.00"}
        )
        update = await receive(ws)
        assert update["operation"]["id"] == overdraw
        assert update["operation"]["status"] == "failed"
        assert update["operation"]["error_code"] == "insufficient_funds"
        assert (update["amount"], update["balance_after"]) == (None, None)
        assert update["account"]["balance"] == "25.00"

        # Someone else's transfer into the account: only once it succeeded. The failed one is
        # final before the next is submitted, so had it been pushed it would come first.
        refused = await bob.submit_ok(
            {"type": "transfer", "account_id": bobs, "to_account_id": account, "amount": "500.00"}
        )
        assert (await bob.wait(refused))["status"] == "failed"
        incoming = await bob.submit_ok(
            {"type": "transfer", "account_id": bobs, "to_account_id": account, "amount": "10.00"}
        )
        update = await receive(ws)
        assert update["operation"] == {
            "id": incoming,
            "type": "transfer",
            "status": "succeeded",
            "error_code": None,
        }
        assert (update["amount"], update["balance_after"]) == ("10.00", "35.00")
        assert update["account"]["balance"] == "35.00"
    back_to(api_url, "account", before)


async def test_websocket_refuses_other_users_accounts_and_anonymous_clients(
    api_url: str, alice: LedgerClient, bob: LedgerClient
) -> None:
    account = await alice.create_account()
    refused = [
        (account, basic(bob)),
        (str(uuid4()), basic(alice)),
        (account, {}),
    ]
    for target, headers in refused:
        with pytest.raises(websockets.exceptions.InvalidStatus):
            async with websockets.connect(ws_url(api_url, target), additional_headers=headers):
                pass
