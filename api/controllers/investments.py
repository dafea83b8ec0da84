"""Investments: assets and daily closes, the caller's portfolio, clients (admin) and captado."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, WebSocket, get, post, websocket
from litestar.channels import ChannelsPlugin
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from api.auth import Principal
from api.controllers.accounts import Cursor, Limit
from api.errors import ApiError
from api.pagination import decode_int_cursor, decode_uuid_cursor, encode_cursor
from api.reports import captado_report, portfolio
from api.schemas import (
    AssetCreate,
    AssetOut,
    AssetPage,
    CaptadoOut,
    ClientOut,
    ClientPage,
    CurrencyTotals,
    InvestmentOut,
    InvestmentPage,
    PortfolioOut,
    PriceOut,
    PriceSeries,
    PricesUpsert,
    PricesUpserted,
)
from api.state import services_of
from domain.investments import market_value
from domain.money import exponent, format_amount
from domain.returns import format_scaled, month_bounds, parse_scaled
from worker.events import CAPTADO_CHANNEL, channel
from worker.store import investments

Month = Annotated[int, Parameter(ge=1, le=12, description="1-12")]
Year = Annotated[int, Parameter(ge=2000, le=2200)]


def asset_out(row: Any) -> AssetOut:
    return AssetOut(
        id=row.id,
        ticker=row.ticker,
        name=row.name,
        kind=row.kind,
        currency=row.currency,
        created_at=row.created_at,
    )


def asset_not_found() -> ApiError:
    return ApiError(404, "asset_not_found", "No such asset.")


class AssetController(Controller):
    path = "/api/v1/assets"
    tags = ["investments"]

    @post("/", operation_id="createAsset", status_code=HTTP_201_CREATED)
    async def create_asset(
        self, request: Request[Principal, Any, Any], data: AssetCreate
    ) -> AssetOut:
        """Admin: list a new asset (ticker unique, case-insensitive)."""
        exponent(data.currency)
        try:
            async with services_of(request.app).engine.begin() as conn:
                row = await investments.create_asset(
                    conn, data.ticker, data.name, data.kind, data.currency
                )
        except investments.AssetExists:
            raise ApiError(
                409, "ticker_taken", "An asset with that ticker exists.", field="ticker"
            ) from None
        return asset_out(row)

    @get("/", operation_id="listAssets")
    async def list_assets(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> AssetPage:
        """Every asset, oldest first, in cursor pages."""
        after = decode_uuid_cursor("asset", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await investments.list_assets(conn, after, limit + 1)
        items = [asset_out(r) for r in rows[:limit]]
        return AssetPage(
            items=items,
            next_cursor=encode_cursor("asset", items[-1].id) if len(rows) > limit else None,
        )

    @get("/{asset_id:uuid}", operation_id="getAsset")
    async def get_asset(self, request: Request[Principal, Any, Any], asset_id: UUID) -> AssetOut:
        async with services_of(request.app).reads.connect() as conn:
            row = await investments.asset_by_id(conn, asset_id)
        if row is None:
            raise asset_not_found()
        return asset_out(row)

    @post("/{asset_id:uuid}/prices", operation_id="upsertPrices", status_code=200)
    async def upsert_prices(
        self, request: Request[Principal, Any, Any], asset_id: UUID, data: PricesUpsert
    ) -> PricesUpserted:
        """Admin: insert or replace daily closes in bulk (all or nothing)."""
        closes: list[tuple[dt.date, int]] = []
        for index, item in enumerate(data.prices):
            try:
                closes.append((item.date, parse_scaled(item.close, "close")))
            except Exception as exc:
                raise ApiError(
                    422,
                    "invalid_price",
                    f"prices[{index}].close: {exc}",
                    field=f"prices[{index}].close",
                ) from None
        async with services_of(request.app).engine.begin() as conn:
            if await investments.asset_by_id(conn, asset_id) is None:
                raise asset_not_found()
            count = await investments.upsert_prices(conn, asset_id, closes)
        return PricesUpserted(asset_id=asset_id, upserted=count)

    @get("/{asset_id:uuid}/prices", operation_id="listPrices")
    async def list_prices(
        self,
        request: Request[Principal, Any, Any],
        asset_id: UUID,
        since: Annotated[dt.date | None, Parameter(query="from")] = None,
        until: Annotated[dt.date | None, Parameter(query="to")] = None,
    ) -> PriceSeries:
        """Daily closes in [from, to], oldest first."""
        if since and until and since > until:
            raise ApiError(422, "validation_error", "from must not be after to", field="from")
        async with services_of(request.app).reads.connect() as conn:
            if await investments.asset_by_id(conn, asset_id) is None:
                raise asset_not_found()
            rows = await investments.prices_between(conn, asset_id, since, until)
        return PriceSeries(
            asset_id=asset_id,
            items=[PriceOut(date=r.day, close=format_scaled(r.close)) for r in rows],
        )


class PortfolioController(Controller):
    path = "/api/v1/portfolio"
    tags = ["investments"]

    @get("/", operation_id="getPortfolio")
    async def get_portfolio(
        self,
        request: Request[Principal, Any, Any],
        since: Annotated[dt.date | None, Parameter(query="from")] = None,
        until: Annotated[dt.date | None, Parameter(query="to")] = None,
    ) -> PortfolioOut:
        """Your positions at the latest close, with simple and time-weighted returns over [from, to]."""
        if since and until and since > until:
            raise ApiError(422, "validation_error", "from must not be after to", field="from")
        return await portfolio(services_of(request.app), request.user.id, since, until)


class ClientController(Controller):
    path = "/api/v1/clients"
    tags = ["investments"]

    @get("/", operation_id="listClients")
    async def list_clients(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> ClientPage:
        """Admin: clients with positions, each with invested total and current value per currency."""
        after = decode_uuid_cursor("client", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await investments.clients(conn, after, limit + 1)
        grouped: dict[UUID, tuple[str, dict[str, list[int]]]] = {}
        for r in rows:
            _, per_currency = grouped.setdefault(r.client_id, (r.username, {}))
            acc = per_currency.setdefault(r.currency, [0, 0])
            acc[0] += r.invested
            acc[1] += (
                market_value(r.units, exponent(r.currency), r.close) if r.close is not None else 0
            )
        ids = list(grouped)
        items = [
            ClientOut(
                id=client_id,
                username=grouped[client_id][0],
                totals=[
                    CurrencyTotals(
                        currency=c,
                        invested=format_amount(v[0], c),
                        market_value=format_amount(v[1], c),
                    )
                    for c, v in sorted(grouped[client_id][1].items())
                ],
            )
            for client_id in ids[:limit]
        ]
        next_cursor = encode_cursor("client", items[-1].id) if len(ids) > limit else None
        return ClientPage(items=items, next_cursor=next_cursor)

    @get("/{client_id:uuid}/allocations", operation_id="listClientAllocations")
    async def list_client_allocations(
        self,
        request: Request[Principal, Any, Any],
        client_id: UUID,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> InvestmentPage:
        """Admin: a client's allocations and redemptions, newest first."""
        before = decode_int_cursor("allocation", cursor)
        async with services_of(request.app).reads.connect() as conn:
            if not await investments.user_exists(conn, client_id):
                raise ApiError(404, "client_not_found", "No such client.")
            rows = await investments.allocations_for_client(conn, client_id, before, limit + 1)
        items = [
            InvestmentOut(
                id=r.id,
                type=r.type,
                status=r.status,
                account_id=r.account_id,
                asset_id=r.asset_id,
                amount=format_amount(r.amount, r.currency) if r.amount else None,
                quantity=format_scaled(r.quantity) if r.quantity else None,
                price=format_scaled(r.price) if r.price else None,
                currency=r.currency,
                created_at=r.created_at,
                applied_at=r.applied_at,
            )
            for r in rows[:limit]
        ]
        next_cursor = (
            encode_cursor("allocation", rows[limit - 1].seq) if len(rows) > limit else None
        )
        return InvestmentPage(items=items, next_cursor=next_cursor)


class ReportController(Controller):
    path = "/api/v1/reports"
    tags = ["investments"]

    @get("/captado", operation_id="getCaptado")
    async def get_captado(
        self, request: Request[Principal, Any, Any], month: Month, year: Year
    ) -> CaptadoOut:
        """Admin: the month's net inflow (allocations minus redemptions), total, by asset and by client."""
        return await captado_report(services_of(request.app), year, month)


@websocket("/ws/captado", opt={"operation_id": "followCaptado"})
async def follow_captado(socket: WebSocket[Principal, Any, Any], month: int, year: int) -> None:
    """Sends the month's captado on connect and again after every allocation or redemption applied."""
    services = services_of(socket.app)
    try:
        month_bounds(year, month)
    except Exception as exc:
        await socket.close(code=1008, reason=str(exc)[:120])
        return
    await socket.accept()
    channels = socket.app.plugins.get(ChannelsPlugin)
    async with channels.start_subscription(
        [channel(CAPTADO_CHANNEL, services.redis)]
    ) as subscriber:
        await socket.send_bytes(msgspec.json.encode(await captado_report(services, year, month)))
        async for message in subscriber.iter_events():
            touched = json.loads(message)
            if (touched.get("year"), touched.get("month")) != (year, month):
                continue
            # Coalesce a burst of updates into one send.
            await asyncio.sleep(0.05)
            await socket.send_bytes(
                msgspec.json.encode(await captado_report(services, year, month))
            )
