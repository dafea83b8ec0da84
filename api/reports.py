"""Investment reports for the API: the monthly captado (cached in Redis), portfolios and the
admin's client totals. Each reads what it needs, has domain/ compute it, and presents it
(api/presenters.py)."""

from __future__ import annotations

import datetime as dt
from uuid import UUID

import msgspec
import structlog

from api.presenters import captado_out, portfolio_out
from api.schemas import CaptadoOut, PortfolioOut
from api.state import Services
from domain.investments import ClientTotals, client_totals
from domain.returns import month_bounds, portfolio_period, value_portfolio
from worker.events import captado_cache_key
from worker.store import investments

log = structlog.get_logger(__name__)

CAPTADO_TTL_SECONDS = 3600


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
    report = captado_out(year, month, trades, names)
    try:
        await services.redis.set(key, msgspec.json.encode(report), ex=CAPTADO_TTL_SECONDS)
    except Exception as exc:
        log.warning("captado_cache_unavailable", error=str(exc))
    return report


async def portfolio(
    services: Services, owner_id: UUID, since: dt.date | None, until: dt.date | None
) -> PortfolioOut:
    """Positions at the latest close, with simple and time-weighted returns over [since, until]."""
    async with services.reads.connect() as conn:
        held = await investments.positions_for_owner(conn, owner_id)
        trades = await investments.trades_for_owner(conn, owner_id)
        start, end = portfolio_period(since, until, trades, dt.datetime.now(dt.UTC).date())
        closes = await investments.closes_for(
            conn, {p.asset_id for p in held} | {t.asset_id for t in trades}, start, end
        )
    return portfolio_out(held, value_portfolio(held, trades, closes, start, end))


async def clients(services: Services, after: UUID | None, limit: int) -> list[ClientTotals]:
    """Up to `limit` clients with positions after `after` (by id), each with its invested total
    and market value per currency."""
    async with services.reads.connect() as conn:
        rows = await investments.clients(conn, after, limit)
    return client_totals(rows)
