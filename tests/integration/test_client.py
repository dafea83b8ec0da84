"""The Python client (client/, package `ledgerq_client`) against the live API: no mocks.

The README walkthrough through the sync client, problems raised with their codes, the async
client, the admin and investment routes, the client's route table against the OpenAPI document,
and retries that must not do anything twice: a submit whose connection a proxy drops after the
API answered (the retry, with the same key and body, is a replay: one operation), and a 503 with
Retry-After answered in the API's place.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from uuid import UUID, uuid4

import httpx
import pytest
import sqlalchemy as sa
from ledgerq_client import (
    AsyncLedgerqClient,
    BatchOperation,
    Conflict,
    Forbidden,
    LedgerqClient,
    NotFound,
    OperationFailed,
    RetryPolicy,
    TransportError,
    Unauthorized,
    Unprocessable,
)
from ledgerq_client._core import ROUTES
from ledgerq_client.webhooks import sign, verify_signature
from sqlalchemy import Engine

from tests.integration.support import Process, extra_api

PASSWORD = "correct-horse-battery"


@dataclass
class User:
    client: LedgerqClient  # HTTP Basic
    username: str
    id: UUID


def _register(api_url: str, prefix: str) -> User:
    username = f"{prefix}-{secrets.token_hex(4)}"
    with LedgerqClient(api_url) as anonymous:
        user = anonymous.register(username, PASSWORD)
    assert user.username == username
    return User(LedgerqClient(api_url, basic=(username, PASSWORD)), username, user.id)


@pytest.fixture
def user(api_url: str) -> Iterator[User]:
    u = _register(api_url, "client")
    yield u
    u.client.close()


@pytest.fixture
def admin(api_url: str, service_env: dict[str, str]) -> Iterator[LedgerqClient]:
    with LedgerqClient(api_url, api_key=service_env["LEDGERQ_MASTER_KEY"]) as client:
        yield client


def _operations_with_key(engine: Engine, principal: UUID, key: str) -> int:
    with engine.connect() as conn:
        count = conn.execute(
            sa.text(
                "SELECT count(*) FROM operations WHERE principal_id = :p AND idempotency_key = :k"
            ),
            {"p": principal, "k": key},
        ).scalar_one()
    return int(count)


# ---------------------------------------------------------------- the walkthrough


def test_walkthrough_with_a_token(user: User) -> None:
    token = user.client.issue_token()
    assert token.token_type == "bearer" and token.expires_in > 0
    lq = user.client.with_auth(token=token.access_token)

    account = lq.create_account("main", "checking", "USD", metadata={"team": "ops"})
    assert (account.balance, account.currency, account.metadata) == (
        Decimal("0.00"),
        "USD",
        {"team": "ops"},
    )
    assert account.deposit_operation_id is None and account.idempotency_key is None

    deposit = lq.submit(
        "deposit", account_id=account.id, amount=Decimal("100.00"), category="salary", wait=10
    )
    assert deposit.status == "succeeded" and deposit.amount == Decimal("100.00")
    assert deposit.idempotency_key and not deposit.replayed
    withdrawal = lq.submit("withdrawal", account_id=account.id, amount="25.50", wait=10)
    assert withdrawal.raise_if_failed().status == "succeeded"

    savings = lq.create_account("rainy day", "savings", "USD")
    transfer = lq.submit(
        "transfer", account_id=account.id, to_account_id=savings.id, amount=10, wait=10
    )
    assert transfer.status == "succeeded"

    # A hold of 30.00 captured partly (12.00): the other 18.00 is released in the same step.
    hold = lq.submit(
        "hold",
        account_id=account.id,
        to_account_id=savings.id,
        amount=Decimal("30.00"),
        expires_in=3600,
        wait=10,
    )
    assert hold.status == "succeeded"
    held = lq.get_account(account.id)
    assert (held.balance, held.held_balance, held.available_balance) == (
        Decimal("64.50"),
        Decimal("30.00"),
        Decimal("34.50"),
    )
    open_holds = list(lq.iter_holds(account_id=account.id, status="open"))
    assert [h.id for h in open_holds] == [hold.id]
    capture = lq.submit("capture", hold_id=hold.id, amount=Decimal("12.00"), wait=10)
    assert capture.status == "succeeded"
    settled = lq.get_hold(hold.id)
    assert (settled.status, settled.captured, settled.released) == (
        "captured",
        Decimal("12.00"),
        Decimal("18.00"),
    )
    refund = lq.submit("reversal", operation_id=capture.id, amount=Decimal("2.00"), wait=10)
    assert refund.status == "succeeded" and refund.reversal_of == capture.id

    checking = lq.get_account(account.id)
    assert (checking.balance, checking.held_balance, checking.available_balance) == (
        Decimal("54.50"),
        Decimal("0.00"),
        Decimal("54.50"),
    )
    assert lq.get_account(savings.id).balance == Decimal("20.00")

    # The history through the iterator, two entries a page: newest first, each with the
    # balance after it.
    entries = list(lq.iter_entries(account.id, limit=2))
    assert [e.operation_type for e in entries] == [
        "reversal",
        "capture",
        "transfer",
        "withdrawal",
        "deposit",
    ]
    assert entries[0].balance_after == checking.balance
    assert sum(e.amount for e in entries) == checking.balance
    salary = list(lq.iter_entries(account.id, category="salary"))
    assert [e.operation_id for e in salary] == [deposit.id]
    # As of the moment after the deposit: 100.00.
    then = lq.get_account(account.id, as_of=entries[-1].created_at)
    assert then.balance == Decimal("100.00") and then.as_of is not None

    operations = list(lq.iter_operations(account_id=account.id, limit=3))
    assert {o.id for o in operations} == {
        deposit.id,
        withdrawal.id,
        transfer.id,
        hold.id,
        capture.id,
        refund.id,
    }
    assert [a.id for a in lq.iter_accounts(limit=1)] == [account.id, savings.id]

    renamed = lq.update_account(savings.id, name="holidays", metadata={})
    assert (renamed.name, renamed.metadata) == ("holidays", {})

    # Logging out: the token is refused from then on.
    assert lq.revoke_token(token.access_token).revoked
    with pytest.raises(Unauthorized) as caught:
        lq.get_account(account.id)
    assert caught.value.status == 401


def test_opening_with_a_deposit_is_keyed_and_replayable(user: User) -> None:
    lq = user.client
    opened = lq.create_account("main", "checking", "USD", initial_deposit=Decimal("40.00"))
    assert opened.deposit_operation_id is not None and opened.idempotency_key
    assert not opened.replayed
    deposit = lq.wait_for(opened.deposit_operation_id, timeout=30)
    assert (deposit.status, deposit.amount) == ("succeeded", Decimal("40.00"))
    again = lq.create_account(
        "main",
        "checking",
        "USD",
        initial_deposit=Decimal("40.00"),
        idempotency_key=opened.idempotency_key,
    )
    assert again.replayed and again.id == opened.id
    assert again.deposit_operation_id == opened.deposit_operation_id
    assert len(list(lq.iter_accounts())) == 1


def test_api_keys(user: User, api_url: str) -> None:
    created = user.client.create_api_key("reporting", ["accounts:read"], expires_in=3600)
    assert created.secret.startswith("lq_") and created.scopes == ["accounts:read"]
    assert [k.id for k in user.client.iter_api_keys()] == [created.id]
    account = user.client.create_account("main", "checking", "USD")
    with user.client.with_auth(api_key=created.secret) as reader:
        assert reader.get_account(account.id).id == account.id
        with pytest.raises(Forbidden) as caught:
            reader.submit("deposit", account_id=account.id, amount="1.00")
        assert caught.value.code == "insufficient_scope"
        assert caught.value.problem["required_scope"] == "operations:write"
        user.client.revoke_api_key(created.id)
        with pytest.raises(Unauthorized):
            reader.get_account(account.id)
    with pytest.raises(NotFound) as gone:
        user.client.revoke_api_key(created.id)
    assert gone.value.code == "api_key_not_found"


# ---------------------------------------------------------------- problems


def test_problems_carry_their_codes(user: User) -> None:
    lq = user.client
    account = lq.create_account("main", "checking", "USD")
    lq.submit("deposit", account_id=account.id, amount="5.00", wait=10)

    # Insufficient funds is not a problem answer: the operation is accepted and fails.
    short = lq.submit("withdrawal", account_id=account.id, amount="50.00", wait=10)
    assert short.status == "failed" and short.error is not None
    assert short.error.code == "insufficient_funds"
    with pytest.raises(OperationFailed) as failed:
        short.raise_if_failed()
    assert failed.value.code == "insufficient_funds" and failed.value.operation.id == short.id

    with pytest.raises(NotFound) as missing:
        lq.get_account(uuid4())
    assert (missing.value.code, missing.value.status) == ("account_not_found", 404)
    assert missing.value.problem["detail"] == missing.value.detail

    # The same key: the same body is a replay, another body is refused.
    key = f"client-{secrets.token_hex(6)}"
    first = lq.submit("deposit", account_id=account.id, amount="1.00", idempotency_key=key)
    replay = lq.submit("deposit", account_id=account.id, amount="1.0", idempotency_key=key)
    assert replay.replayed and replay.id == first.id and not first.replayed
    with pytest.raises(Unprocessable) as reused:
        lq.submit("deposit", account_id=account.id, amount="2.00", idempotency_key=key)
    assert (reused.value.code, reused.value.status) == ("idempotency_key_reused", 422)
    assert reused.value.response is not None
    assert reused.value.response.headers["Location"].endswith(str(first.id))

    with pytest.raises(Unprocessable) as invalid:
        lq.submit("deposit", account_id=account.id, amount="0.001")
    assert invalid.value.code == "invalid_amount"

    done = lq.wait_for(first.id, timeout=30)
    with pytest.raises(Conflict) as final:
        lq.cancel_operation(done.id)
    assert final.value.code == "operation_not_pending"


def test_batches_and_the_metadata_filter(user: User) -> None:
    lq = user.client
    account = lq.create_account("main", "checking", "USD")
    order = f"A-{secrets.token_hex(3)}"
    items = [
        BatchOperation(type="deposit", account_id=account.id, amount=Decimal("10.00")),
        BatchOperation(
            type="withdrawal",
            account_id=account.id,
            amount=Decimal("3.00"),
            metadata={"order_id": order},
        ),
        BatchOperation(type="deposit", account_id=account.id, amount=Decimal("0.001")),
    ]
    result = lq.submit_batch(items)
    assert (result.accepted, result.replayed, result.rejected) == (2, 0, 1)
    refused = result.results[2].error
    assert refused is not None and refused.code == "invalid_amount"
    again = lq.submit_batch(items[:2])
    assert (again.accepted, again.replayed) == (0, 2)
    ops = [r.operation for r in result.results[:2]]
    assert all(op is not None for op in ops)
    for op in ops:
        assert op is not None and lq.wait_for(op.id, timeout=30).is_final
    tagged = lq.list_operations(metadata={"order_id": order})
    assert [o.metadata for o in tagged.items] == [{"order_id": order}]
    assert tagged.next_cursor is None
    assert lq.get_account(account.id).balance == Decimal("7.00")


def test_statements(user: User) -> None:
    lq = user.client
    account = lq.create_account("main", "checking", "USD")
    first = lq.submit("deposit", account_id=account.id, amount="30.00", wait=10)
    middle = lq.get_account(account.id).updated_at
    lq.submit("withdrawal", account_id=account.id, amount="4.50", category="=cmd", wait=10)
    entries = list(lq.iter_entries(account.id))
    since = entries[-1].created_at + dt.timedelta(microseconds=1)  # after the deposit
    statement = lq.get_statement(account.id, since=since)
    assert (statement.account_id, statement.currency) == (account.id, "USD")
    assert (statement.opening_balance, statement.closing_balance) == (
        Decimal("30.00"),
        Decimal("25.50"),
    )
    assert [e.amount for e in statement.entries] == [Decimal("-4.50")]
    assert statement.from_ == since
    whole = lq.get_statement(account.id)
    assert whole.entries[0].operation_id == first.id and len(whole.entries) == 2
    assert whole.opening_balance == Decimal("0.00") and middle <= whole.to

    csv = b"".join(lq.stream_statement_csv(account.id)).decode()
    rows = csv.split("\r\n")
    assert rows[0].startswith("row_type,time,entry_id")
    assert rows[1].startswith("opening_balance,") and rows[-2].startswith("closing_balance,")
    assert [r.split(",")[0] for r in rows[2:-2]] == ["entry", "entry"]
    assert "'=cmd" in csv  # the spreadsheet formula guard
    with pytest.raises(NotFound) as missing:
        b"".join(lq.stream_statement_csv(uuid4()))
    assert missing.value.code == "account_not_found"
    with pytest.raises(Unprocessable) as backwards:
        lq.get_statement(account.id, since=whole.to, until=since)
    assert backwards.value.code == "validation_error"


async def test_the_async_client_streams_a_statement(api_url: str, user: User) -> None:
    account = user.client.create_account("main", "checking", "USD")
    user.client.submit("deposit", account_id=account.id, amount="1.00", wait=10)
    async with AsyncLedgerqClient(api_url, basic=(user.username, PASSWORD)) as lq:
        statement = await lq.get_statement(account.id)
        csv = b"".join([chunk async for chunk in lq.stream_statement_csv(account.id)])
    assert statement.closing_balance == Decimal("1.00") and len(statement.entries) == 1
    assert csv.decode().count("\r\nentry,") == 1


def test_following_an_operation_as_events(user: User) -> None:
    lq = user.client
    account = lq.create_account("main", "checking", "USD")
    deposit = lq.submit("deposit", account_id=account.id, amount="3.00")
    states = [o.status for o in lq.follow_operation(deposit.id)]
    assert states[-1] == "succeeded" and set(states) <= {"pending", "succeeded"}
    with pytest.raises(NotFound):
        list(lq.follow_operation(uuid4()))


# ---------------------------------------------------------------- the async client


async def test_the_async_client(api_url: str) -> None:
    username = f"aclient-{secrets.token_hex(4)}"
    async with AsyncLedgerqClient(api_url) as anonymous:
        await anonymous.register(username, PASSWORD)
        lq = anonymous.with_auth(basic=(username, PASSWORD))
        token = await lq.issue_token()
        lq = anonymous.with_auth(token=token.access_token)
        account = await lq.create_account("main", "checking", "EUR")
        other = await lq.create_account("other", "savings", "EUR")
        deposit = await lq.submit("deposit", account_id=account.id, amount="20.00", wait=10)
        assert deposit.status == "succeeded"
        hold = await lq.submit(
            "hold", account_id=account.id, to_account_id=other.id, amount="8.00", wait=10
        )
        capture = await lq.submit("capture", hold_id=hold.id, amount="5.00")
        states = [o.status async for o in lq.follow_operation(capture.id)]
        assert states[-1] == "succeeded"
        settled = await lq.get_hold(hold.id)
        assert (settled.captured, settled.released) == (Decimal("5.00"), Decimal("3.00"))
        entries = [e async for e in lq.iter_entries(account.id, limit=1)]
        assert [e.amount for e in entries] == [Decimal("-5.00"), Decimal("20.00")]
        assert [o.id async for o in lq.iter_operations(account_id=account.id, limit=1)] == [
            capture.id,
            hold.id,
            deposit.id,
        ]
        balances = await asyncio.gather(lq.get_account(account.id), lq.get_account(other.id))
        assert [b.balance for b in balances] == [Decimal("15.00"), Decimal("5.00")]
        with pytest.raises(NotFound) as missing:
            await lq.get_hold(uuid4())
        assert missing.value.code == "hold_not_found"
        short = await lq.submit("withdrawal", account_id=other.id, amount="6.00", wait=10)
        assert short.error is not None and short.error.code == "insufficient_funds"


# ---------------------------------------------------------------- the admin, investments


def test_admin_routes(admin: LedgerqClient, user: User) -> None:
    account = user.client.create_account("main", "checking", "USD")
    assert user.id in {u.id for u in admin.iter_users(limit=50)}
    [mine] = list(admin.iter_all_accounts(owner_id=user.id))
    assert mine.id == account.id and mine.owner_id == user.id

    wire = admin.admin_deposit(account.id, Decimal("250.00"), description="wire", wait=10)
    assert wire.status == "succeeded"
    assert admin.admin_deposit(
        account.id, Decimal("250.00"), description="wire", idempotency_key=wire.idempotency_key
    ).replayed

    frozen = admin.freeze_account(account.id, wait=10)
    assert frozen.status == "succeeded" and user.client.get_account(account.id).frozen
    blocked = user.client.submit("withdrawal", account_id=account.id, amount="1.00", wait=10)
    assert blocked.error is not None and blocked.error.code == "account_frozen"
    assert admin.unfreeze_account(account.id, wait=10).status == "succeeded"

    updated = admin.admin_update_account(account.id, overdraft_limit=Decimal("50.00"))
    assert updated.overdraft_limit == Decimal("50.00")
    refund = admin.admin_reversal(wire.id, amount=Decimal("50.00"), wait=10)
    assert refund.status == "succeeded"
    assert user.client.get_account(account.id).balance == Decimal("200.00")

    limits = admin.set_user_deposit_limits(
        user.id, "USD", per_operation=Decimal("5000.00"), daily="20000.00"
    )
    [usd] = [item for item in limits.items if item.currency == "USD"]
    assert (usd.per_operation_set, usd.daily_set) == (Decimal("5000.00"), Decimal("20000.00"))
    assert admin.get_user_deposit_limits(user.id).subject_id == user.id
    with pytest.raises(Unprocessable) as over:
        user.client.submit("deposit", account_id=account.id, amount="5000.01")
    assert over.value.code == "deposit_limit_exceeded"
    assert over.value.problem["limit"] == "per_operation"

    key = user.client.create_api_key("payouts", ["operations:write"])
    admin.set_api_key_deposit_limits(key.id, "USD", daily=Decimal("100.00"))
    [keyed] = admin.get_api_key_deposit_limits(key.id).items
    assert keyed.daily == Decimal("100.00")

    queues = admin.get_queues()
    assert len(queues.partitions) == 8 and all(p.pending >= 0 for p in queues.partitions)

    with pytest.raises(Forbidden) as caught:
        user.client.get_queues()
    assert caught.value.code == "insufficient_scope"


def test_investment_routes(admin: LedgerqClient, user: User) -> None:
    ticker = f"T{secrets.token_hex(3).upper()}"
    asset = admin.create_asset(ticker, "Test ETF", "etf", "USD")
    assert admin.get_asset(asset.id).ticker == ticker
    today = dt.datetime.now(dt.UTC).date()
    closes = {today - dt.timedelta(days=1): Decimal("9.50"), today: Decimal("10.00")}
    assert admin.upsert_prices(asset.id, closes).upserted == 2
    series = user.client.list_prices(asset.id, since=today - dt.timedelta(days=7))
    assert [(p.date, p.close) for p in series.items] == sorted(closes.items())
    assert asset.id in {a.id for a in user.client.iter_assets()}

    account = user.client.create_account("invest", "checking", "USD")
    user.client.submit("deposit", account_id=account.id, amount="100.00", wait=10)
    allocation = user.client.submit(
        "allocation", account_id=account.id, asset_id=asset.id, amount="50.00", wait=10
    )
    assert allocation.raise_if_failed().quantity == Decimal("5")
    portfolio = user.client.get_portfolio(since=today - dt.timedelta(days=1))
    [position] = portfolio.positions
    assert (position.units, position.invested) == (Decimal("5"), Decimal("50.00"))

    assert user.id in {c.id for c in admin.iter_clients()}
    [trade] = list(admin.iter_client_allocations(user.id))
    assert trade.id == allocation.id
    captado = admin.get_captado(today.year, today.month)
    assert any(c.client_id == user.id for c in captado.by_client)


def test_probes(api_url: str) -> None:
    with LedgerqClient(api_url) as lq:
        assert lq.health().status == "ok"
        ready = lq.ready()
        assert ready.status == "ok" and ready.checks["postgres"] == "ok"


# ---------------------------------------------------------------- webhooks


@pytest.fixture(scope="module")
def webhook_api(
    service_env: dict[str, str], logs_dir: Path, worker: Process, beat: Process
) -> Iterator[str]:
    """An API process of its own that accepts private endpoint URLs (127.0.0.1)."""
    with extra_api(
        "client-webhook-api", service_env, logs_dir, LEDGERQ_WEBHOOKS_ALLOW_PRIVATE="true"
    ) as url:
        yield url


def test_webhook_routes(webhook_api: str, api_url: str) -> None:
    user = _register(webhook_api, "client-wh")
    lq = user.client
    created = lq.create_webhook(
        "http://127.0.0.1:9/hook",
        ["operation.succeeded", "operation.failed"],
        description="ledger sync",
    )
    assert created.secret.startswith("whsec_") and created.owner_id == user.id
    assert (created.events, created.enabled) == (["operation.succeeded", "operation.failed"], True)
    assert [w.id for w in lq.iter_webhooks()] == [created.id]
    assert lq.get_webhook(created.id).description == "ledger sync"
    changed = lq.update_webhook(created.id, events=["operation.failed"], description="")
    assert (changed.events, changed.description, changed.url) == (
        ["operation.failed"],
        None,
        "http://127.0.0.1:9/hook",
    )
    lq.update_webhook(created.id, events=["operation.succeeded", "operation.failed"])

    rotated = lq.rotate_webhook_secret(created.id, previous_secret_valid_for=600)
    assert rotated.secret != created.secret and rotated.previous_secret_expires_at is not None

    account = lq.create_account("main", "checking", "USD")
    deposit = lq.submit("deposit", account_id=account.id, amount="5.00", wait=10)
    assert deposit.status == "succeeded"
    [delivery] = list(lq.iter_webhook_deliveries(created.id))
    assert (delivery.event_type, delivery.operation_id) == ("operation.succeeded", deposit.id)
    assert lq.retry_webhook_delivery(created.id, delivery.id).id == delivery.id

    disabled = lq.disable_webhook(created.id)
    assert not disabled.enabled and disabled.disabled_reason
    with pytest.raises(Conflict) as off:
        lq.retry_webhook_delivery(created.id, delivery.id)
    assert off.value.code == "webhook_disabled"
    assert lq.enable_webhook(created.id).enabled

    lq.delete_webhook(created.id)
    with pytest.raises(NotFound) as gone:
        lq.get_webhook(created.id)
    assert gone.value.code == "webhook_not_found"
    lq.close()

    # The suite's own API refuses private URLs.
    with (
        LedgerqClient(api_url, basic=(user.username, PASSWORD)) as strict,
        pytest.raises(Unprocessable) as refused,
    ):
        strict.create_webhook("http://127.0.0.1:9/hook", ["operation.succeeded"])
    assert (refused.value.code, refused.value.field) == ("webhook_url_not_allowed", "url")


def test_signatures_agree_with_the_api() -> None:
    """The client verifies what the API signs (domain/webhooks.py), during a rotation too, and
    signs what the API's own check accepts."""
    from domain import webhooks

    body = b'{"type":"operation.succeeded","data":{"amount":"5.00"}}'
    new, old = webhooks.new_secret(), webhooks.new_secret()
    now = int(time.time())
    header = webhooks.signature_header([new, old], now, body)
    verify_signature(body, header, [new])
    verify_signature(body, header, [old])
    assert webhooks.verify_signature(sign(body, [new], now), body, new)
    assert sign(body, [new, old], now) == header


# ---------------------------------------------------------------- every route


def test_the_client_calls_every_route_of_the_openapi_document(api_url: str) -> None:
    document = httpx.get(f"{api_url}/docs/openapi.json", timeout=30).json()
    served = {
        operation["operationId"]: (method.upper(), path)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if isinstance(operation, dict) and "operationId" in operation
    }
    # The client's routes are the API's, method and path.
    assert {name: served.get(name) for name in ROUTES} == ROUTES
    missing = set(served) - set(ROUTES)
    assert not missing, (
        f"routes the Python client lacks: {sorted(missing)}; add each to ROUTES "
        "(client/src/ledgerq_client/_core.py), a builder in _calls.py and both clients"
    )


# ---------------------------------------------------------------- retries that do nothing twice


@dataclass
class Proxy:
    """A TCP proxy to the API, on a thread of its own (its own event loop, so the sync client
    can use it too). Requests are forwarded one at a time; the first `drop` requests whose
    request line starts with `match` are forwarded and then, once the API has answered,
    their connection is closed without the answer; the first `unavailable` are answered 503
    with `Retry-After: 1` in the API's place, without being forwarded."""

    upstream_port: int
    match: bytes = b"POST /api/v1/operations "
    drop: int = 0
    unavailable: int = 0
    seen: list[bytes] = field(default_factory=list)  # every matching request, head and body
    answered_at: list[float] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        assert self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _shutdown(self) -> None:
        """Stop listening and end the connections still open (their tasks run to their end)."""
        self._server.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await _read_message(reader, response=False)
                if request is None:
                    return
                if request.startswith(self.match):
                    self.seen.append(request)
                    if self.unavailable > 0:
                        self.unavailable -= 1
                        body = b'{"status":503,"code":"backlog_full","detail":"proxy"}'
                        writer.write(
                            b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\n"
                            b"Content-Type: application/problem+json\r\n"
                            + f"Content-Length: {len(body)}\r\n\r\n".encode()
                            + body
                        )
                        await writer.drain()
                        self.answered_at.append(time.monotonic())
                        continue
                if upstream is None:
                    upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                upstream[1].write(request)
                await upstream[1].drain()
                answer = await _read_message(upstream[0], response=True)
                if answer is None:
                    return
                if request.startswith(self.match) and self.drop > 0:
                    self.drop -= 1
                    return  # the API has answered; the client never hears it
                writer.write(answer)
                await writer.drain()
                self.answered_at.append(time.monotonic())
        finally:
            writer.close()
            if upstream is not None:
                upstream[1].close()


async def _read_message(reader: asyncio.StreamReader, *, response: bool) -> bytes | None:
    """One HTTP/1.1 message, head and body (Content-Length or chunked); None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (
            line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:] if line
        )
    }
    if "content-length" in headers:
        return head + await reader.readexactly(int(headers["content-length"]))
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while not body.endswith(b"0\r\n\r\n"):
            body += await reader.readuntil(b"\r\n")
        return head + body
    if response and not head.startswith((b"HTTP/1.1 204", b"HTTP/1.1 304")):
        return head + await reader.read()
    return head


def _key_of(request: bytes) -> str:
    head = request.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    [key] = [
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("idempotency-key:")
    ]
    return key


def _body_of(request: bytes) -> bytes:
    return request.split(b"\r\n\r\n", 1)[1]


def test_a_dropped_connection_is_retried_without_a_second_operation(
    api_url: str, user: User, engine: Engine
) -> None:
    account = user.client.create_account("main", "checking", "USD")
    port = httpx.URL(api_url).port
    assert port is not None
    with (
        Proxy(port, drop=1) as proxy,
        LedgerqClient(
            f"http://127.0.0.1:{proxy.port}",
            basic=(user.username, PASSWORD),
            retry=RetryPolicy(attempts=3, backoff=0.05),
        ) as lq,
    ):
        deposit = lq.submit("deposit", account_id=account.id, amount=Decimal("42.00"), wait=10)
    # Sent twice, with the same key and body; the second answer is the replay of the first.
    assert len(proxy.seen) == 2
    assert _key_of(proxy.seen[0]) == _key_of(proxy.seen[1]) == deposit.idempotency_key
    assert _body_of(proxy.seen[0]) == _body_of(proxy.seen[1])
    assert deposit.replayed and deposit.status == "succeeded"
    [only] = user.client.list_operations(account_id=account.id).items
    assert only.id == deposit.id
    assert deposit.idempotency_key is not None
    assert _operations_with_key(engine, user.id, deposit.idempotency_key) == 1
    assert user.client.get_account(account.id).balance == Decimal("42.00")


def test_without_retries_the_drop_is_raised_with_the_key_to_retry(
    api_url: str, user: User, engine: Engine
) -> None:
    account = user.client.create_account("main", "checking", "USD")
    port = httpx.URL(api_url).port
    assert port is not None
    with (
        Proxy(port, drop=1) as proxy,
        LedgerqClient(
            f"http://127.0.0.1:{proxy.port}",
            basic=(user.username, PASSWORD),
            retry=RetryPolicy(attempts=1),
        ) as lq,
    ):
        with pytest.raises(TransportError) as caught:
            lq.submit("deposit", account_id=account.id, amount="7.00")
        key = caught.value.idempotency_key
        assert key is not None and len(proxy.seen) == 1
        # The caller retries later with the same key: the stored operation, once.
        retried = lq.submit("deposit", account_id=account.id, amount="7.00", idempotency_key=key)
    assert retried.replayed
    assert _operations_with_key(engine, user.id, key) == 1


async def test_the_async_client_retries_a_dropped_connection_once(
    api_url: str, user: User, engine: Engine
) -> None:
    account = user.client.create_account("main", "checking", "USD")
    port = httpx.URL(api_url).port
    assert port is not None
    with Proxy(port, drop=1) as proxy:
        async with AsyncLedgerqClient(
            f"http://127.0.0.1:{proxy.port}",
            basic=(user.username, PASSWORD),
            retry=RetryPolicy(attempts=3, backoff=0.05),
        ) as lq:
            deposit = await lq.submit("deposit", account_id=account.id, amount="9.00", wait=10)
    assert deposit.replayed and len(proxy.seen) == 2
    assert deposit.idempotency_key is not None
    assert _operations_with_key(engine, user.id, deposit.idempotency_key) == 1
    assert [o.id for o in user.client.iter_operations(account_id=account.id)] == [deposit.id]


def test_a_503_is_retried_after_its_retry_after(api_url: str, user: User, engine: Engine) -> None:
    account = user.client.create_account("main", "checking", "USD")
    port = httpx.URL(api_url).port
    assert port is not None
    with (
        Proxy(port, unavailable=1) as proxy,
        LedgerqClient(
            f"http://127.0.0.1:{proxy.port}",
            basic=(user.username, PASSWORD),
            retry=RetryPolicy(attempts=3, backoff=0.01),
        ) as lq,
    ):
        deposit = lq.submit("deposit", account_id=account.id, amount="3.00")
    assert len(proxy.seen) == 2 and not deposit.replayed  # the 503 stored nothing
    waited = proxy.answered_at[1] - proxy.answered_at[0]
    assert waited >= 1.0, waited
    assert deposit.idempotency_key is not None
    assert _operations_with_key(engine, user.id, deposit.idempotency_key) == 1


def test_an_unkeyed_create_is_not_retried_after_a_drop(api_url: str, user: User) -> None:
    port = httpx.URL(api_url).port
    assert port is not None
    with (
        Proxy(port, match=b"POST /api/v1/accounts ", drop=1) as proxy,
        LedgerqClient(f"http://127.0.0.1:{proxy.port}", basic=(user.username, PASSWORD)) as lq,
        pytest.raises(TransportError),
    ):
        lq.create_account("main", "checking", "USD")
    assert len(proxy.seen) == 1  # one account, not two
    assert len(list(user.client.iter_accounts())) == 1
