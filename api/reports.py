"""Investment reports for the API: the monthly captado (cached in Redis) and portfolios."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

import msgspec
import structlog

from api.schemas import (
    CaptadoAsset,
    CaptadoClient,
    CaptadoOut,
    CurrencyAmount,
    PortfolioOut,
    PortfolioTotal,
    PositionOut,
)
from api.state import Services
from domain.investments import market_value
from domain.money import exponent, format_amount
from domain.returns import (
    Trade,
    captado,
    combine,
    daily_values,
    days_between,
    format_scaled,
    month_bounds,
    simple_return,
    time_weighted_return,
)
from worker.events import captado_cache_key
from worker.store import investments

log = structlog.get_logger(__name__)

CAPTADO_TTL_SECONDS = 3600


def _ratio(value: Any) -> str | None:
    return None if value is None else str(value)


async def captado_report(services: Services, year: int, month: int) -> CaptadoOut:
    """The month's net inflow; served from Redis until the worker applies a trade and drops it."""
    start, end = month_bounds(year, month)
    key = captado_cache_key(year, month)
    try:
        cached = await services.redis.get(key)
    except Exception as exc:  # the cache is an optimisation: PostgreSQL answers without it
        log.warning("captado_cache_unavailable", error=str(exc))
        cached = None
    if cached:
        return msgspec.json.decode(cached, type=CaptadoOut)
    async with services.reads.connect() as conn:
        trades = await investments.trades_between(conn, start, end)
        names = await investments.names_for(
            conn, {t.asset_id for t in trades}, {t.client_id for t in trades}
        )
    report = build_captado(year, month, trades, names)
    try:
        await services.redis.set(key, msgspec.json.encode(report), ex=CAPTADO_TTL_SECONDS)
    except Exception as exc:
        log.warning("captado_cache_unavailable", error=str(exc))
    return report


def build_captado(
    year: int,
    month: int,
    trades: list[Trade],
    names: tuple[dict[UUID, tuple[str, str]], dict[UUID, str]],
) -> CaptadoOut:
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


async def portfolio(
    services: Services, owner_id: UUID, since: dt.date | None, until: dt.date | None
) -> PortfolioOut:
    """Positions at the latest close, with simple and time-weighted returns over [since, until]."""
    async with services.reads.connect() as conn:
        held = await investments.positions_for_owner(conn, owner_id)
        trades = await investments.trades_for_owner(conn, owner_id)
        today = dt.datetime.now(dt.UTC).date()
        end = until or today
        start = since or min((t.day for t in trades), default=end)
        closes = await investments.closes_for(
            conn, {p.asset_id for p in held} | {t.asset_id for t in trades}, start, end
        )
    days = days_between(start, end) if start <= end else []
    # Returns are per asset (over every account of the owner), the totals per currency.
    series_by_asset = {
        p.asset_id: daily_values(
            [t for t in trades if t.asset_id == p.asset_id],
            closes.get(p.asset_id, {}),
            days,
            exponent(p.currency),
        )
        for p in held
    }
    currency_of = {p.asset_id: p.currency for p in held}
    positions: list[PositionOut] = []
    totals: dict[str, list[int]] = {}
    for p in held:
        value = (
            market_value(p.units, exponent(p.currency), p.close) if p.close is not None else None
        )
        acc = totals.setdefault(p.currency, [0, 0])
        acc[0] += p.invested
        acc[1] += value or 0
        positions.append(
            PositionOut(
                account_id=p.account_id,
                asset_id=p.asset_id,
                ticker=p.ticker,
                name=p.name,
                currency=p.currency,
                units=format_scaled(p.units),
                invested=format_amount(p.invested, p.currency),
                close=format_scaled(p.close) if p.close is not None else None,
                market_value=format_amount(value, p.currency) if value is not None else None,
                simple_return=_ratio(
                    simple_return(p.invested, value) if value is not None else None
                ),
                time_weighted_return=_ratio(time_weighted_return(series_by_asset[p.asset_id])),
            )
        )
    return PortfolioOut(
        since=start,
        until=end,
        positions=positions,
        totals=[
            PortfolioTotal(
                currency=c,
                invested=format_amount(invested, c),
                market_value=format_amount(value, c),
                simple_return=_ratio(simple_return(invested, value)),
                time_weighted_return=_ratio(
                    time_weighted_return(
                        combine(s for a, s in series_by_asset.items() if currency_of[a] == c)
                    )
                ),
            )
            for c, (invested, value) in sorted(totals.items())
        ],
    )
