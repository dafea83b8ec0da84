"""Investments: assets and daily closes, the caller's portfolio, clients (admin) and captado."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Sequence
from functools import partial
from typing import Annotated, Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, WebSocket, get, post, websocket
from litestar.channels import ChannelsPlugin
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from api import reports
from api.auth import Principal
from api.errors import ApiError
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import asset_out, client_out, investment_out, price_series
from api.schemas import (
    AssetCreate,
    AssetOut,
    AssetPage,
    CaptadoOut,
    ClientPage,
    InvestmentPage,
    PortfolioOut,
    PriceSeries,
    PricesUpsert,
    PricesUpserted,
)
from api.state import services_of
from domain.money import exponent
from domain.returns import month_bounds, parse_scaled
from worker.events import CAPTADO_CHANNEL, channel
from worker.store import investments
from worker.store.queries import Record

Month = Annotated[int, Parameter(ge=1, le=12, description="1-12")]
Year = Annotated[int, Parameter(ge=2000, le=2200)]

ASSETS = Keyset.by_id("asset")
CLIENTS = Keyset.by_id("client", "client_id")
ALLOCATIONS = Keyset.by_number("allocation", "seq")


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
        """Every asset, oldest first, in cursor pages (clients and the admin)."""
        fetch = reads(services_of(request.app).reads, investments.list_assets)
        return await page(ASSETS, cursor, limit, fetch, asset_out)

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
        return price_series(asset_id, rows)


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
        return await reports.portfolio(services_of(request.app), request.user.id, since, until)


class ClientController(Controller):
    path = "/api/v1/clients"
    tags = ["investments"]

    @get("/", operation_id="listClients")
    async def list_clients(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> ClientPage:
        """Admin: clients with positions, each with invested total and current value per currency."""
        fetch = partial(reports.clients, services_of(request.app))
        return await page(CLIENTS, cursor, limit, fetch, client_out)

    @get("/{client_id:uuid}/allocations", operation_id="listClientAllocations")
    async def list_client_allocations(
        self,
        request: Request[Principal, Any, Any],
        client_id: UUID,
        limit: Limit = 100,
        cursor: Cursor = None,
    ) -> InvestmentPage:
        """Admin: a client's allocations and redemptions, newest first."""
        services = services_of(request.app)

        async def fetch(before: int | None, n: int) -> Sequence[Record]:
            async with services.reads.connect() as conn:
                if not await investments.user_exists(conn, client_id):
                    raise ApiError(404, "client_not_found", "No such client.")
                return await investments.allocations_for_client(conn, client_id, before, n)

        return await page(ALLOCATIONS, cursor, limit, fetch, investment_out)


class ReportController(Controller):
    path = "/api/v1/reports"
    tags = ["investments"]

    @get("/captado", operation_id="getCaptado")
    async def get_captado(
        self, request: Request[Principal, Any, Any], month: Month, year: Year
    ) -> CaptadoOut:
        """Admin: the month's net inflow (allocations minus redemptions), total, by asset and by client."""
        return await reports.captado_report(services_of(request.app), year, month)


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
        await socket.send_bytes(
            msgspec.json.encode(await reports.captado_report(services, year, month))
        )
        async for message in subscriber.iter_events():
            touched = json.loads(message)
            if (touched.get("year"), touched.get("month")) != (year, month):
                continue
            # Coalesce a burst of updates into one send.
            await asyncio.sleep(0.05)
            await socket.send_bytes(
                msgspec.json.encode(await reports.captado_report(services, year, month))
            )
