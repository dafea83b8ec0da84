"""Every route, once: a function per API call that builds its `Call` (method, path, query, body,
headers, how to decode the answer, whether it may be retried).

The clients turn each into a method (`client.py`, `aio.py`), so the sync and the async client
share these signatures and docstrings; a paged listing also becomes an `iter_...` method that
follows `next_cursor`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import httpx
import msgspec

from ledgerq_client._core import (
    Call,
    decoder,
    encode_body,
    no_content,
    path_of,
    query,
    wait_header,
)
from ledgerq_client._util import decimal_text, new_idempotency_key
from ledgerq_client.models import (
    Account,
    AdminAccount,
    ApiKey,
    ApiKeyCreated,
    Asset,
    BatchOperation,
    BatchResult,
    Captado,
    Client,
    CreatedAccount,
    DepositLimits,
    Entry,
    Health,
    Hold,
    Investment,
    Operation,
    Page,
    Portfolio,
    PriceSeries,
    PricesUpserted,
    QueueView,
    Statement,
    SubmittedOperation,
    Token,
    TokenRevocation,
    User,
    Webhook,
    WebhookDelivery,
    WebhookWithSecret,
)

# Ids are UUIDs; their string form is accepted too.
Id = UUID | str
# Amounts: a Decimal, an int or a decimal string (never a float).
Amount = Decimal | int | str


def _replayed(response: httpx.Response) -> bool:
    return str(response.headers.get("idempotent-replayed", "")).lower() == "true"


def _submitted(key: str) -> Any:
    typed = msgspec.json.Decoder(SubmittedOperation)

    def decode(response: httpx.Response) -> SubmittedOperation:
        operation = typed.decode(response.content)
        return msgspec.structs.replace(operation, idempotency_key=key, replayed=_replayed(response))

    return decode


def _keyed(
    route: str,
    /,
    fields: Mapping[str, Any] | None,
    idempotency_key: str | None,
    wait: int | None,
    **ids: Id,
) -> Call[SubmittedOperation]:
    """A submit: its key (a new one if none is given) and body are fixed here, so every retry
    sends the same bytes under the same key."""
    key = new_idempotency_key() if idempotency_key is None else idempotency_key
    method, path = path_of(route, **ids)
    return Call(
        method,
        path,
        _submitted(key),
        body=None if fields is None else encode_body(fields),
        headers={"Idempotency-Key": key, **wait_header(wait)},
        safe=True,
        idempotency_key=key,
        wait=wait,
    )


def _get(
    route: str, /, kind: type[Any], params: tuple[tuple[str, str], ...] = (), **ids: Id
) -> Call[Any]:
    method, path = path_of(route, **ids)
    return Call(method, path, decoder(kind), params=params, safe=True)


def _send(
    route: str,
    /,
    kind: type[Any] | None,
    fields: Mapping[str, Any] | None,
    *,
    safe: bool,
    **ids: Id,
) -> Call[Any]:
    method, path = path_of(route, **ids)
    return Call(
        method,
        path,
        no_content if kind is None else decoder(kind),
        body=None if fields is None else encode_body(fields),
        safe=safe,
    )


# ---------------------------------------------------------------- auth


def register(username: str, password: str) -> Call[User]:
    """Create a user (no credentials needed). Usernames are unique regardless of case (409
    `username_taken`); passwords are 10-256 characters."""
    return _send("register", User, {"username": username, "password": password}, safe=False)


def issue_token() -> Call[Token]:
    """Exchange the client's HTTP Basic credentials for a bearer token (`access_token`, valid
    `expires_in` seconds); use it with `client.with_auth(token=...)`."""
    return _send("issueToken", Token, None, safe=True)


def revoke_token(token: str) -> Call[TokenRevocation]:
    """Revoke a bearer token (log out): every API process refuses it from the answer on.
    `revoked` is False when the token was not valid anyway."""
    return _send("revokeToken", TokenRevocation, {"token": token}, safe=True)


# ---------------------------------------------------------------- API keys


def create_api_key(
    name: str,
    scopes: Sequence[str],
    *,
    user_id: Id | None = None,
    rate_limit: int | None = None,
    expires_at: dt.datetime | None = None,
    expires_in: int | None = None,
) -> Call[ApiKeyCreated]:
    """Create an API key with `scopes` (`accounts:read`, `operations:write`; `admin` only by the
    admin, who may also name another `user_id`). The answer's `secret` is shown only once.
    At most one of `expires_at` (aware datetime) and `expires_in` (seconds)."""
    fields = {
        "name": name,
        "scopes": list(scopes),
        "user_id": user_id,
        "rate_limit": rate_limit,
        "expires_at": expires_at,
        "expires_in": expires_in,
    }
    return _send("createApiKey", ApiKeyCreated, fields, safe=False)


def list_api_keys(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[ApiKey]]:
    """Your unrevoked API keys, oldest first, without secrets (the admin sees everyone's)."""
    return _get("listApiKeys", Page[ApiKey], query(("limit", limit), ("cursor", cursor)))


def revoke_api_key(key_id: Id) -> Call[None]:
    """Revoke an API key: its next request is refused. 404 `api_key_not_found` if it is not
    yours (or already revoked)."""
    return _send("revokeApiKey", None, None, safe=False, key_id=key_id)


# ---------------------------------------------------------------- accounts


def _opened(key: str | None) -> Any:
    typed = msgspec.json.Decoder(CreatedAccount)

    def decode(response: httpx.Response) -> CreatedAccount:
        account = typed.decode(response.content)
        location = response.headers.get("operation-location")
        deposit = UUID(location.rstrip("/").rsplit("/", 1)[-1]) if location else None
        return msgspec.structs.replace(
            account,
            deposit_operation_id=deposit,
            idempotency_key=key if deposit is not None else None,
            replayed=_replayed(response),
        )

    return decode


def create_account(
    name: str,
    type: str,
    currency: str,
    *,
    initial_deposit: Amount | None = None,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Call[CreatedAccount]:
    """Open a `checking` or `savings` account in `currency` (ISO 4217).

    With `initial_deposit` the account and its deposit are stored together or not at all, under
    `idempotency_key` (a new one if none is given; the request is then safe to retry and is
    retried): the answer carries `deposit_operation_id`, `idempotency_key` and `replayed`.
    Without it the request is not retried once it may have reached the API (a retry could open
    a second account)."""
    fields = {
        "name": name,
        "type": type,
        "currency": currency,
        "initial_deposit": None if initial_deposit is None else decimal_text(initial_deposit),
        "metadata": None if metadata is None else dict(metadata),
    }
    method, path = path_of("createAccount")
    if initial_deposit is None:
        return Call(method, path, _opened(None), body=encode_body(fields))
    key = new_idempotency_key() if idempotency_key is None else idempotency_key
    return Call(
        method,
        path,
        _opened(key),
        body=encode_body(fields),
        headers={"Idempotency-Key": key},
        safe=True,
        idempotency_key=key,
    )


def list_accounts(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Account]]:
    """Your accounts, oldest first."""
    return _get("listAccounts", Page[Account], query(("limit", limit), ("cursor", cursor)))


def get_account(account_id: Id, *, as_of: dt.datetime | None = None) -> Call[Account]:
    """One of your accounts with its balances (`balance`, `held_balance`,
    `available_balance`); `as_of` (an aware datetime): the balances as they stood then."""
    return _get("getAccount", Account, query(("as_of", as_of)), account_id=account_id)


def update_account(
    account_id: Id, *, name: str | None = None, metadata: Mapping[str, str] | None = None
) -> Call[Account]:
    """Rename an account and/or replace its metadata whole (`{}` clears it); None leaves a
    field as it is. 409 `account_closed` on a closed account."""
    fields = {"name": name, "metadata": None if metadata is None else dict(metadata)}
    return _send("updateAccount", Account, fields, safe=True, account_id=account_id)


def close_account(
    account_id: Id, *, idempotency_key: str | None = None, wait: int | None = None
) -> Call[SubmittedOperation]:
    """Close an account: a `close` operation (fails `account_not_empty` unless the balance is
    zero and no hold is open). Keyed and retried like `submit`; `wait` as in `submit`."""
    return _keyed("closeAccount", None, idempotency_key, wait, account_id=account_id)


def list_entries(
    account_id: Id,
    *,
    category: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    as_of: dt.datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Entry]]:
    """The account's ledger entries, newest first, each with the balance after it; `since`
    (inclusive) and `until` (exclusive) bound them by date, `as_of` shows the history as it
    stood at that instant (aware datetimes)."""
    params = query(
        ("limit", limit),
        ("cursor", cursor),
        ("category", category),
        ("from", since),
        ("to", until),
        ("as_of", as_of),
    )
    return _get("listEntries", Page[Entry], params, account_id=account_id)


def get_statement(
    account_id: Id, *, since: dt.datetime | None = None, until: dt.datetime | None = None
) -> Call[Statement]:
    """The account's statement for [since, until) (aware datetimes; default: from its opening
    until now): the opening balance, every entry of the period oldest first, the closing
    balance. Read whole into memory: for a long period of a busy account, stream the CSV
    (`stream_statement_csv`)."""
    params = query(("from", since), ("to", until), ("format", "json"))
    return _get("getStatement", Statement, params, account_id=account_id)


def _statement_csv(
    account_id: Id, since: dt.datetime | None, until: dt.datetime | None
) -> Call[None]:
    """The statement as CSV, for the clients' `stream_statement_csv`."""
    method, path = path_of("getStatement", account_id=account_id)
    params = query(("from", since), ("to", until), ("format", "csv"))
    return Call(method, path, no_content, params=params, headers={"Accept": "text/csv"})


# ---------------------------------------------------------------- operations


def submit(
    type: str,
    *,
    account_id: Id | None = None,
    amount: Amount | None = None,
    to_account_id: Id | None = None,
    asset_id: Id | None = None,
    quantity: Amount | None = None,
    hold_id: Id | None = None,
    expires_in: int | None = None,
    operation_id: Id | None = None,
    category: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    wait: int | None = None,
) -> Call[SubmittedOperation]:
    """Submit an operation: `deposit`, `withdrawal`, `transfer` (`to_account_id`), `hold`
    (`to_account_id`: who a capture pays; `expires_in` seconds), `capture` / `void` (`hold_id`),
    `reversal` (`operation_id`), `allocation` / `redemption` (`asset_id`; a redemption by
    `quantity` or `amount`).

    `idempotency_key`: a new one is made when none is given (the answer's `idempotency_key`);
    the submit is retried with the same key and body after a dropped connection, a timeout, a
    5xx or a 429, so it is stored once; a replay's answer (`replayed=True`) is a success.
    `wait=N` (seconds, at most 30) sends `Prefer: wait=N`: the answer comes once the operation
    is final, or after N seconds still pending. A failed operation is an answer, not an
    exception (`status == "failed"`, `error.code`); `.raise_if_failed()` raises it."""
    fields = {
        "type": type,
        "account_id": account_id,
        "amount": None if amount is None else decimal_text(amount),
        "to_account_id": to_account_id,
        "asset_id": asset_id,
        "quantity": None if quantity is None else decimal_text(quantity, "quantity"),
        "hold_id": hold_id,
        "expires_in": expires_in,
        "operation_id": operation_id,
        "category": category,
        "description": description,
        "metadata": None if metadata is None else dict(metadata),
    }
    return _keyed("submitOperation", fields, idempotency_key, wait)


def submit_batch(operations: Sequence[BatchOperation]) -> Call[BatchResult]:
    """Submit up to 1,000 operations in one request, each with its own idempotency key (so the
    batch is retried like a submit). The answer has one result per item, in order: 202
    accepted, 200 replayed, or the item's problem (`error`, with its `code`)."""
    body = msgspec.json.encode({"operations": list(operations)})
    method, path = path_of("submitOperationBatch")
    return Call(method, path, decoder(BatchResult), body=body, safe=True)


def get_operation(operation_id: Id, *, wait: int | None = None) -> Call[Operation]:
    """An operation you submitted. `wait=N` (`Prefer: wait=N`): answer as soon as it is final,
    or after N seconds (at most 30)."""
    method, path = path_of("getOperation", operation_id=operation_id)
    return Call(method, path, decoder(Operation), headers=wait_header(wait), safe=True, wait=wait)


def list_operations(
    *,
    account_id: Id | None = None,
    status: str | None = None,
    metadata: Mapping[str, str] | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Operation]]:
    """Operations you submitted, newest first; filter by account (debited or credited), status
    (`pending`, `succeeded`, `failed`, `cancelled`) and one metadata pair
    (`metadata={"order_id": "A-1042"}` sends `metadata[order_id]=A-1042`)."""
    pairs = [(f"metadata[{k}]", v) for k, v in (metadata or {}).items()]
    params = query(
        ("limit", limit),
        ("cursor", cursor),
        ("account_id", account_id),
        ("status", status),
        *pairs,
    )
    return _get("listOperations", Page[Operation], params)


def _follow_operation(operation_id: Id) -> Call[None]:
    """The operation's server-sent events, for the clients' `follow_operation`."""
    method, path = path_of("followOperation", operation_id=operation_id)
    return Call(method, path, no_content, headers={"Accept": "text/event-stream"})


def cancel_operation(operation_id: Id) -> Call[Operation]:
    """Cancel an operation still pending; 409 `operation_not_pending` once it is final."""
    return _send("cancelOperation", Operation, None, safe=False, operation_id=operation_id)


# ---------------------------------------------------------------- holds


def list_holds(
    *,
    account_id: Id | None = None,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[Hold]]:
    """Holds on your accounts, oldest first; filter by account and status (`open`, `captured`,
    `voided`, `expired`)."""
    params = query(
        ("limit", limit), ("cursor", cursor), ("account_id", account_id), ("status", status)
    )
    return _get("listHolds", Page[Hold], params)


def get_hold(hold_id: Id) -> Call[Hold]:
    """A hold (its id is the hold operation's): amount, captured, released, status, expiry."""
    return _get("getHold", Hold, hold_id=hold_id)


# ---------------------------------------------------------------- investments


def create_asset(ticker: str, name: str, kind: str, currency: str) -> Call[Asset]:
    """Admin: list an asset (`kind`: stock, fund, bond, etf, reit, crypto, other); 409
    `ticker_taken`."""
    fields = {"ticker": ticker, "name": name, "kind": kind, "currency": currency}
    return _send("createAsset", Asset, fields, safe=False)


def list_assets(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Asset]]:
    """Every asset, oldest first."""
    return _get("listAssets", Page[Asset], query(("limit", limit), ("cursor", cursor)))


def get_asset(asset_id: Id) -> Call[Asset]:
    """One asset."""
    return _get("getAsset", Asset, asset_id=asset_id)


def upsert_prices(
    asset_id: Id, prices: Mapping[dt.date, Amount] | Iterable[tuple[dt.date, Amount]]
) -> Call[PricesUpserted]:
    """Admin: insert or replace daily closes (date -> close, up to 8 decimals), all or nothing.
    An upsert, so it is retried like a GET."""
    items = prices.items() if isinstance(prices, Mapping) else prices
    body = {
        "prices": [{"date": day, "close": decimal_text(close, "close")} for day, close in items]
    }
    return _send("upsertPrices", PricesUpserted, body, safe=True, asset_id=asset_id)


def list_prices(
    asset_id: Id, *, since: dt.date | None = None, until: dt.date | None = None
) -> Call[PriceSeries]:
    """An asset's daily closes in [since, until], oldest first."""
    return _get("listPrices", PriceSeries, query(("from", since), ("to", until)), asset_id=asset_id)


def get_portfolio(*, since: dt.date | None = None, until: dt.date | None = None) -> Call[Portfolio]:
    """Your positions at the latest close, with simple and time-weighted returns over
    [since, until]."""
    return _get("getPortfolio", Portfolio, query(("from", since), ("to", until)))


def list_clients(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Client]]:
    """Admin: clients with positions, with invested totals and current values per currency."""
    return _get("listClients", Page[Client], query(("limit", limit), ("cursor", cursor)))


def list_client_allocations(
    client_id: Id, *, limit: int | None = None, cursor: str | None = None
) -> Call[Page[Investment]]:
    """Admin: a client's allocations and redemptions, newest first."""
    params = query(("limit", limit), ("cursor", cursor))
    return _get("listClientAllocations", Page[Investment], params, client_id=client_id)


def get_captado(year: int, month: int) -> Call[Captado]:
    """Admin: the month's net inflow (allocations minus redemptions), total, by asset and by
    client."""
    return _get("getCaptado", Captado, query(("month", month), ("year", year)))


# ---------------------------------------------------------------- webhooks


def create_webhook(
    url: str,
    events: Sequence[str],
    *,
    description: str | None = None,
    all_accounts: bool = False,
) -> Call[WebhookWithSecret]:
    """Register an endpoint for your accounts' events (`operation.succeeded`,
    `operation.failed`, `operation.cancelled`, `hold.created`, `hold.captured`, `hold.voided`,
    `hold.expired`); the admin may ask for `all_accounts`. The answer's `secret` (verify
    deliveries with `verify_signature`) is shown only once, so this is not retried once the
    request may have reached the API."""
    fields = {
        "url": url,
        "events": list(events),
        "description": description,
        "all_accounts": True if all_accounts else None,
    }
    return _send("createWebhook", WebhookWithSecret, fields, safe=False)


def list_webhooks(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[Webhook]]:
    """Your webhook endpoints, oldest first, without secrets (the admin sees every one)."""
    return _get("listWebhooks", Page[Webhook], query(("limit", limit), ("cursor", cursor)))


def get_webhook(webhook_id: Id) -> Call[Webhook]:
    """One endpoint: its events, whether it is enabled (if not, why), since when it fails."""
    return _get("getWebhook", Webhook, webhook_id=webhook_id)


def delete_webhook(webhook_id: Id) -> Call[None]:
    """Delete an endpoint and its deliveries."""
    return _send("deleteWebhook", None, None, safe=False, webhook_id=webhook_id)


def update_webhook(
    webhook_id: Id,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    description: str | None = None,
) -> Call[Webhook]:
    """Change an endpoint's URL (checked again; 422 `webhook_url_not_allowed`), its events (from
    now on) or its description (`""` removes it); None leaves a field as it is. Its secret and
    deliveries stay: pending ones go to the new URL."""
    fields = {
        "url": url,
        "events": None if events is None else list(events),
        "description": description,
    }
    return _send("updateWebhook", Webhook, fields, safe=True, webhook_id=webhook_id)


def rotate_webhook_secret(
    webhook_id: Id, *, previous_secret_valid_for: int | None = None
) -> Call[WebhookWithSecret]:
    """A new signing secret, shown in this answer only; the previous one keeps signing too (a
    second `v1`) for `previous_secret_valid_for` seconds (a day unless given; 0: it stops now).
    Not retried once the request may have reached the API (a second rotation would retire the
    secret of a lost answer)."""
    fields = (
        None
        if previous_secret_valid_for is None
        else {"previous_secret_valid_for": previous_secret_valid_for}
    )
    return _send(
        "rotateWebhookSecret", WebhookWithSecret, fields, safe=False, webhook_id=webhook_id
    )


def disable_webhook(webhook_id: Id) -> Call[Webhook]:
    """Stop sending to an endpoint (its pending deliveries wait until it is enabled)."""
    return _send("disableWebhook", Webhook, None, safe=True, webhook_id=webhook_id)


def enable_webhook(webhook_id: Id) -> Call[Webhook]:
    """Send again (its URL is checked again first; 422 `webhook_url_not_allowed`)."""
    return _send("enableWebhook", Webhook, None, safe=True, webhook_id=webhook_id)


def list_webhook_deliveries(
    webhook_id: Id,
    *,
    status: str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[Page[WebhookDelivery]]:
    """An endpoint's deliveries, newest first (`status`: pending, succeeded, failed), each with
    its attempts."""
    params = query(("limit", limit), ("cursor", cursor), ("status", status))
    return _get("listWebhookDeliveries", Page[WebhookDelivery], params, webhook_id=webhook_id)


def retry_webhook_delivery(webhook_id: Id, delivery_id: Id) -> Call[WebhookDelivery]:
    """Send a delivery again now, with the same event id (409 `webhook_disabled` while the
    endpoint is disabled)."""
    return _send(
        "retryWebhookDelivery",
        WebhookDelivery,
        None,
        safe=True,
        webhook_id=webhook_id,
        delivery_id=delivery_id,
    )


# ---------------------------------------------------------------- administration


def list_users(*, limit: int | None = None, cursor: str | None = None) -> Call[Page[User]]:
    """Admin: every user, oldest first."""
    return _get("listUsers", Page[User], query(("limit", limit), ("cursor", cursor)))


def list_all_accounts(
    *, owner_id: Id | None = None, limit: int | None = None, cursor: str | None = None
) -> Call[Page[AdminAccount]]:
    """Admin: every account (system accounts too, without an owner), or one owner's."""
    params = query(("limit", limit), ("cursor", cursor), ("owner_id", owner_id))
    return _get("listAllAccounts", Page[AdminAccount], params)


def admin_update_account(
    account_id: Id, *, overdraft_limit: Amount | None = None, name: str | None = None
) -> Call[AdminAccount]:
    """Admin: set a customer account's overdraft limit (an amount >= 0 of its currency; 409
    `overdraft_in_use` below what it already uses) and/or its name."""
    fields = {
        "overdraft_limit": None
        if overdraft_limit is None
        else decimal_text(overdraft_limit, "overdraft_limit"),
        "name": name,
    }
    return _send("adminUpdateAccount", AdminAccount, fields, safe=True, account_id=account_id)


def freeze_account(
    account_id: Id, *, idempotency_key: str | None = None, wait: int | None = None
) -> Call[SubmittedOperation]:
    """Admin: freeze a customer account (a `freeze` operation: its debits then fail
    `account_frozen`; credits apply). Keyed and retried like `submit`."""
    return _keyed("freezeAccount", None, idempotency_key, wait, account_id=account_id)


def unfreeze_account(
    account_id: Id, *, idempotency_key: str | None = None, wait: int | None = None
) -> Call[SubmittedOperation]:
    """Admin: unfreeze a customer account (an `unfreeze` operation). Keyed and retried like
    `submit`."""
    return _keyed("unfreezeAccount", None, idempotency_key, wait, account_id=account_id)


def get_queues() -> Call[QueueView]:
    """Admin: each partition's pending count, oldest pending age, completions in the last
    minute and holder."""
    return _get("listQueues", QueueView)


def get_user_deposit_limits(user_id: Id) -> Call[DepositLimits]:
    """Admin: a user's deposit limits and what their rolling day holds, per currency."""
    return _get("getUserDepositLimits", DepositLimits, client_id=user_id)


def set_user_deposit_limits(
    user_id: Id,
    currency: str,
    *,
    per_operation: Amount | None = None,
    daily: Amount | None = None,
) -> Call[DepositLimits]:
    """Admin: set a user's limits in one currency, as amounts of it; None puts a limit back to
    the default."""
    fields = _limits(currency, per_operation, daily)
    return _send("setUserDepositLimits", DepositLimits, fields, safe=True, client_id=user_id)


def get_api_key_deposit_limits(key_id: Id) -> Call[DepositLimits]:
    """Admin: an API key's deposit limits (on top of its user's) and its rolling day."""
    return _get("getApiKeyDepositLimits", DepositLimits, key_id=key_id)


def set_api_key_deposit_limits(
    key_id: Id,
    currency: str,
    *,
    per_operation: Amount | None = None,
    daily: Amount | None = None,
) -> Call[DepositLimits]:
    """Admin: set an API key's limits in one currency; None puts a limit back to the default."""
    fields = _limits(currency, per_operation, daily)
    return _send("setApiKeyDepositLimits", DepositLimits, fields, safe=True, key_id=key_id)


def _limits(currency: str, per_operation: Amount | None, daily: Amount | None) -> dict[str, Any]:
    return {
        "currency": currency,
        "per_operation": None
        if per_operation is None
        else decimal_text(per_operation, "per_operation"),
        "daily": None if daily is None else decimal_text(daily, "daily"),
    }


def admin_deposit(
    account_id: Id,
    amount: Amount,
    *,
    category: str | None = None,
    description: str | None = None,
    idempotency_key: str | None = None,
    wait: int | None = None,
) -> Call[SubmittedOperation]:
    """Admin: deposit into any customer account past every deposit limit. Keyed, retried and
    waited for like `submit`."""
    fields = {
        "account_id": account_id,
        "amount": decimal_text(amount),
        "category": category,
        "description": description,
    }
    return _keyed("adminDeposit", fields, idempotency_key, wait)


def admin_reversal(
    operation_id: Id,
    *,
    amount: Amount | None = None,
    category: str | None = None,
    description: str | None = None,
    metadata: Mapping[str, str] | None = None,
    idempotency_key: str | None = None,
    wait: int | None = None,
) -> Call[SubmittedOperation]:
    """Admin: reverse any customer's succeeded deposit, withdrawal, transfer or capture, all of
    what is left of it or `amount`. Keyed, retried and waited for like `submit`."""
    fields = {
        "operation_id": operation_id,
        "amount": None if amount is None else decimal_text(amount),
        "category": category,
        "description": description,
        "metadata": None if metadata is None else dict(metadata),
    }
    return _keyed("adminReversal", fields, idempotency_key, wait)


# ---------------------------------------------------------------- probes


def health() -> Call[Health]:
    """Liveness: the API process is up."""
    return _get("health", Health)


def ready() -> Call[Health]:
    """Readiness: `status` "ok", or "unavailable" with the failed `checks` (answered 503, not
    raised, and not retried)."""
    method, path = path_of("ready")
    return Call(method, path, decoder(Health), ok=frozenset({503}))
