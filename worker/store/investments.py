"""Investment storage: assets, daily closes, positions and the trades reports are built from."""

from __future__ import annotations

import csv
import datetime as dt
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.errors import DomainError
from domain.returns import Trade, parse_scaled
from worker.store.db import UNIQUE_VIOLATION, sqlstate
from worker.store.queries import Record, new_id
from worker.store.tables import accounts, assets, operations, positions, prices, users

INVESTMENT_TYPES = ("allocation", "redemption")


class AssetExists(Exception):
    """The ticker is taken."""


# ---------------------------------------------------------------- assets and prices


async def create_asset(
    conn: AsyncConnection, ticker: str, name: str, kind: str, currency: str
) -> Record:
    try:
        return (
            await conn.execute(
                insert(assets)
                .values(id=new_id(), ticker=ticker.upper(), name=name, kind=kind, currency=currency)
                .returning(*assets.c)
            )
        ).one()
    except IntegrityError as exc:
        if sqlstate(exc) == UNIQUE_VIOLATION:
            raise AssetExists(ticker) from exc
        raise


async def list_assets(conn: AsyncConnection, after: UUID | None, limit: int) -> Sequence[Record]:
    query = sa.select(*assets.c)
    if after is not None:
        query = query.where(assets.c.id > after)
    return (await conn.execute(query.order_by(assets.c.id).limit(limit))).all()


async def asset_by_id(conn: AsyncConnection, asset_id: UUID) -> Record | None:
    return (await conn.execute(sa.select(*assets.c).where(assets.c.id == asset_id))).one_or_none()


def _upsert_prices_statement(rows: list[dict[str, Any]]) -> sa.Insert:
    stmt = insert(prices).values(rows)
    return stmt.on_conflict_do_update(
        index_elements=["asset_id", "day"],
        set_={"close": stmt.excluded.close, "updated_at": sa.func.now()},
    )


async def upsert_prices(
    conn: AsyncConnection, asset_id: UUID, closes: Sequence[tuple[dt.date, int]]
) -> int:
    """Insert or replace closes in one statement (a repeated date in the input: the last wins)."""
    by_day = dict(closes)
    rows = [
        {"asset_id": asset_id, "day": day, "close": close} for day, close in sorted(by_day.items())
    ]
    if rows:
        await conn.execute(_upsert_prices_statement(rows))
    return len(rows)


async def prices_between(
    conn: AsyncConnection, asset_id: UUID, since: dt.date | None, until: dt.date | None
) -> Sequence[Record]:
    query = sa.select(prices.c.day, prices.c.close).where(prices.c.asset_id == asset_id)
    if since is not None:
        query = query.where(prices.c.day >= since)
    if until is not None:
        query = query.where(prices.c.day <= until)
    return (await conn.execute(query.order_by(prices.c.day))).all()


async def closes_for(
    conn: AsyncConnection, asset_ids: Iterable[UUID], since: dt.date, until: dt.date
) -> dict[UUID, dict[dt.date, int]]:
    """Closes in [since, until] plus the last one before `since`, so the first days can carry it."""
    ids = list(set(asset_ids))
    if not ids:
        return {}
    columns = (prices.c.asset_id, prices.c.day, prices.c.close)
    last_before = (
        sa.select(*columns)
        .where(prices.c.asset_id.in_(ids), prices.c.day < since)
        .distinct(prices.c.asset_id)
        .order_by(prices.c.asset_id, prices.c.day.desc())
    )
    inside = sa.select(*columns).where(
        prices.c.asset_id.in_(ids), prices.c.day >= since, prices.c.day <= until
    )
    result: dict[UUID, dict[dt.date, int]] = {i: {} for i in ids}
    for query in (last_before, inside):
        for row in (await conn.execute(query)).all():
            result[row.asset_id][row.day] = row.close
    return result


@dataclass(frozen=True)
class CsvPrice:
    line: int
    ticker: str
    day: dt.date
    close: int


class PriceFileError(ValueError):
    """A bad price file; the message names the line. Nothing was imported."""


def parse_price_csv(text: str) -> list[CsvPrice]:
    """`ticker,date,close` with a header line; every row is checked before anything is written."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip().lower() for h in header] != ["ticker", "date", "close"]:
        raise PriceFileError("line 1: the header must be exactly: ticker,date,close")
    rows: list[CsvPrice] = []
    for line, record in enumerate(reader, start=2):
        if not record or all(not cell.strip() for cell in record):
            continue
        if len(record) != 3:
            raise PriceFileError(
                f"line {line}: expected 3 columns (ticker,date,close), got {len(record)}"
            )
        ticker, day_text, close_text = (cell.strip() for cell in record)
        if not ticker:
            raise PriceFileError(f"line {line}: the ticker is empty")
        try:
            day = dt.date.fromisoformat(day_text)
        except ValueError:
            raise PriceFileError(f"line {line}: {day_text!r} is not a date (YYYY-MM-DD)") from None
        try:
            close = parse_scaled(close_text, "close")
        except DomainError as exc:
            raise PriceFileError(f"line {line}: {exc.message}") from None
        rows.append(CsvPrice(line, ticker.upper(), day, close))
    if not rows:
        raise PriceFileError("the file has no price rows")
    return rows


def import_prices(conn: Connection, rows: Sequence[CsvPrice]) -> int:
    """All rows in the caller's transaction, or none: an unknown ticker names its line."""
    tickers = {r.ticker for r in rows}
    known = dict(
        conn.execute(
            sa.select(assets.c.ticker, assets.c.id).where(assets.c.ticker.in_(tickers))
        ).all()
    )
    for r in rows:
        if r.ticker not in known:
            raise PriceFileError(f"line {r.line}: unknown ticker {r.ticker!r}")
    by_key = {(known[r.ticker], r.day): r.close for r in rows}
    values = [{"asset_id": a, "day": d, "close": c} for (a, d), c in by_key.items()]
    for start in range(0, len(values), 5000):
        conn.execute(_upsert_prices_statement(values[start : start + 5000]))
    return len(values)


# ---------------------------------------------------------------- positions and trades

_latest_close = (
    sa.select(prices.c.close)
    .where(prices.c.asset_id == positions.c.asset_id, prices.c.day <= sa.func.current_date())
    .order_by(prices.c.day.desc())
    .limit(1)
    .scalar_subquery()
)


async def positions_for_owner(conn: AsyncConnection, owner_id: UUID) -> Sequence[Record]:
    """Positions of the owner's accounts with the asset and its latest close (None if unpriced)."""
    return (
        await conn.execute(
            sa.select(
                positions.c.account_id,
                positions.c.asset_id,
                positions.c.units,
                positions.c.invested,
                assets.c.ticker,
                assets.c.name,
                assets.c.currency,
                _latest_close.label("close"),
            )
            .join(accounts, accounts.c.id == positions.c.account_id)
            .join(assets, assets.c.id == positions.c.asset_id)
            .where(accounts.c.owner_id == owner_id, positions.c.units > 0)
            .order_by(assets.c.ticker, positions.c.account_id)
        )
    ).all()


def _trade_columns() -> tuple[Any, ...]:
    signed = sa.case((operations.c.type == "allocation", 1), else_=-1)
    return (
        sa.cast(sa.func.timezone("UTC", operations.c.applied_at), sa.Date).label("day"),
        operations.c.asset_id,
        accounts.c.owner_id,
        operations.c.currency,
        (operations.c.amount * signed).label("cash"),
        (operations.c.quantity * signed).label("units"),
    )


def _trades_query() -> sa.Select[Any]:
    return (
        sa.select(*_trade_columns())
        .join(accounts, accounts.c.id == operations.c.account_id)
        .where(operations.c.type.in_(INVESTMENT_TYPES), operations.c.status == "succeeded")
    )


def _as_trades(rows: Iterable[Record]) -> list[Trade]:
    return [Trade(r.day, r.asset_id, r.owner_id, r.currency, r.cash, r.units) for r in rows]


async def trades_for_owner(conn: AsyncConnection, owner_id: UUID) -> list[Trade]:
    rows = (await conn.execute(_trades_query().where(accounts.c.owner_id == owner_id))).all()
    return _as_trades(rows)


async def trades_between(
    conn: AsyncConnection, start: dt.datetime, end: dt.datetime
) -> list[Trade]:
    """Applied allocations and redemptions with applied_at in [start, end) (the captado month)."""
    rows = (
        await conn.execute(
            _trades_query().where(operations.c.applied_at >= start, operations.c.applied_at < end)
        )
    ).all()
    return _as_trades(rows)


async def clients(conn: AsyncConnection, after: UUID | None, limit: int) -> Sequence[Record]:
    """A page of users with positions: one row per position (user, currency, units, invested,
    latest close), for the caller to total per currency."""
    # Market value needs the currency exponent, which lives in domain/: computed by the caller.
    query = (
        sa.select(
            users.c.id.label("client_id"),
            users.c.username,
            assets.c.currency,
            positions.c.units,
            positions.c.invested,
            _latest_close.label("close"),
        )
        .join(accounts, accounts.c.owner_id == users.c.id)
        .join(positions, positions.c.account_id == accounts.c.id)
        .join(assets, assets.c.id == positions.c.asset_id)
    )
    page = sa.select(users.c.id).where(
        sa.exists().where(
            accounts.c.owner_id == users.c.id, positions.c.account_id == accounts.c.id
        )
    )
    if after is not None:
        page = page.where(users.c.id > after)
    page_ids = page.order_by(users.c.id).limit(limit).scalar_subquery()
    return (await conn.execute(query.where(users.c.id.in_(page_ids)).order_by(users.c.id))).all()


async def allocations_for_client(
    conn: AsyncConnection, client_id: UUID, before_seq: int | None, limit: int
) -> Sequence[Record]:
    query = (
        sa.select(
            operations.c.id,
            operations.c.seq,
            operations.c.type,
            operations.c.status,
            operations.c.account_id,
            operations.c.asset_id,
            operations.c.amount,
            operations.c.quantity,
            operations.c.price,
            operations.c.currency,
            operations.c.created_at,
            operations.c.applied_at,
        )
        .join(accounts, accounts.c.id == operations.c.account_id)
        .where(accounts.c.owner_id == client_id, operations.c.type.in_(INVESTMENT_TYPES))
    )
    if before_seq is not None:
        query = query.where(operations.c.seq < before_seq)
    return (await conn.execute(query.order_by(operations.c.seq.desc()).limit(limit))).all()


async def names_for(
    conn: AsyncConnection, asset_ids: set[UUID], user_ids: set[UUID]
) -> tuple[dict[UUID, tuple[str, str]], dict[UUID, str]]:
    """(asset id -> (ticker, currency)), (user id -> username) for a report's rows."""
    tickers: dict[UUID, tuple[str, str]] = {}
    names: dict[UUID, str] = {}
    if asset_ids:
        rows = (
            await conn.execute(
                sa.select(assets.c.id, assets.c.ticker, assets.c.currency).where(
                    assets.c.id.in_(asset_ids)
                )
            )
        ).all()
        tickers = {r.id: (r.ticker, r.currency) for r in rows}
    if user_ids:
        user_rows = (
            await conn.execute(
                sa.select(users.c.id, users.c.username).where(users.c.id.in_(user_ids))
            )
        ).all()
        names = {r.id: r.username for r in user_rows}
    return tickers, names


async def user_exists(conn: AsyncConnection, user_id: UUID) -> bool:
    return (
        await conn.execute(sa.select(users.c.id).where(users.c.id == user_id))
    ).first() is not None
