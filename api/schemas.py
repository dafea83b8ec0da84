"""Request and response bodies (msgspec Structs): the public v1 contract."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Generic, Literal, TypeVar
from uuid import UUID

import msgspec
from litestar.params import KwargDefinition
from msgspec import Meta, Struct

from domain import metadata

Username = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="3-64 characters: letters, digits, `_`, `.`, `-`; unique regardless of case.",
    ),
]
# argon2 hashes any length, but an unbounded password is a denial-of-service lever.
Password = Annotated[str, Meta(min_length=10, max_length=256)]
Currency = Annotated[
    str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code", examples=["USD"])
]
AmountIn = Annotated[
    Decimal,
    Meta(
        description=(
            'Decimal string such as "12.50" (preferred). A JSON number is accepted only if it has'
            " no more decimals than the currency allows."
        ),
        examples=["12.50"],
    ),
]
Category = Annotated[str, Meta(min_length=1, max_length=64)]
Description = Annotated[str, Meta(max_length=500)]
Metadata = Annotated[
    dict[
        Annotated[
            str,
            Meta(min_length=1, max_length=metadata.MAX_KEY_LENGTH, pattern=metadata.KEY_PATTERN),
        ],
        Annotated[str, Meta(max_length=metadata.MAX_VALUE_LENGTH)],
    ],
    Meta(
        max_length=metadata.MAX_PAIRS,
        description=f"Up to {metadata.MAX_PAIRS} string pairs: keys of 1-{metadata.MAX_KEY_LENGTH} "
        f"letters, digits, `_ . : -`; values up to {metadata.MAX_VALUE_LENGTH} characters.",
        examples=[{"order_id": "A-1042"}],
    ),
]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """Requests reject unknown fields: a typo must not silently drop meaning from a money order."""


Item = TypeVar("Item")


class Page(Struct, Generic[Item], kw_only=True):
    """One page of a cursor-paged list (api/pagination.py `page` builds every one): the items,
    and the cursor of the next page, null on the last."""

    items: list[Item]
    next_cursor: str | None


def named_page(name: str) -> KwargDefinition:
    """A route's `Page[...]` as OpenAPI names it (`Annotated[Page[AccountOut],
    named_page("AccountPage")]`); api/pagination.py `PageSchemaPlugin` documents it so."""
    return KwargDefinition(schema_component_key=name)


class RegisterRequest(Body):
    username: Username
    password: Password


class UserOut(Struct, kw_only=True):
    id: UUID
    username: str
    created_at: dt.datetime


UserPage = Annotated[Page[UserOut], named_page("UserPage")]


class TokenOut(Struct, kw_only=True):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: Annotated[int, Meta(description="Seconds until the token expires.")]


class TokenRevoke(Body):
    token: Annotated[
        str, Meta(min_length=1, max_length=4096, description="The access token to revoke.")
    ]


class TokenRevoked(Struct, kw_only=True):
    revoked: Annotated[
        bool,
        Meta(description="False when the token was not valid (expired, malformed): nothing to do."),
    ]
    confirmed: Annotated[
        bool,
        Meta(
            description="Every API process listening for revocations confirmed it before this "
            "answer (processes not listening ask Redis on each request)."
        ),
    ]


# An API key lives at most ten years.
MAX_KEY_LIFETIME = 10 * 365 * 24 * 3600


Scope = Literal["accounts:read", "operations:write", "admin"]


class ApiKeyCreate(Body):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    scopes: Annotated[
        list[Scope],
        Meta(
            min_length=1,
            max_length=3,
            description="`accounts:read` (accounts, entries, operations), `operations:write` "
            "(submit and cancel operations, open accounts), `admin` (only the admin may grant it).",
        ),
    ]
    user_id: Annotated[
        UUID | None, Meta(description="Whose key; only the admin may name another user.")
    ] = None
    rate_limit: (
        Annotated[
            int,
            Meta(ge=1, le=1_000_000, description="Requests per rate limit window for this key."),
        ]
        | None
    ) = None
    expires_at: (
        Annotated[
            dt.datetime,
            Meta(
                tz=True,
                description="When the key stops working (RFC 3339 with a time zone, in the "
                "future, within ten years). At most one of `expires_at` and `expires_in`; "
                "neither: never.",
            ),
        ]
        | None
    ) = None
    expires_in: (
        Annotated[
            int,
            Meta(
                ge=1,
                le=MAX_KEY_LIFETIME,
                description="Seconds from now until the key stops working.",
            ),
        ]
        | None
    ) = None


class ApiKeyOut(Struct, kw_only=True):
    id: UUID
    user_id: UUID
    name: str
    prefix: Annotated[str, Meta(description="The secret's first characters, to recognize it.")]
    scopes: list[str]
    rate_limit: int | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    expires_at: Annotated[
        dt.datetime | None, Meta(description="When the key stops working; null: never.")
    ]
    expired: Annotated[
        bool, Meta(description="Past `expires_at`: refused like an unknown key (401).")
    ]


class ApiKeyCreated(ApiKeyOut, kw_only=True):
    secret: Annotated[str, Meta(description="Send as `X-API-Key`. Shown only in this answer.")]


ApiKeyPage = Annotated[Page[ApiKeyOut], named_page("ApiKeyPage")]


AccountName = Annotated[str, Meta(min_length=1, max_length=100)]


class AccountCreate(Body):
    name: AccountName
    type: Literal["checking", "savings"]
    currency: Currency
    initial_deposit: (
        Annotated[
            Decimal,
            Meta(
                description="Opens the account with this deposit, submitted with it (the "
                "`Idempotency-Key` header is then required and names the deposit).",
                examples=["100.00"],
            ),
        ]
        | None
    ) = None
    metadata: Metadata | None = None


class AccountChange(Body):
    """The owner's changes: the name, the metadata (replaced whole). Absent fields stay."""

    name: AccountName | None = None
    metadata: Metadata | None = None


class AdminAccountUpdate(Body):
    """The admin's changes to a customer account. Absent fields stay."""

    overdraft_limit: (
        Annotated[
            Decimal,
            Meta(
                description="How far below zero the account may go, a decimal string >= 0; "
                "refused (409) below what the account already uses.",
                examples=["500.00"],
            ),
        ]
        | None
    ) = None
    name: AccountName | None = None


class AccountOut(Struct, kw_only=True):
    id: UUID
    name: str
    type: str
    currency: str
    balance: str
    held_balance: Annotated[str, Meta(description="The open holds' total, not available to spend.")]
    available_balance: Annotated[
        str,
        Meta(description="balance less held_balance and pending debits (holds included)."),
    ]
    overdraft_limit: str
    frozen: Annotated[bool, Meta(description="Debits fail (account_frozen); credits apply.")]
    closed_at: Annotated[
        dt.datetime | None, Meta(description="Closed accounts take no operation (409).")
    ]
    metadata: dict[str, str]
    as_of: Annotated[
        dt.datetime | None,
        Meta(description="With `?as_of=`: the instant the balances are from; null: now."),
    ] = None
    created_at: dt.datetime
    updated_at: dt.datetime


AccountPage = Annotated[Page[AccountOut], named_page("AccountPage")]


class AdminAccountOut(AccountOut, kw_only=True):
    owner_id: Annotated[UUID | None, Meta(description="None for system accounts (world, custody).")]


AdminAccountPage = Annotated[Page[AdminAccountOut], named_page("AdminAccountPage")]


class EntryOut(Struct, kw_only=True):
    id: str
    operation_id: UUID
    operation_type: str
    amount: str
    balance_after: str
    currency: str
    category: str | None
    description: str | None
    created_at: dt.datetime


EntryPage = Annotated[Page[EntryOut], named_page("EntryPage")]


Quantity = Annotated[
    Decimal,
    Meta(description="Units of an asset, up to 8 decimals, as a decimal string.", examples=["1.5"]),
]


# Operations a client submits; account controls (freeze, unfreeze, close) have their own routes.
SubmittedType = Literal[
    "deposit",
    "withdrawal",
    "transfer",
    "allocation",
    "redemption",
    "hold",
    "capture",
    "void",
    "reversal",
]


class OperationRequest(Body):
    type: SubmittedType
    # Required, except for a capture, void or reversal (they act on the account of what they
    # refer to).
    account_id: UUID | None = None
    # Required, except for a redemption by `quantity`, a void, and a capture or reversal of all.
    amount: AmountIn | None = None
    # A transfer's payee; a hold's payee for its capture (none: the capture leaves the ledger).
    to_account_id: UUID | None = None
    # Allocations and redemptions: the asset; a redemption sells `quantity` units or raises `amount`.
    asset_id: UUID | None = None
    quantity: Quantity | None = None
    hold_id: Annotated[
        UUID | None, Meta(description="A capture or void: the hold (its operation id).")
    ] = None
    expires_in: (
        Annotated[
            int,
            Meta(
                ge=1,
                description="A hold: seconds until it expires and is voided "
                "(LEDGERQ_HOLD_DEFAULT_EXPIRY if absent, at most LEDGERQ_HOLD_MAX_EXPIRY).",
            ),
        ]
        | None
    ) = None
    operation_id: Annotated[
        UUID | None, Meta(description="A reversal: the operation it takes back.")
    ] = None
    category: Category | None = None
    description: Description | None = None
    metadata: Metadata | None = None


class BatchItem(OperationRequest, kw_only=True):
    # kw_only: a required field after OperationRequest's optional ones.
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=255)]


class BatchRequest(Body):
    operations: Annotated[list[BatchItem], Meta(min_length=1, max_length=1000)]


class OperationError(Struct, kw_only=True):
    code: str
    message: str | None


class OperationOut(Struct, kw_only=True):
    id: UUID
    type: str
    status: str
    account_id: UUID
    to_account_id: UUID | None
    amount: str | None
    currency: str
    asset_id: UUID | None
    quantity: str | None
    price: str | None
    category: str | None
    description: str | None
    hold_id: Annotated[UUID | None, Meta(description="A capture's or void's hold.")]
    expires_in: Annotated[int | None, Meta(description="A hold's life in seconds.")]
    reversal_of: Annotated[UUID | None, Meta(description="A reversal's original operation.")]
    reversed_amount: Annotated[
        str, Meta(description="How much of this operation reversals have taken back.")
    ]
    metadata: dict[str, str]
    error: OperationError | None
    created_at: dt.datetime
    updated_at: dt.datetime
    applied_at: dt.datetime | None


OperationPage = Annotated[Page[OperationOut], named_page("OperationPage")]


class HoldOut(Struct, kw_only=True):
    id: Annotated[UUID, Meta(description="The hold operation's id.")]
    account_id: UUID
    to_account_id: Annotated[
        UUID | None, Meta(description="Where a capture pays; null: out of the ledger.")
    ]
    currency: str
    amount: str
    captured: str
    released: str
    status: Literal["open", "captured", "voided", "expired"]
    expires_at: dt.datetime
    created_at: dt.datetime
    closed_at: dt.datetime | None
    closed_by: Annotated[UUID | None, Meta(description="The capture or void that closed it.")]


HoldPage = Annotated[Page[HoldOut], named_page("HoldPage")]


class Problem(Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details: the body of every error, and of each refused item of a batch.

    Some problems carry more members (`errors` on validation, `required_scope` on 403).
    """

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None


class BatchItemResult(Struct, kw_only=True, omit_defaults=True):
    index: int
    status: int
    replayed: bool = False
    operation: OperationOut | None = None
    error: Problem | None = None


class BatchResponse(Struct, kw_only=True):
    accepted: int
    replayed: int
    rejected: int
    results: list[BatchItemResult]


class Health(Struct, kw_only=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)


# ---------------------------------------------------------------- investments

AssetKind = Literal["stock", "fund", "bond", "etf", "reit", "crypto", "other"]
Decimal8 = Annotated[
    Decimal, Meta(description="Up to 8 decimals, as a decimal string.", examples=["27.35"])
]


class AssetCreate(Body):
    ticker: Annotated[str, Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9.\-]{0,15}$", examples=["PETR4"])]
    name: Annotated[str, Meta(min_length=1, max_length=200)]
    kind: AssetKind
    currency: Currency


class AssetOut(Struct, kw_only=True):
    id: UUID
    ticker: str
    name: str
    kind: str
    currency: str
    created_at: dt.datetime


AssetPage = Annotated[Page[AssetOut], named_page("AssetPage")]


class PriceIn(Body):
    date: dt.date
    close: Decimal8


class PricesUpsert(Body):
    prices: Annotated[list[PriceIn], Meta(min_length=1, max_length=5000)]


class PricesUpserted(Struct, kw_only=True):
    asset_id: UUID
    upserted: int


class PriceOut(Struct, kw_only=True):
    date: dt.date
    close: str


class PriceSeries(Struct, kw_only=True):
    asset_id: UUID
    items: list[PriceOut]


class PositionOut(Struct, kw_only=True):
    account_id: UUID
    asset_id: UUID
    ticker: str
    name: str
    currency: str
    units: str
    invested: str
    close: str | None
    market_value: str | None
    simple_return: str | None
    time_weighted_return: str | None


class PortfolioTotal(Struct, kw_only=True):
    currency: str
    invested: str
    market_value: str
    simple_return: str | None
    time_weighted_return: str | None


class PortfolioOut(Struct, kw_only=True):
    since: dt.date
    until: dt.date
    positions: list[PositionOut]
    totals: list[PortfolioTotal]


class CurrencyTotals(Struct, kw_only=True):
    currency: str
    invested: str
    market_value: str


class ClientOut(Struct, kw_only=True):
    id: UUID
    username: str
    totals: list[CurrencyTotals]


ClientPage = Annotated[Page[ClientOut], named_page("ClientPage")]


class InvestmentOut(Struct, kw_only=True):
    id: UUID
    type: str
    status: str
    account_id: UUID
    asset_id: UUID | None
    amount: str | None
    quantity: str | None
    price: str | None
    currency: str
    created_at: dt.datetime
    applied_at: dt.datetime | None


InvestmentPage = Annotated[Page[InvestmentOut], named_page("InvestmentPage")]


class CurrencyAmount(Struct, kw_only=True):
    currency: str
    amount: str


class CaptadoAsset(Struct, kw_only=True):
    asset_id: UUID
    ticker: str
    currency: str
    amount: str


class CaptadoClient(Struct, kw_only=True):
    client_id: UUID
    username: str
    currency: str
    amount: str


class CaptadoOut(Struct, kw_only=True):
    year: int
    month: int
    operations: int
    totals: list[CurrencyAmount]
    by_asset: list[CaptadoAsset]
    by_client: list[CaptadoClient]


# ---------------------------------------------------------------- deposit limits (admin)

LimitIn = Annotated[
    Decimal,
    Meta(
        description='An amount of the path\'s currency as a decimal string ("5000.00"), above '
        "zero; null: back to the default.",
        examples=["5000.00"],
    ),
]


class DepositLimitsSet(Body):
    currency: Currency
    per_operation: LimitIn | None = None
    daily: LimitIn | None = None


class DepositLimitOut(Struct, kw_only=True):
    currency: str
    per_operation: Annotated[str, Meta(description="Largest deposit, in effect.")]
    daily: Annotated[str, Meta(description="Most in any 24 hours, in effect.")]
    per_operation_set: Annotated[
        str | None, Meta(description="The admin's own value; null: the default applies.")
    ]
    daily_set: Annotated[
        str | None, Meta(description="The admin's own value; null: the default applies.")
    ]
    deposited_last_day: Annotated[str, Meta(description="Deposits counted in the rolling day now.")]
    remaining: Annotated[str, Meta(description="What may still be deposited now.")]


class DepositLimitsOut(Struct, kw_only=True):
    subject_kind: Literal["user", "api_key"]
    subject_id: UUID
    default_per_operation_minor: Annotated[
        int, Meta(description="LEDGERQ_DEPOSIT_MAX_PER_OPERATION, minor units of any currency.")
    ]
    default_daily_minor: Annotated[
        int, Meta(description="LEDGERQ_DEPOSIT_DAILY_LIMIT, minor units of any currency.")
    ]
    items: Annotated[
        list[DepositLimitOut],
        Meta(description="Each currency with limits set or deposits counted, by currency."),
    ]


class AdminDepositRequest(Body):
    account_id: UUID
    amount: AmountIn
    category: Category | None = None
    description: Description | None = None


class AdminReversalRequest(Body):
    operation_id: Annotated[UUID, Meta(description="The operation to take back.")]
    amount: (
        Annotated[AmountIn, Meta(description="How much; absent: all that is left of it.")] | None
    ) = None
    category: Category | None = None
    description: Description | None = None
    metadata: Metadata | None = None


# ---------------------------------------------------------------- queues (admin)


class PartitionQueue(Struct, kw_only=True):
    partition: int
    pending: int
    # Seconds the oldest pending operation has waited; null when nothing is pending.
    oldest_pending_age_seconds: float | None
    # Completed in the last 60 seconds, as counted by the workers.
    applied_last_minute: int
    failed_last_minute: int
    # The worker holding the partition's lease (`auto` workers); "static" when workers are given
    # fixed partitions (LEDGERQ_WORKER_PARTITIONS); null when nobody holds it.
    holder: str | None


class QueueView(Struct, kw_only=True):
    partitions: list[PartitionQueue]
    # Workers with a live heartbeat in the lease registry (`auto` workers only).
    workers_alive: int


# ---------------------------------------------------------------- WebSocket messages (not in OpenAPI)


class AccountSnapshot(Struct, kw_only=True, tag="account", tag_field="type"):
    """WS /ws/accounts/{id}: the account as it is now (on connect, and after a lost event)."""

    account: AccountOut


class OperationChange(Struct, kw_only=True):
    id: str
    type: str
    status: str
    error_code: str | None = None


class AccountUpdate(Struct, kw_only=True, tag="operation", tag_field="type"):
    """WS /ws/accounts/{id}: an operation touching the account reached its final state."""

    operation: OperationChange
    # This operation's entry on the account (negative for a debit) and the balance it left;
    # null when it failed (a failure writes no entry).
    amount: str | None
    balance_after: str | None
    # The account as it is now (later operations of the same batch included).
    account: AccountOut


# ---------------------------------------------------------------- webhooks

WebhookEventType = Literal[
    "operation.succeeded",
    "operation.failed",
    "operation.cancelled",
    "hold.created",
    "hold.captured",
    "hold.voided",
    "hold.expired",
]


WebhookUrl = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=2048,
        description="An http or https URL, without credentials or fragment, whose host "
        "resolves to public addresses only (LEDGERQ_WEBHOOKS_ALLOW_PRIVATE allows private ones). "
        "Events are POSTed to it; redirects are not followed.",
        examples=["https://example.com/ledgerq/events"],
    ),
]
WebhookEvents = Annotated[
    list[WebhookEventType],
    Meta(min_length=1, max_length=7, description="The event types sent to it."),
]
WebhookDescription = Annotated[str, Meta(max_length=500)]


class WebhookCreate(Body):
    url: WebhookUrl
    events: WebhookEvents
    description: WebhookDescription | None = None
    all_accounts: Annotated[
        bool,
        Meta(
            description="The admin only: the events of every account (the master key's "
            "endpoints always are). Otherwise: the events of your own accounts."
        ),
    ] = False


class WebhookChange(Body):
    """Changes to an endpoint; absent fields stay. A new URL is checked as at registration, and
    pending deliveries (retries included) go to it from their next attempt, with the same event
    ids. New events apply from now on (events already recorded are still delivered).
    `description: ""` removes it."""

    url: WebhookUrl | None = None
    events: WebhookEvents | None = None
    description: WebhookDescription | None = None


class WebhookOut(Struct, kw_only=True):
    id: UUID
    url: str
    events: list[str]
    description: str | None
    all_accounts: Annotated[bool, Meta(description="Every account's events (the admin's).")]
    owner_id: Annotated[
        UUID | None, Meta(description="Whose accounts' events it gets; null: every account's.")
    ]
    enabled: bool
    disabled_reason: Annotated[
        str | None,
        Meta(description="Why it is disabled: by whom, or after its deliveries failed too long."),
    ]
    disabled_at: dt.datetime | None
    failing_since: Annotated[
        dt.datetime | None,
        Meta(description="Its first failed attempt since the last success; null: not failing."),
    ]
    previous_secret_expires_at: Annotated[
        dt.datetime | None,
        Meta(
            description="After a rotation: until when the previous secret still signs too (a "
            "second `v1` in `Ledgerq-Signature`)."
        ),
    ]
    created_at: dt.datetime
    updated_at: dt.datetime


class WebhookWithSecret(WebhookOut, kw_only=True):
    secret: Annotated[
        str,
        Meta(
            description="Signs every delivery (HMAC-SHA256, `Ledgerq-Signature`). Shown only in "
            "this answer; a rotation shows the new one."
        ),
    ]


WebhookPage = Annotated[Page[WebhookOut], named_page("WebhookPage")]


class WebhookSecretRotation(Body):
    previous_secret_valid_for: Annotated[
        int,
        Meta(
            ge=0,
            le=7 * 24 * 3600,
            description="Seconds the current secret keeps signing alongside the new one, so "
            "receivers can switch; 0: it stops now.",
        ),
    ] = 24 * 3600


class WebhookAttemptOut(Struct, kw_only=True):
    at: dt.datetime
    duration_ms: int
    status_code: Annotated[int | None, Meta(description="The receiver's HTTP status; null: none.")]
    error: Annotated[
        str | None, Meta(description="What failed: a timeout, a refused connection, a status.")
    ]


class WebhookDeliveryOut(Struct, kw_only=True):
    id: UUID
    event_id: Annotated[
        UUID, Meta(description="The event's id (`Ledgerq-Event-Id`): the same on every attempt.")
    ]
    event_type: str
    operation_id: UUID
    status: Annotated[
        Literal["pending", "succeeded", "failed"],
        Meta(description="pending: to be tried (again); failed: given up after the retry period."),
    ]
    attempts: int
    next_attempt_at: Annotated[
        dt.datetime | None, Meta(description="When it is tried next; null unless pending.")
    ]
    last_attempt_at: dt.datetime | None
    last_status_code: int | None
    last_error: str | None
    last_duration_ms: int | None
    attempt_log: Annotated[
        list[WebhookAttemptOut], Meta(description="The latest attempts (up to 20), oldest first.")
    ]
    created_at: dt.datetime
    delivered_at: dt.datetime | None


WebhookDeliveryPage = Annotated[Page[WebhookDeliveryOut], named_page("WebhookDeliveryPage")]
