"""What the API answers, as typed objects (msgspec Structs).

The client's own definitions of the v1 contract (it never imports the server's packages). Money,
quantities, prices and returns are `decimal.Decimal` (the API sends them as decimal strings);
ids are `uuid.UUID`; instants are aware `datetime`s. Fields the server adds later are ignored,
so an older client keeps working against a newer server.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Generic, TypeVar
from uuid import UUID

import msgspec
from msgspec import Struct

from ledgerq_client._util import decimal_of, new_idempotency_key
from ledgerq_client.errors import OperationFailed

__all__ = [
    "TERMINAL_STATUSES",
    "Account",
    "AdminAccount",
    "ApiKey",
    "ApiKeyCreated",
    "Asset",
    "BatchItemResult",
    "BatchOperation",
    "BatchResult",
    "Captado",
    "CaptadoAsset",
    "CaptadoClient",
    "Client",
    "CreatedAccount",
    "CurrencyAmount",
    "CurrencyTotals",
    "DepositLimit",
    "DepositLimits",
    "Entry",
    "Health",
    "Hold",
    "Investment",
    "Operation",
    "OperationError",
    "Page",
    "PartitionQueue",
    "Portfolio",
    "PortfolioTotal",
    "Position",
    "Price",
    "PriceSeries",
    "PricesUpserted",
    "Problem",
    "QueueView",
    "Statement",
    "SubmittedOperation",
    "Token",
    "TokenRevocation",
    "User",
    "Webhook",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookWithSecret",
]

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class Model(Struct, kw_only=True):
    """Every response body: keyword-only, unknown fields ignored."""


class Page(Model, Generic[T], kw_only=True):
    """One page of a cursor-paged list; `next_cursor` is None on the last page."""

    items: list[T]
    next_cursor: str | None


# ---------------------------------------------------------------- users, tokens, keys


class User(Model, kw_only=True):
    id: UUID
    username: str
    created_at: dt.datetime


class Token(Model, kw_only=True):
    access_token: str
    token_type: str
    expires_in: int


class TokenRevocation(Model, kw_only=True):
    revoked: bool
    confirmed: bool


class ApiKey(Model, kw_only=True):
    id: UUID
    user_id: UUID
    name: str
    prefix: str
    scopes: list[str]
    rate_limit: int | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: dt.datetime | None
    expired: bool


class ApiKeyCreated(ApiKey, kw_only=True):
    """A new key: `secret` (send it as X-API-Key) is in this answer only."""

    secret: str


# ---------------------------------------------------------------- accounts and entries


class Account(Model, kw_only=True):
    id: UUID
    name: str
    type: str
    currency: str
    balance: Decimal
    held_balance: Decimal
    available_balance: Decimal
    overdraft_limit: Decimal
    frozen: bool
    closed_at: dt.datetime | None
    metadata: dict[str, str]
    as_of: dt.datetime | None = None
    created_at: dt.datetime
    updated_at: dt.datetime


class CreatedAccount(Account, kw_only=True):
    """`create_account`'s answer: the account, and with `initial_deposit` its deposit.

    `deposit_operation_id` comes from the answer's `Operation-Location`, `idempotency_key` is the
    key the deposit was sent with, `replayed` says the answer was a replay (Idempotent-Replayed);
    none of them is part of the account's JSON."""

    deposit_operation_id: UUID | None = None
    idempotency_key: str | None = None
    replayed: bool = False


class AdminAccount(Account, kw_only=True):
    owner_id: UUID | None


class Entry(Model, kw_only=True):
    id: str
    operation_id: UUID
    operation_type: str
    amount: Decimal
    balance_after: Decimal
    currency: str
    category: str | None
    description: str | None
    created_at: dt.datetime


class Statement(Model, kw_only=True):
    """An account's statement for a period: the balance at `from_` (the JSON's `from`), every
    entry dated in [from_, to) oldest first, and the balance at `to`."""

    account_id: UUID
    currency: str
    from_: dt.datetime = msgspec.field(name="from")
    to: dt.datetime
    opening_balance: Decimal
    closing_balance: Decimal
    entries: list[Entry]


# ---------------------------------------------------------------- operations and holds


class OperationError(Model, kw_only=True):
    code: str
    message: str | None


class Operation(Model, kw_only=True):
    id: UUID
    type: str
    status: str
    account_id: UUID
    to_account_id: UUID | None
    amount: Decimal | None
    currency: str
    asset_id: UUID | None
    quantity: Decimal | None
    price: Decimal | None
    category: str | None
    description: str | None
    hold_id: UUID | None
    expires_in: int | None
    reversal_of: UUID | None
    reversed_amount: Decimal
    metadata: dict[str, str]
    error: OperationError | None
    created_at: dt.datetime
    updated_at: dt.datetime
    applied_at: dt.datetime | None

    @property
    def is_final(self) -> bool:
        """Succeeded, failed or cancelled: it will not change any more."""
        return self.status in TERMINAL_STATUSES

    def raise_if_failed(self) -> Operation:
        """Raise `OperationFailed` (carrying `error.code`, e.g. `insufficient_funds`) if the
        operation failed or was cancelled; return it otherwise, for chaining."""
        if self.status in ("failed", "cancelled"):
            raise OperationFailed(self)
        return self


class SubmittedOperation(Operation, kw_only=True):
    """A submit's answer: the operation, the `idempotency_key` it was sent with (generated when
    the caller gave none: keep it to retry later) and whether the answer was a replay of an
    earlier submit with that key (`Idempotent-Replayed: true`)."""

    idempotency_key: str | None = None
    replayed: bool = False


class Hold(Model, kw_only=True):
    id: UUID
    account_id: UUID
    to_account_id: UUID | None
    currency: str
    amount: Decimal
    captured: Decimal
    released: Decimal
    status: str
    expires_at: dt.datetime
    created_at: dt.datetime
    closed_at: dt.datetime | None
    closed_by: UUID | None


class Problem(Model, kw_only=True):
    """RFC 9457 problem details, as a refused batch item carries them."""

    type: str = "about:blank"
    title: str = ""
    status: int
    detail: str = ""
    code: str
    field: str | None = None


class BatchOperation(Struct, kw_only=True, omit_defaults=True):
    """One item of `submit_batch`: an operation body with its own idempotency key (a new one is
    made when none is given, once, so a retried batch sends the same keys)."""

    type: str
    idempotency_key: str = msgspec.field(default_factory=new_idempotency_key)
    account_id: UUID | None = None
    amount: Decimal | None = None
    to_account_id: UUID | None = None
    asset_id: UUID | None = None
    quantity: Decimal | None = None
    hold_id: UUID | None = None
    expires_in: int | None = None
    operation_id: UUID | None = None
    category: str | None = None
    description: str | None = None
    metadata: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if self.amount is not None:
            self.amount = decimal_of(self.amount, "amount")
        if self.quantity is not None:
            self.quantity = decimal_of(self.quantity, "quantity")


class BatchItemResult(Model, kw_only=True):
    index: int
    status: int
    replayed: bool = False
    operation: Operation | None = None
    error: Problem | None = None


class BatchResult(Model, kw_only=True):
    accepted: int
    replayed: int
    rejected: int
    results: list[BatchItemResult]


# ---------------------------------------------------------------- probes


class Health(Model, kw_only=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------- investments


class Asset(Model, kw_only=True):
    id: UUID
    ticker: str
    name: str
    kind: str
    currency: str
    created_at: dt.datetime


class PricesUpserted(Model, kw_only=True):
    asset_id: UUID
    upserted: int


class Price(Model, kw_only=True):
    date: dt.date
    close: Decimal


class PriceSeries(Model, kw_only=True):
    asset_id: UUID
    items: list[Price]


class Position(Model, kw_only=True):
    account_id: UUID
    asset_id: UUID
    ticker: str
    name: str
    currency: str
    units: Decimal
    invested: Decimal
    close: Decimal | None
    market_value: Decimal | None
    simple_return: Decimal | None
    time_weighted_return: Decimal | None


class PortfolioTotal(Model, kw_only=True):
    currency: str
    invested: Decimal
    market_value: Decimal
    simple_return: Decimal | None
    time_weighted_return: Decimal | None


class Portfolio(Model, kw_only=True):
    since: dt.date
    until: dt.date
    positions: list[Position]
    totals: list[PortfolioTotal]


class CurrencyTotals(Model, kw_only=True):
    currency: str
    invested: Decimal
    market_value: Decimal


class Client(Model, kw_only=True):
    id: UUID
    username: str
    totals: list[CurrencyTotals]


class Investment(Model, kw_only=True):
    id: UUID
    type: str
    status: str
    account_id: UUID
    asset_id: UUID | None
    amount: Decimal | None
    quantity: Decimal | None
    price: Decimal | None
    currency: str
    created_at: dt.datetime
    applied_at: dt.datetime | None


class CurrencyAmount(Model, kw_only=True):
    currency: str
    amount: Decimal


class CaptadoAsset(Model, kw_only=True):
    asset_id: UUID
    ticker: str
    currency: str
    amount: Decimal


class CaptadoClient(Model, kw_only=True):
    client_id: UUID
    username: str
    currency: str
    amount: Decimal


class Captado(Model, kw_only=True):
    year: int
    month: int
    operations: int
    totals: list[CurrencyAmount]
    by_asset: list[CaptadoAsset]
    by_client: list[CaptadoClient]


# ---------------------------------------------------------------- webhooks


class Webhook(Model, kw_only=True):
    """A webhook endpoint (without its secret)."""

    id: UUID
    url: str
    events: list[str]
    description: str | None
    all_accounts: bool
    owner_id: UUID | None
    enabled: bool
    disabled_reason: str | None
    disabled_at: dt.datetime | None
    failing_since: dt.datetime | None
    previous_secret_expires_at: dt.datetime | None
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookWithSecret(Webhook, kw_only=True):
    """A registered or rotated endpoint: `secret` signs its deliveries, shown this once."""

    secret: str


class WebhookAttempt(Model, kw_only=True):
    at: dt.datetime
    duration_ms: int
    status_code: int | None
    error: str | None


class WebhookDelivery(Model, kw_only=True):
    id: UUID
    event_id: UUID
    event_type: str
    operation_id: UUID
    status: str
    attempts: int
    next_attempt_at: dt.datetime | None
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    last_duration_ms: int | None
    attempt_log: list[WebhookAttempt]
    created_at: dt.datetime
    delivered_at: dt.datetime | None


# ---------------------------------------------------------------- administration


class DepositLimit(Model, kw_only=True):
    currency: str
    per_operation: Decimal
    daily: Decimal
    per_operation_set: Decimal | None
    daily_set: Decimal | None
    deposited_last_day: Decimal
    remaining: Decimal


class DepositLimits(Model, kw_only=True):
    subject_kind: str
    subject_id: UUID
    default_per_operation_minor: int
    default_daily_minor: int
    items: list[DepositLimit]


class PartitionQueue(Model, kw_only=True):
    partition: int
    pending: int
    oldest_pending_age_seconds: float | None
    applied_last_minute: int
    failed_last_minute: int
    holder: str | None


class QueueView(Model, kw_only=True):
    partitions: list[PartitionQueue]
    workers_alive: int
