"""The client's pure parts: amounts, bodies, queries, problems, retry decisions, server-sent
events, decoding, and the sync and async clients offering the same methods."""

from __future__ import annotations

import datetime as dt
import inspect
import pickle
import re
from decimal import Decimal
from uuid import UUID

import httpx
import msgspec
import pytest
from ledgerq_client import (
    AsyncLedgerqClient,
    BatchOperation,
    Conflict,
    LedgerqClient,
    LedgerqError,
    NotFound,
    OperationFailed,
    RateLimited,
    RetryPolicy,
    ServerError,
    Unavailable,
    Unprocessable,
    _calls,
)
from ledgerq_client._core import ROUTES, EventParser, encode_body, events, problem_of, query
from ledgerq_client._util import decimal_of, decimal_text
from ledgerq_client.models import Account, Operation, Page
from ledgerq_client.retry import parse_retry_after

ACCOUNT = UUID("01900000-0000-7000-8000-000000000001")


# ---------------------------------------------------------------- amounts and bodies


def test_amounts_are_exact_decimal_strings() -> None:
    assert decimal_text(Decimal("12.50")) == "12.50"
    assert decimal_text(Decimal("1E+2")) == "100"
    assert decimal_text(7) == "7"
    assert decimal_text(" 0.10 ") == "0.10"
    assert decimal_of("3.000") == Decimal("3.000")
    with pytest.raises(TypeError):
        decimal_text(0.1)
    with pytest.raises(TypeError):
        decimal_text(True)
    with pytest.raises(ValueError):
        decimal_text("ten")
    with pytest.raises(ValueError):
        decimal_text(Decimal("NaN"))


def test_bodies_drop_none_and_write_decimals_as_strings() -> None:
    body = encode_body(
        {"amount": Decimal("1E+1"), "account_id": ACCOUNT, "to_account_id": None, "m": {"a": "b"}}
    )
    assert msgspec.json.decode(body) == {
        "amount": "10",
        "account_id": str(ACCOUNT),
        "m": {"a": "b"},
    }


def test_submit_call_is_keyed_and_fixed() -> None:
    call = _calls.submit("deposit", account_id=ACCOUNT, amount="5.00", wait=40)
    assert call.safe and call.idempotency_key
    assert call.headers["Idempotency-Key"] == call.idempotency_key
    assert call.headers["Prefer"] == "wait=30"  # capped at the API's maximum
    assert call.timeout(httpx.Timeout(5.0)).read == 50.0  # the read waits as long as the server
    assert msgspec.json.decode(call.body or b"") == {
        "type": "deposit",
        "account_id": str(ACCOUNT),
        "amount": "5.00",
    }
    assert _calls.submit("deposit", idempotency_key="k-1").idempotency_key == "k-1"
    with pytest.raises(ValueError):
        _calls.submit("deposit", wait=-1)


def test_which_calls_are_safe_to_retry() -> None:
    assert _calls.get_account(ACCOUNT).safe
    assert _calls.submit_batch([BatchOperation(type="deposit")]).safe
    assert _calls.create_account("a", "checking", "USD", initial_deposit=1).safe
    assert not _calls.create_account("a", "checking", "USD").safe  # a second account
    assert not _calls.register("bob", "x" * 10).safe
    assert not _calls.cancel_operation(ACCOUNT).safe
    assert not _calls.revoke_api_key(ACCOUNT).safe
    assert not _calls.ready().safe


def test_batch_items_keep_their_keys() -> None:
    item = BatchOperation(type="deposit", account_id=ACCOUNT, amount=Decimal("2E+1"))
    again = msgspec.json.decode(_calls.submit_batch([item]).body or b"")
    assert again == {
        "operations": [
            {
                "type": "deposit",
                "idempotency_key": item.idempotency_key,
                "account_id": str(ACCOUNT),
                "amount": "20",
            }
        ]
    }
    assert BatchOperation(type="void").idempotency_key != item.idempotency_key


def test_queries() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert query(("a", None), ("from", when), ("d", dt.date(2026, 1, 2)), ("n", 5)) == (
        ("from", "2026-01-02T03:04:05+00:00"),
        ("d", "2026-01-02"),
        ("n", "5"),
    )
    call = _calls.list_operations(metadata={"order_id": "A-1"}, status="failed")
    assert ("metadata[order_id]", "A-1") in call.params
    assert call.path == "/api/v1/operations"


def test_every_route_is_called_by_a_builder() -> None:
    called = set()
    for name, build in inspect.getmembers(_calls, inspect.isfunction):
        if name.startswith("_") or build.__module__ != _calls.__name__:
            continue
        required = [
            p
            for p in inspect.signature(build).parameters.values()
            if p.default is inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD
        ]
        args = {p.name: _dummy(p.name) for p in required}
        call = build(**args)
        called.add((call.method, call.path))
    # followOperation is a stream: the clients' `follow_operation`, not a builder.
    filled = {(m, _fill(p)) for op, (m, p) in ROUTES.items() if op != "followOperation"}
    assert called == filled


def _dummy(name: str) -> object:
    return {
        "operations": [],
        "scopes": ["accounts:read"],
        "prices": {},
        "year": 2026,
        "month": 1,
        "amount": "1",
    }.get(name, "ID" if name.endswith("_id") else "x")


def _fill(path: str) -> str:
    return re.sub(r"\{[a-z_]+\}", "ID", path)


# ---------------------------------------------------------------- problems


def _answer(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        content=msgspec.json.encode(body),
        headers={"Content-Type": "application/problem+json", **(headers or {})},
    )


def test_problems_become_exceptions_by_status_with_their_code() -> None:
    problem = {
        "type": "https://ledgerq.dev/problems/account_not_found",
        "title": "Not Found",
        "status": 404,
        "detail": "No such account.",
        "code": "account_not_found",
    }
    error = problem_of(_answer(404, problem))
    assert isinstance(error, NotFound) and isinstance(error, LedgerqError)
    assert (error.code, error.status, error.detail) == (
        "account_not_found",
        404,
        "No such account.",
    )
    assert error.problem == problem
    assert str(error) == "404 account_not_found: No such account."
    reused = problem_of(
        _answer(422, {"status": 422, "code": "idempotency_key_reused", "detail": "d", "field": "f"})
    )
    assert isinstance(reused, Unprocessable) and reused.field == "f"
    limited = problem_of(_answer(429, {"code": "rate_limited"}, {"Retry-After": "7"}))
    assert isinstance(limited, RateLimited) and limited.retry_after == 7.0
    assert isinstance(problem_of(_answer(409, {"code": "account_closed"})), Conflict)
    full = problem_of(_answer(503, {"code": "backlog_full"}))
    assert isinstance(full, Unavailable) and isinstance(full, ServerError)
    assert type(problem_of(_answer(415, {"code": "unsupported_media_type"}))) is LedgerqError


def test_an_answer_without_a_problem_still_raises() -> None:
    error = problem_of(httpx.Response(502, text="<html>bad gateway</html>"))
    assert isinstance(error, ServerError)
    assert error.code == "http_502" and "bad gateway" in error.detail


def test_errors_pickle() -> None:
    error = problem_of(_answer(404, {"code": "hold_not_found", "detail": "No such hold."}))
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is NotFound and again.code == "hold_not_found" and again.status == 404
    assert again.response is None


def test_failed_operations_raise_on_request() -> None:
    operation = msgspec.json.decode(
        _operation(status="failed", code="insufficient_funds"), type=Operation
    )
    assert operation.is_final
    with pytest.raises(OperationFailed) as caught:
        operation.raise_if_failed()
    assert caught.value.code == "insufficient_funds" and caught.value.operation is operation
    ok = msgspec.json.decode(_operation(status="succeeded"), type=Operation)
    assert ok.raise_if_failed() is ok


def _operation(status: str, code: str | None = None) -> bytes:
    return msgspec.json.encode(
        {
            "id": str(ACCOUNT),
            "type": "withdrawal",
            "status": status,
            "account_id": str(ACCOUNT),
            "to_account_id": None,
            "amount": "10.00",
            "currency": "USD",
            "asset_id": None,
            "quantity": None,
            "price": None,
            "category": None,
            "description": None,
            "hold_id": None,
            "expires_in": None,
            "reversal_of": None,
            "reversed_amount": "0.00",
            "metadata": {},
            "error": None if code is None else {"code": code, "message": "not enough"},
            "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-01-01T00:00:00Z",
            "applied_at": None,
            "a_field_added_later": True,
        }
    )


def test_money_decodes_as_decimal() -> None:
    operation = msgspec.json.decode(_operation("pending"), type=Operation)
    assert operation.amount == Decimal("10.00") and str(operation.amount) == "10.00"
    page = msgspec.json.decode(b'{"items": [], "next_cursor": null}', type=Page[Account])
    assert page.items == [] and page.next_cursor is None


# ---------------------------------------------------------------- retry decisions


def test_retry_after_is_seconds_or_a_date() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:00:10 GMT", now) == 10.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_backoff_grows_with_jitter_and_is_bounded() -> None:
    policy = RetryPolicy(attempts=10, backoff=0.1, backoff_max=1.0)
    assert policy.backoff_delay(1, lambda: 0.0) == pytest.approx(0.05)
    assert policy.backoff_delay(1, lambda: 1.0) == pytest.approx(0.1)
    assert policy.backoff_delay(3, lambda: 1.0) == pytest.approx(0.4)
    assert policy.backoff_delay(9, lambda: 1.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def test_which_answers_are_retried() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.1)
    one = lambda: 1.0  # noqa: E731
    for status in (429, 500, 502, 503, 504):
        assert policy.after_response(1, status, {}, safe=True, rand=one) == pytest.approx(0.1)
    for status in (200, 202, 400, 401, 403, 404, 409, 422, 501):
        assert policy.after_response(1, status, {}, safe=True) is None
    assert policy.after_response(1, 503, {}, safe=False) is None  # not safe: never
    assert policy.after_response(3, 503, {}, safe=True) is None  # attempts used up
    # Retry-After is honoured, never shortened; too long a one is left to the caller.
    assert policy.after_response(1, 503, {"retry-after": "2"}, safe=True) == 2.0
    assert policy.after_response(1, 429, {"retry-after": "61"}, safe=True) is None


def test_which_errors_are_retried() -> None:
    policy = RetryPolicy(attempts=3, backoff=0.1)
    request = httpx.Request("POST", "http://x/")
    dropped = httpx.RemoteProtocolError("Server disconnected", request=request)
    refused = httpx.ConnectError("refused", request=request)
    assert policy.after_error(1, dropped, safe=True) is not None
    assert policy.after_error(1, dropped, safe=False) is None  # it may have been applied
    assert policy.after_error(1, httpx.ReadTimeout("t", request=request), safe=False) is None
    assert policy.after_error(1, refused, safe=False) is not None  # never sent: always safe
    assert policy.after_error(3, refused, safe=True) is None
    assert policy.after_error(1, ValueError("x"), safe=True) is None


# ---------------------------------------------------------------- server-sent events


def test_server_sent_events() -> None:
    lines = [
        ": keep-alive",
        "",
        "event: operation",
        'data: {"a":',
        "data: 1}",
        "",
        "data: plain",
        "id: 7",
        "",
    ]
    got = list(events(lines))
    assert [(e.event, e.data) for e in got] == [("operation", '{"a":\n1}'), ("message", "plain")]
    assert got[1].id == "7"
    parser = EventParser()
    assert parser.feed("event: x") is None and parser.feed("") is None  # no data: no event


# ---------------------------------------------------------------- one API, two clients


def _public(cls: type) -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(member)
        for name, member in vars(cls).items()
        if not name.startswith("_") and callable(member)
    }


def test_sync_and_async_clients_have_the_same_methods() -> None:
    sync, aio = _public(LedgerqClient), _public(AsyncLedgerqClient)
    assert sync.keys() == aio.keys()
    for name in sync:
        assert list(sync[name].parameters) == list(aio[name].parameters), name
    for name, member in vars(AsyncLedgerqClient).items():
        if not name.startswith("_") and callable(member) and name != "with_auth":
            assert inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member), name
    # Every builder is a method, and every listing has its iterator.
    for name, build in inspect.getmembers(_calls, inspect.isfunction):
        if name.startswith("_") or build.__module__ != _calls.__name__:
            continue
        assert name in sync, name
        if name.startswith("list_") and "cursor" in inspect.signature(build).parameters:
            assert "iter_" + name.removeprefix("list_") in sync, name


def test_one_credential_at_most() -> None:
    with pytest.raises(ValueError):
        LedgerqClient(api_key="k", token="t")
