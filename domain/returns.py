"""Investment reporting rules: prices and quantities, returns (simple and time-weighted), captado.

Conventions (documented for users in docs/api.md, Investments):
- A price is a daily close with up to 8 decimals; a quantity has up to 8 decimals.
- A day without a close (weekend, holiday, missing data) is valued at the last earlier close
  (carried forward); days before an asset's first close have no value and no return.
- Allocations and redemptions execute at the day's close, so a day's flow is inside that day's
  closing value: the day's return is (V_d - F_d) / V_(d-1) - 1, with F_d the net cash put in
  (allocations positive, redemptions negative). The time-weighted return chains daily returns:
  TWR = prod(1 + r_d) - 1, which removes the effect of when and how much money came in.
- Returns are Decimals rounded half-even to 6 decimal places (0.012345 = 1.2345%).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Protocol
from uuid import UUID

from domain.errors import DomainError
from domain.investments import (
    PRICE_SCALE,
    UNIT_SCALE,
    CurrencyTotal,
    Holding,
    currency_totals,
    holding_value,
    market_value,
)
from domain.money import exponent

RETURN_PLACES = Decimal("0.000001")
MAX_PRICE = 10**12 * PRICE_SCALE  # a trillion per unit: far above any real close
_PLAIN = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]{1,8})?")


def parse_scaled(value: Decimal | str, field_name: str, scale: int = UNIT_SCALE) -> int:
    """A positive decimal with at most 8 decimals as an integer of 10^-8 (prices, quantities)."""
    if isinstance(value, str):
        if _PLAIN.fullmatch(value) is None:
            raise DomainError(
                "invalid_decimal",
                f"{field_name} must be a plain decimal with at most 8 decimals",
                field_name,
            )
        value = Decimal(value)
    if not isinstance(value, Decimal) or not value.is_finite():
        raise DomainError("invalid_decimal", f"{field_name} must be a finite decimal", field_name)
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -8:
        raise DomainError(
            "invalid_decimal", f"{field_name} has more than 8 decimal places", field_name
        )
    scaled = int(value.scaleb(8))
    if scaled <= 0:
        raise DomainError("invalid_decimal", f"{field_name} must be greater than zero", field_name)
    if scaled > MAX_PRICE:
        raise DomainError("invalid_decimal", f"{field_name} is too large", field_name)
    return scaled


def format_scaled(value: int) -> str:
    """10^-8 integer -> decimal string with 8 places: 150000000 -> "1.50000000"."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), UNIT_SCALE)
    return f"{sign}{whole}.{frac:08d}"


def carried_forward(
    closes: Mapping[dt.date, int], days: Sequence[dt.date]
) -> dict[dt.date, int | None]:
    """The close to value each day at: that day's, else the last earlier one, else None."""
    ordered = sorted(closes.items())
    result: dict[dt.date, int | None] = {}
    i, last = 0, None
    for day in sorted(days):
        while i < len(ordered) and ordered[i][0] <= day:
            last = ordered[i][1]
            i += 1
        result[day] = last
    return result


def days_between(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


def simple_return(invested: int, value: int) -> Decimal | None:
    """(value - invested) / invested; None when nothing is invested."""
    if invested <= 0:
        return None
    with localcontext() as ctx:
        ctx.prec = 28
        return ((Decimal(value) - Decimal(invested)) / Decimal(invested)).quantize(
            RETURN_PLACES, ROUND_HALF_EVEN
        )


@dataclass(frozen=True, slots=True)
class DailyValue:
    """End-of-day value (minor units) of a holding or portfolio and that day's net flow into it."""

    day: dt.date
    value: int
    flow: int = 0


def time_weighted_return(series: Sequence[DailyValue]) -> Decimal | None:
    """Chain daily returns; days that start from nothing only bring money in. None if no day counts."""
    with localcontext() as ctx:
        ctx.prec = 40
        growth = Decimal(1)
        counted = False
        previous: int | None = None
        for point in sorted(series, key=lambda p: p.day):
            if previous is not None and previous > 0:
                growth *= Decimal(point.value - point.flow) / Decimal(previous)
                counted = True
            previous = point.value
        if not counted:
            return None
        return (growth - 1).quantize(RETURN_PLACES, ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class Trade:
    """An applied allocation (+) or redemption (-) of cash, for position histories and captado."""

    day: dt.date
    asset_id: UUID
    client_id: UUID
    currency: str
    cash: int  # signed: allocation positive, redemption negative
    units: int  # signed units_e8


def daily_values(
    trades: Iterable[Trade], closes: Mapping[dt.date, int], days: Sequence[dt.date], exponent: int
) -> list[DailyValue]:
    """One asset's holding valued each day: units held at the close carried forward, plus flows."""
    flow_by_day: dict[dt.date, int] = {}
    ordered = sorted(trades, key=lambda t: t.day)
    prices = carried_forward(closes, days)
    held, j, result = 0, 0, []
    for day in sorted(days):
        while j < len(ordered) and ordered[j].day <= day:
            held += ordered[j].units
            if ordered[j].day == day:
                flow_by_day[day] = flow_by_day.get(day, 0) + ordered[j].cash
            j += 1
        price = prices[day]
        if price is None:
            continue
        result.append(DailyValue(day, market_value(held, exponent, price), flow_by_day.get(day, 0)))
    return result


def combine(series: Iterable[Sequence[DailyValue]]) -> list[DailyValue]:
    """Portfolio series: values and flows summed per day over the holdings."""
    totals: dict[dt.date, list[int]] = {}
    for points in series:
        for p in points:
            acc = totals.setdefault(p.day, [0, 0])
            acc[0] += p.value
            acc[1] += p.flow
    return [DailyValue(day, v, f) for day, (v, f) in sorted(totals.items())]


class HeldAsset(Holding, Protocol):
    """A holding of an asset (portfolios)."""

    @property
    def asset_id(self) -> UUID: ...


def portfolio_period(
    since: dt.date | None, until: dt.date | None, trades: Iterable[Trade], today: dt.date
) -> tuple[dt.date, dt.date]:
    """The days a portfolio's returns cover: [since, until], until defaulting to today and since to
    the first trade's day (or `until` when there is none)."""
    end = until or today
    return since or min((t.day for t in trades), default=end), end


@dataclass(frozen=True, slots=True)
class ValuedHolding:
    """One holding at its latest close (None while unpriced) and the returns of its asset."""

    market_value: int | None
    simple_return: Decimal | None
    time_weighted_return: Decimal | None


@dataclass(frozen=True, slots=True)
class Portfolio:
    since: dt.date
    until: dt.date
    # One per holding, in the order given.
    holdings: list[ValuedHolding]
    # Per currency, by currency code, with both returns.
    totals: list[CurrencyTotal]


def value_portfolio(
    held: Sequence[HeldAsset],
    trades: Sequence[Trade],
    closes: Mapping[UUID, Mapping[dt.date, int]],
    since: dt.date,
    until: dt.date,
) -> Portfolio:
    """Holdings at their latest close with simple returns, and time-weighted returns over
    [since, until] per asset (over every account holding it) and per currency (the assets of a
    currency combined). `closes`: each asset's closes in the period and the last one before it."""
    days = days_between(since, until) if since <= until else []
    series = {
        h.asset_id: daily_values(
            [t for t in trades if t.asset_id == h.asset_id],
            closes.get(h.asset_id, {}),
            days,
            exponent(h.currency),
        )
        for h in held
    }
    currency_of = {h.asset_id: h.currency for h in held}
    valued = []
    for h in held:
        value = holding_value(h)
        valued.append(
            ValuedHolding(
                market_value=value,
                simple_return=simple_return(h.invested, value) if value is not None else None,
                time_weighted_return=time_weighted_return(series[h.asset_id]),
            )
        )
    totals = [
        replace(
            total,
            simple_return=simple_return(total.invested, total.market_value),
            time_weighted_return=time_weighted_return(
                combine(s for a, s in series.items() if currency_of[a] == total.currency)
            ),
        )
        for total in currency_totals(held)
    ]
    return Portfolio(since, until, valued, totals)


@dataclass(frozen=True)
class Captado:
    """A month's net inflow (allocations minus redemptions) in minor units, per currency:
    money of different currencies is never added together."""

    total: dict[str, int] = field(default_factory=dict)
    by_asset: dict[UUID, int] = field(default_factory=dict)
    by_client: dict[tuple[UUID, str], int] = field(default_factory=dict)


def captado(trades: Iterable[Trade]) -> Captado:
    report = Captado()
    for t in trades:
        report.total[t.currency] = report.total.get(t.currency, 0) + t.cash
        report.by_asset[t.asset_id] = report.by_asset.get(t.asset_id, 0) + t.cash
        key = (t.client_id, t.currency)
        report.by_client[key] = report.by_client.get(key, 0) + t.cash
    return report


def month_bounds(year: int, month: int) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a calendar month in UTC; DomainError for an impossible month."""
    if not 1 <= month <= 12:
        raise DomainError("invalid_month", "month must be between 1 and 12", "month")
    if not 2000 <= year <= 2200:
        raise DomainError("invalid_year", "year must be between 2000 and 2200", "year")
    start = dt.datetime(year, month, 1, tzinfo=dt.UTC)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=dt.UTC)
    return start, end
