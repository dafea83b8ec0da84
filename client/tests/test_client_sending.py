"""The send loops of both clients, over an in-memory transport (httpx.MockTransport; no
network): what is retried, with which key and body, after how long; pages followed. The same
behaviour against the live API is in tests/integration/test_client.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
from ledgerq_client import (
    AsyncLedgerqClient,
    LedgerqClient,
    RateLimited,
    RetryPolicy,
    TransportError,
    Unavailable,
    Unprocessable,
)

ACCOUNT = "01900000-0000-7000-8000-000000000001"


def _operation(status: str) -> bytes:
    """An operation as the API answers it."""
    fields: dict[str, Any] = dict.fromkeys(
        ("to_account_id", "asset_id", "quantity", "price", "category", "description"), None
    )
    fields |= dict.fromkeys(("hold_id", "expires_in", "reversal_of", "error", "applied_at"), None)
    fields |= {
        "id": ACCOUNT,
        "type": "deposit",
        "status": status,
        "account_id": ACCOUNT,
        "amount": "10.00",
        "currency": "USD",
        "reversed_amount": "0.00",
        "metadata": {},
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }
    return msgspec.json.encode(fields)


Handler = Callable[[httpx.Request], httpx.Response]


def _clients(handler: Handler, **kw: Any) -> tuple[LedgerqClient, AsyncLedgerqClient, list[float]]:
    slept: list[float] = []
    sync = LedgerqClient("http://ledgerq.test", transport=httpx.MockTransport(handler), **kw)
    aio = AsyncLedgerqClient("http://ledgerq.test", transport=httpx.MockTransport(handler), **kw)
    sync._sleep = slept.append

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    aio._sleep = sleep
    return sync, aio, slept


def _problem(status: int, code: str, **headers: str) -> httpx.Response:
    return httpx.Response(
        status,
        json={"status": status, "code": code, "detail": code, "title": "", "type": ""},
        headers={"Content-Type": "application/problem+json", **headers},
    )


class Script:
    """Answers requests from a list (a response, or an exception to raise), recording them."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        # A fresh response each time: a response object belongs to the client that got it.
        return httpx.Response(answer.status_code, headers=answer.headers, content=answer.content)

    def reset(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests = []


def _both(script: Script, answers: list[httpx.Response | Exception], run: Any) -> None:
    """Run `run(client)` with the sync and then the async client on the same script."""
    sync, aio, _ = _clients(script, retry=RetryPolicy(attempts=4, backoff=0.01))
    script.reset(*answers)
    run(sync)
    script.reset(*answers)

    async def go() -> None:
        await run(aio)

    asyncio.run(go())


def test_a_submit_is_retried_with_the_same_key_and_body() -> None:
    dropped = httpx.RemoteProtocolError("Server disconnected without sending a response")
    replay = httpx.Response(
        200, content=_operation("succeeded"), headers={"Idempotent-Replayed": "true"}
    )
    for flavour in ("sync", "async"):
        script = Script(dropped, _problem(503, "backlog_full", **{"Retry-After": "1"}), replay)
        sync, aio, slept = _clients(script, retry=RetryPolicy(attempts=4, backoff=0.01))

        def submit(client: Any) -> Any:
            return client.submit("deposit", account_id=ACCOUNT, amount=Decimal("10.00"), wait=5)

        result = submit(sync) if flavour == "sync" else asyncio.run(submit(aio))
        assert result.replayed and result.status == "succeeded"
        keys = {r.headers["Idempotency-Key"] for r in script.requests}
        bodies = {r.content for r in script.requests}
        assert len(script.requests) == 3 and len(keys) == 1 and len(bodies) == 1
        assert result.idempotency_key in keys
        assert msgspec.json.decode(script.requests[0].content)["amount"] == "10.00"
        assert all(r.headers["Prefer"] == "wait=5" for r in script.requests)
        assert slept[1] >= 1.0  # Retry-After honoured


def test_a_dropped_connection_is_not_retried_for_an_unsafe_call() -> None:
    script = Script(httpx.RemoteProtocolError("gone"))
    sync, _, _ = _clients(script)
    with pytest.raises(TransportError) as caught:
        sync.create_account("main", "checking", "USD")  # a retry could open a second account
    assert len(script.requests) == 1
    assert isinstance(caught.value.__cause__, httpx.RemoteProtocolError)


def test_a_connection_never_made_is_retried_for_any_call() -> None:
    script = Script(httpx.ConnectError("refused"), _problem(409, "username_taken"))
    sync, _, _ = _clients(script)
    with pytest.raises(Exception) as caught:
        sync.register("alice", "correct-horse-battery")
    assert len(script.requests) == 2 and getattr(caught.value, "code", None) == "username_taken"


def test_4xx_is_not_retried_and_keeps_its_code() -> None:
    script = Script(_problem(422, "idempotency_key_reused"))
    sync, _, _ = _clients(script)
    with pytest.raises(Unprocessable) as caught:
        sync.submit("deposit", account_id=ACCOUNT, amount="1", idempotency_key="k")
    assert caught.value.code == "idempotency_key_reused" and len(script.requests) == 1
    assert caught.value.response is not None


def test_attempts_are_bounded() -> None:
    script = Script(*[_problem(503, "database_unavailable")] * 3)
    sync, _, slept = _clients(script, retry=RetryPolicy(attempts=3, backoff=0.01))
    with pytest.raises(Unavailable):
        sync.get_account(ACCOUNT)
    assert len(script.requests) == 3 and len(slept) == 2


def test_a_long_retry_after_is_left_to_the_caller() -> None:
    script = Script(_problem(429, "deposit_limit_exceeded", **{"Retry-After": "3600"}))
    sync, _, slept = _clients(script)
    with pytest.raises(RateLimited) as caught:
        sync.submit("deposit", account_id=ACCOUNT, amount="1")
    assert caught.value.retry_after == 3600.0 and slept == [] and len(script.requests) == 1


def test_iterators_follow_the_cursor() -> None:
    def page(items: list[str], cursor: str | None) -> httpx.Response:
        return httpx.Response(
            200,
            json={
                "items": [msgspec.json.decode(_operation("succeeded")) | {"id": i} for i in items],
                "next_cursor": cursor,
            },
        )

    ids = [
        "01900000-0000-7000-8000-00000000000a",
        "01900000-0000-7000-8000-00000000000b",
        "01900000-0000-7000-8000-00000000000c",
    ]
    answers: list[httpx.Response | Exception] = [page(ids[:2], "c1"), page(ids[2:], None)]
    script = Script()
    seen: list[list[str]] = []

    def run(client: Any) -> Any:
        if isinstance(client, LedgerqClient):
            seen.append([str(o.id) for o in client.iter_operations(account_id=ACCOUNT, limit=2)])
            return None

        async def collect() -> None:
            seen.append(
                [str(o.id) async for o in client.iter_operations(account_id=ACCOUNT, limit=2)]
            )

        return collect()

    _both(script, answers, run)
    assert seen == [ids, ids]
    second = script.requests[1].url.params
    assert second["cursor"] == "c1" and second["limit"] == "2"
    assert second["account_id"] == str(ACCOUNT)


def test_credentials_and_headers_are_sent() -> None:
    script = Script(httpx.Response(200, json={"status": "ok", "checks": {}}))
    sync, _, _ = _clients(script, api_key="lq_secret")
    assert sync.health().status == "ok"
    request = script.requests[0]
    assert request.headers["X-API-Key"] == "lq_secret"
    assert request.headers["User-Agent"].startswith("ledgerq-client/")
    script.reset(httpx.Response(503, json={"status": "unavailable", "checks": {"redis": "error"}}))
    basic = sync.with_auth(basic=("alice", "correct-horse-battery"))
    assert basic.ready().checks == {"redis": "error"}  # an answer, not an error
    assert script.requests[0].headers["Authorization"].startswith("Basic ")
    assert "X-API-Key" not in script.requests[0].headers
