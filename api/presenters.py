"""Rows and rule results -> response bodies (api/schemas.py): every mapping in one place.

Controllers, the WebSocket and SSE routes and the reports present through these functions and
nothing else: amounts are formatted in the row's currency (`domain.money.format_amount`),
quantities and prices with 8 decimals (`domain.returns.format_scaled`), returns as decimal
strings. No I/O and no arithmetic beyond formatting: figures come computed (domain/, or SQL).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any
from uuid import UUID

import msgspec

from api.errors import ApiError
from api.schemas import (
    AccountOut,
    AccountSnapshot,
    AccountUpdate,
    AdminAccountOut,
    ApiKeyCreated,
    ApiKeyOut,
    AssetOut,
    BatchItemResult,
    BatchResponse,
    CaptadoAsset,
    CaptadoClient,
    CaptadoOut,
    ClientOut,
    CurrencyAmount,
    CurrencyTotals,
    DepositLimitOut,
    DepositLimitsOut,
    EntryOut,
    HoldOut,
    InvestmentOut,
    OperationChange,
    OperationError,
    OperationOut,
    PartitionQueue,
    PortfolioOut,
    PortfolioTotal,
    PositionOut,
    PriceOut,
    PriceSeries,
    Problem,
    QueueView,
    UserOut,
    WebhookAttemptOut,
    WebhookDeliveryOut,
    WebhookOut,
    WebhookWithSecret,
)
from domain.investments import ClientTotals
from domain.limits import USER, Limits, Window, standing
from domain.money import format_amount
from domain.returns import Portfolio, Trade, captado, format_scaled
from worker.apply_loop import Completion
from worker.store.queries import window_of

# ---------------------------------------------------------------- users and keys


def user_out(row: Any) -> UserOut:
    return UserOut(id=row.id, username=row.username, created_at=row.created_at)


def api_key_out(row: Any) -> ApiKeyOut:
    return ApiKeyOut(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        prefix=row.prefix,
        scopes=list(row.scopes),
        rate_limit=row.rate_limit,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        expires_at=row.expires_at,
        expired=row.expired,
    )


def api_key_created(row: Any, secret: str) -> ApiKeyCreated:
    """The new key with its secret (shown in this answer only)."""
    return ApiKeyCreated(**msgspec.structs.asdict(api_key_out(row)), secret=secret)


# ---------------------------------------------------------------- accounts and entries


def _account_fields(row: Any, as_of: dt.datetime | None) -> dict[str, Any]:
    currency = row.currency
    return {
        "id": row.id,
        "name": row.name,
        "type": row.kind,
        "currency": currency,
        "balance": format_amount(row.balance, currency),
        "held_balance": format_amount(row.held, currency),
        "available_balance": format_amount(row.balance - row.held - row.pending_debits, currency),
        "overdraft_limit": format_amount(row.overdraft_limit, currency),
        "frozen": row.frozen,
        "closed_at": row.closed_at,
        "metadata": row.metadata or {},
        "as_of": as_of,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def account_out(row: Any, as_of: dt.datetime | None = None) -> AccountOut:
    """An account row with `pending_debits` (the fast path's and the lists' queries). `as_of`:
    the row holds balances as of that instant (queries.account_as_of)."""
    return AccountOut(**_account_fields(row, as_of))


def admin_account_out(row: Any) -> AdminAccountOut:
    """An account as the admin sees it: with its owner (None for system accounts)."""
    return AdminAccountOut(**_account_fields(row, None), owner_id=row.owner_id)


def hold_out(row: Any) -> HoldOut:
    currency = row.currency
    return HoldOut(
        id=row.id,
        account_id=row.account_id,
        to_account_id=row.to_account_id,
        currency=currency,
        amount=format_amount(row.amount, currency),
        captured=format_amount(row.captured, currency),
        released=format_amount(row.released, currency),
        status=row.status,
        expires_at=row.expires_at,
        created_at=row.created_at,
        closed_at=row.closed_at,
        closed_by=row.closed_by,
    )


def entry_out(row: Any) -> EntryOut:
    return EntryOut(
        id=str(row.id),
        operation_id=row.operation_id,
        operation_type=row.type,
        amount=format_amount(row.amount, row.currency),
        balance_after=format_amount(row.balance_after, row.currency),
        currency=row.currency,
        category=row.category,
        description=row.description,
        created_at=row.created_at,
    )


def account_snapshot(row: Any) -> AccountSnapshot:
    """WS /ws/accounts/{id}: the account as it is now."""
    return AccountSnapshot(account=account_out(row))


def account_update(
    event: dict[str, Any], own: bool, entry: Any, currency: str, account: AccountOut
) -> AccountUpdate:
    """WS /ws/accounts/{id}: one operation's completion `event` as the account's owner may see
    it (`own`: the owner submitted it, so its error code shows), with the account's `entry` for
    it (None when it failed) and the account as it is now."""
    return AccountUpdate(
        operation=OperationChange(
            id=event["id"],
            type=event["type"],
            status=event["status"],
            error_code=event.get("error_code") if own else None,
        ),
        amount=format_amount(entry.amount, currency) if entry else None,
        balance_after=format_amount(entry.balance_after, currency) if entry else None,
        account=account,
    )


# ---------------------------------------------------------------- operations


def operation_out(row: Any) -> OperationOut:
    return OperationOut(
        id=row.id,
        type=row.type,
        status=row.status,
        account_id=row.account_id,
        to_account_id=row.to_account_id,
        # A redemption by quantity has no amount until it is priced.
        amount=format_amount(row.amount, row.currency) if row.amount else None,
        currency=row.currency,
        asset_id=row.asset_id,
        quantity=format_scaled(row.quantity) if row.quantity is not None else None,
        price=format_scaled(row.price) if row.price is not None else None,
        category=row.category,
        description=row.description,
        hold_id=row.hold_id,
        expires_in=row.expires_in,
        reversal_of=row.reversal_of,
        reversed_amount=format_amount(row.reversed_amount, row.currency),
        metadata=row.metadata or {},
        error=OperationError(code=row.error_code, message=row.error_message)
        if row.error_code
        else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        applied_at=row.applied_at,
    )


def investment_out(row: Any) -> InvestmentOut:
    """An allocation or redemption in a client's list (the admin's view of its operation)."""
    return InvestmentOut(
        id=row.id,
        type=row.type,
        status=row.status,
        account_id=row.account_id,
        asset_id=row.asset_id,
        amount=format_amount(row.amount, row.currency) if row.amount else None,
        quantity=format_scaled(row.quantity) if row.quantity else None,
        price=format_scaled(row.price) if row.price else None,
        currency=row.currency,
        created_at=row.created_at,
        applied_at=row.applied_at,
    )


def problem_out(error: ApiError) -> Problem:
    """A problem as a body of its own (a refused item of a batch)."""
    body = error.extra if isinstance(error.extra, dict) else {}
    return Problem(
        type=error.type_ or "about:blank",
        title=error.title or "",
        status=error.status_code,
        detail=str(error.detail),
        code=error.code,
        field=body.get("field"),
    )


def batch_out(outcomes: Sequence[Any]) -> BatchResponse:
    """One result per submitted item, in order: its problem, or its operation (202 created,
    200 replayed); `outcomes` as api/intake.py `submit` returns them."""
    results: list[BatchItemResult] = []
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, ApiError):
            results.append(
                BatchItemResult(index=index, status=outcome.status_code, error=problem_out(outcome))
            )
        else:
            results.append(
                BatchItemResult(
                    index=index,
                    status=202 if outcome.created else 200,
                    replayed=not outcome.created,
                    operation=operation_out(outcome.row),
                )
            )
    accepted = sum(1 for r in results if r.status == 202)
    replayed = sum(1 for r in results if r.replayed)
    return BatchResponse(
        accepted=accepted,
        replayed=replayed,
        rejected=len(results) - accepted - replayed,
        results=results,
    )


# ---------------------------------------------------------------- administration


def limits_out(
    subject_kind: str, subject_id: UUID, defaults: Limits, rows: Sequence[Any]
) -> DepositLimitsOut:
    """A subject's limit rows (worker/store/access.py `deposit_limit_rows`, with the database's
    now), each as it stands now (domain/limits.py `standing`)."""
    items = []
    for row in rows:
        currency = row.currency
        window = window_of(row) if row.window_sums else Window()
        now = standing(defaults, row.per_operation, row.daily, window, row.now)
        items.append(
            DepositLimitOut(
                currency=currency,
                per_operation=format_amount(now.limits.per_operation, currency),
                daily=format_amount(now.limits.daily, currency),
                per_operation_set=_money(row.per_operation, currency),
                daily_set=_money(row.daily, currency),
                deposited_last_day=format_amount(now.used, currency),
                remaining=format_amount(now.remaining, currency),
            )
        )
    return DepositLimitsOut(
        subject_kind="user" if subject_kind == USER else "api_key",
        subject_id=subject_id,
        default_per_operation_minor=defaults.per_operation,
        default_daily_minor=defaults.daily,
        items=items,
    )


def queue_view(facts: Any, static: bool) -> QueueView:
    """api/metrics.py `QueueFacts` (every source answered); `static`: workers are given fixed
    partitions, so a partition without a lease holder is held by them."""
    return QueueView(
        partitions=[
            PartitionQueue(
                partition=p,
                pending=f.pending,
                oldest_pending_age_seconds=round(f.oldest_pending_age, 3)
                if f.oldest_pending_age is not None
                else None,
                applied_last_minute=f.applied_last_minute,
                failed_last_minute=f.failed_last_minute,
                holder=f.holder or ("static" if static else None),
            )
            for p, f in sorted(facts.partitions.items())
        ],
        workers_alive=facts.workers_alive or 0,
    )


# ---------------------------------------------------------------- investments


def asset_out(row: Any) -> AssetOut:
    return AssetOut(
        id=row.id,
        ticker=row.ticker,
        name=row.name,
        kind=row.kind,
        currency=row.currency,
        created_at=row.created_at,
    )


def price_series(asset_id: UUID, rows: Sequence[Any]) -> PriceSeries:
    return PriceSeries(
        asset_id=asset_id,
        items=[PriceOut(date=r.day, close=format_scaled(r.close)) for r in rows],
    )


def client_out(client: ClientTotals) -> ClientOut:
    return ClientOut(
        id=client.client_id,
        username=client.username,
        totals=[
            CurrencyTotals(
                currency=t.currency,
                invested=format_amount(t.invested, t.currency),
                market_value=format_amount(t.market_value, t.currency),
            )
            for t in client.totals
        ],
    )


def portfolio_out(held: Sequence[Any], portfolio: Portfolio) -> PortfolioOut:
    """`held`: the owner's positions as read (worker/store/investments.py
    `positions_for_owner`); `portfolio`: the same positions valued (domain/returns.py)."""
    return PortfolioOut(
        since=portfolio.since,
        until=portfolio.until,
        positions=[
            PositionOut(
                account_id=p.account_id,
                asset_id=p.asset_id,
                ticker=p.ticker,
                name=p.name,
                currency=p.currency,
                units=format_scaled(p.units),
                invested=format_amount(p.invested, p.currency),
                close=format_scaled(p.close) if p.close is not None else None,
                market_value=_money(v.market_value, p.currency),
                simple_return=_ratio(v.simple_return),
                time_weighted_return=_ratio(v.time_weighted_return),
            )
            for p, v in zip(held, portfolio.holdings, strict=True)
        ],
        totals=[
            PortfolioTotal(
                currency=t.currency,
                invested=format_amount(t.invested, t.currency),
                market_value=format_amount(t.market_value, t.currency),
                simple_return=_ratio(t.simple_return),
                time_weighted_return=_ratio(t.time_weighted_return),
            )
            for t in portfolio.totals
        ],
    )


def captado_out(
    year: int,
    month: int,
    trades: Sequence[Trade],
    names: tuple[dict[UUID, tuple[str, str]], dict[UUID, str]],
) -> CaptadoOut:
    """The month's trades netted (domain/returns.py `captado`), assets by ticker and clients by
    username; `names`: (asset id -> (ticker, currency)), (user id -> username)."""
    tickers, usernames = names
    result = captado(trades)
    return CaptadoOut(
        year=year,
        month=month,
        operations=len(trades),
        totals=[
            CurrencyAmount(currency=c, amount=format_amount(v, c))
            for c, v in sorted(result.total.items())
        ],
        by_asset=[
            CaptadoAsset(
                asset_id=asset_id,
                ticker=tickers[asset_id][0],
                currency=tickers[asset_id][1],
                amount=format_amount(v, tickers[asset_id][1]),
            )
            for asset_id, v in sorted(result.by_asset.items(), key=lambda kv: tickers[kv[0]][0])
        ],
        by_client=[
            CaptadoClient(
                client_id=client_id,
                username=usernames.get(client_id, ""),
                currency=c,
                amount=format_amount(v, c),
            )
            for (client_id, c), v in sorted(
                result.by_client.items(), key=lambda kv: (usernames.get(kv[0][0], ""), kv[0][1])
            )
        ],
    )


# ---------------------------------------------------------------- formatting


def _money(minor: int | None, currency: str) -> str | None:
    return None if minor is None else format_amount(minor, currency)


def _ratio(value: Decimal | None) -> str | None:
    return None if value is None else str(value)


def cancelled_completion(row: Any) -> Completion:
    """The completion event of an operation the API cancelled (the worker publishes the others)."""
    return Completion(
        id=str(row.id),
        status=row.status,
        error_code=row.error_code,
        account_id=str(row.account_id),
        to_account_id=str(row.to_account_id) if row.to_account_id is not None else None,
        type=row.type,
    )


# ---------------------------------------------------------------- webhooks


def webhook_out(row: Any) -> WebhookOut:
    return WebhookOut(
        id=row.id,
        url=row.url,
        events=list(row.events),
        description=row.description,
        all_accounts=row.owner_id is None,
        owner_id=row.owner_id,
        enabled=row.enabled,
        disabled_reason=row.disabled_reason,
        disabled_at=row.disabled_at,
        failing_since=row.failing_since,
        previous_secret_expires_at=row.previous_secret_expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def webhook_with_secret(row: Any, secret: str) -> WebhookWithSecret:
    """A new or rotated endpoint with its secret (shown in this answer only)."""
    return WebhookWithSecret(**msgspec.structs.asdict(webhook_out(row)), secret=secret)


def webhook_delivery_out(row: Any) -> WebhookDeliveryOut:
    return WebhookDeliveryOut(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        operation_id=row.operation_id,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == "pending" else None,
        last_attempt_at=row.last_attempt_at,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        last_duration_ms=row.last_duration_ms,
        attempt_log=[
            WebhookAttemptOut(
                at=dt.datetime.fromisoformat(entry["at"]),
                duration_ms=entry["duration_ms"],
                status_code=entry.get("status_code"),
                error=entry.get("error"),
            )
            for entry in row.attempt_log or []
        ],
        created_at=row.created_at,
        delivered_at=row.delivered_at,
    )
