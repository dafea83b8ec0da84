"""Investment rules: unit arithmetic and rounding, allocations/redemptions, returns, captado."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest

from domain.apply import Applied, Holdings, Rejected, apply_batch
from domain.errors import DomainError
from domain.investments import Position, proceeds_for_units, units_for_amount, units_for_proceeds
from domain.model import Account, AccountKind, Operation, OperationType
from domain.returns import (
    DailyValue,
    Trade,
    captado,
    carried_forward,
    combine,
    daily_values,
    days_between,
    format_scaled,
    month_bounds,
    parse_scaled,
    simple_return,
    time_weighted_return,
)

CASH, CUSTODY, ASSET = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)


def test_unit_rounding_favours_no_one_by_more_than_a_step() -> None:
    price = parse_scaled("3.00000000", "close")  # 3.00 per unit
    # 10.00 buys 3.33333333 units (rounded down), the whole 10.00 is invested.
    assert units_for_amount(1000, 2, price) == 333_333_333
    # Selling 3.33333333 units at 3.00 raises 9.99 (rounded down to the cent).
    assert proceeds_for_units(333_333_333, 2, price) == 999
    # Raising exactly 10.00 needs 3.33333334 units (rounded up).
    assert units_for_proceeds(1000, 2, price) == 333_333_334
    # JPY has no minor unit: 1000 yen at 7.5 -> 133.33333333 units.
    assert units_for_amount(1000, 0, parse_scaled("7.5", "close")) == 13_333_333_333


def test_parse_and_format_scaled() -> None:
    assert parse_scaled("12.5", "close") == 1_250_000_000
    assert parse_scaled(Decimal("0.00000001"), "quantity") == 1
    assert format_scaled(1_250_000_000) == "12.50000000"
    for bad in ("0", "-1", "1.123456789", "1e3", "abc", "NaN"):
        with pytest.raises(DomainError) as info:
            parse_scaled(bad, "close")
        assert info.value.field == "close"


def _state(cash: int, custody: int = 0) -> dict[uuid.UUID, Account]:
    return {
        CASH: Account(CASH, AccountKind.CHECKING, "USD", cash),
        CUSTODY: Account(CUSTODY, AccountKind.CUSTODY, "USD", custody),
    }


def _holdings(price: int | None, units: int = 0, invested: int = 0) -> Holdings:
    return Holdings(
        positions={(CASH, ASSET): Position(CASH, ASSET, units, invested)} if units else {},
        prices={ASSET: price} if price else {},
        custody={"USD": CUSTODY},
        asset_currencies={ASSET: "USD"},
    )


def op(kind: OperationType, amount: int, quantity: int | None = None, n: int = 10) -> Operation:
    return Operation(uuid.UUID(int=n), kind, CASH, amount, "USD", asset_id=ASSET, quantity=quantity)


def test_allocation_then_redemptions_in_one_batch() -> None:
    price = parse_scaled("25", "close")
    ops = [
        op(OperationType.ALLOCATION, 10_000, n=10),  # 100.00 -> 4 units
        op(OperationType.REDEMPTION, 0, quantity=100_000_000, n=11),  # 1 unit -> 25.00
        op(OperationType.REDEMPTION, 5_000, n=12),  # 50.00 -> 2 units
        op(OperationType.REDEMPTION, 0, quantity=200_000_000, n=13),  # 2 units: only 1 left
        op(OperationType.ALLOCATION, 90_000, n=14),  # more cash than there is
    ]
    outcomes, changed = apply_batch(ops, _state(10_000), {}, _holdings(price))
    assert [type(o).__name__ for o in outcomes] == [
        "Applied",
        "Applied",
        "Applied",
        "Rejected",
        "Rejected",
    ]
    assert isinstance(outcomes[3], Rejected) and outcomes[3].code == "insufficient_units"
    assert isinstance(outcomes[4], Rejected) and outcomes[4].code == "insufficient_funds"
    last = outcomes[2]
    assert isinstance(last, Applied) and last.position is not None
    assert last.position.units_after == 100_000_000
    assert last.position.invested_after == 2_500  # average cost: a quarter of 100.00 left
    assert changed[CASH].balance == 10_000 - 10_000 + 2_500 + 5_000
    assert changed[CUSTODY].balance == 10_000 - 2_500 - 5_000
    assert sum(a.balance for a in changed.values()) == 10_000  # nothing created or destroyed


def test_investment_failure_codes() -> None:
    outcomes, _ = apply_batch(
        [op(OperationType.ALLOCATION, 100)], _state(1_000), {}, _holdings(None)
    )
    assert isinstance(outcomes[0], Rejected) and outcomes[0].code == "price_unavailable"
    huge = parse_scaled("1000000000", "close")
    outcomes, _ = apply_batch([op(OperationType.ALLOCATION, 1)], _state(1_000), {}, _holdings(huge))
    assert isinstance(outcomes[0], Rejected) and outcomes[0].code == "amount_too_small"
    other = Operation(
        uuid.UUID(int=9), OperationType.ALLOCATION, CASH, 100, "USD", asset_id=uuid.UUID(int=99)
    )
    outcomes, _ = apply_batch([other], _state(1_000), {}, _holdings(100))
    assert isinstance(outcomes[0], Rejected) and outcomes[0].code == "asset_not_found"


D1, D2, D3, D4 = (dt.date(2026, 3, d) for d in (2, 3, 4, 5))
A, B, CLIENT = uuid.UUID(int=101), uuid.UUID(int=102), uuid.UUID(int=7)


def test_returns_against_a_hand_worked_fixture() -> None:
    """Two assets, four days, day 3 without closes (carried forward), B first priced on day 2.

    A: closes 10.00, 11.00, -, 12.10; buys 100.00 on D1 (10 units), 55.00 on D2 (5 units).
    B: closes -, 5.00, -, 4.00; buys 50.00 on D2 (10 units).
    """
    days = days_between(D1, D4)
    closes_a = {
        D1: parse_scaled("10", "c"),
        D2: parse_scaled("11", "c"),
        D4: parse_scaled("12.10", "c"),
    }
    closes_b = {D2: parse_scaled("5", "c"), D4: parse_scaled("4", "c")}
    assert carried_forward(closes_b, days) == {
        D1: None,
        D2: closes_b[D2],
        D3: closes_b[D2],
        D4: closes_b[D4],
    }
    trades_a = [
        Trade(D1, A, CLIENT, "USD", 10_000, 1_000_000_000),
        Trade(D2, A, CLIENT, "USD", 5_500, 500_000_000),
    ]
    trades_b = [Trade(D2, B, CLIENT, "USD", 5_000, 1_000_000_000)]
    series_a = daily_values(trades_a, closes_a, days, 2)
    series_b = daily_values(trades_b, closes_b, days, 2)
    assert series_a == [
        DailyValue(D1, 10_000, 10_000),
        DailyValue(D2, 16_500, 5_500),
        DailyValue(D3, 16_500, 0),
        DailyValue(D4, 18_150, 0),
    ]
    assert [p.day for p in series_b] == [D2, D3, D4]  # no value before the first close
    assert time_weighted_return(series_a) == Decimal("0.210000")  # 1.1 x 1.0 x 1.1 - 1
    assert time_weighted_return(series_b) == Decimal("-0.200000")
    assert time_weighted_return(combine([series_a, series_b])) == Decimal("0.133256")
    assert simple_return(15_500, 18_150) == Decimal("0.170968")
    assert simple_return(0, 100) is None
    assert time_weighted_return([DailyValue(D1, 100, 100)]) is None


def test_captado_nets_redemptions_per_currency() -> None:
    other = uuid.UUID(int=8)
    report = captado(
        [
            Trade(D1, A, CLIENT, "USD", 10_000, 1),
            Trade(D2, A, other, "USD", -2_500, -1),
            Trade(D2, B, CLIENT, "BRL", 7_000, 1),
        ]
    )
    assert report.total == {"USD": 7_500, "BRL": 7_000}
    assert report.by_asset == {A: 7_500, B: 7_000}
    assert report.by_client == {
        (CLIENT, "USD"): 10_000,
        (other, "USD"): -2_500,
        (CLIENT, "BRL"): 7_000,
    }


def test_month_bounds() -> None:
    assert month_bounds(2026, 12) == (
        dt.datetime(2026, 12, 1, tzinfo=dt.UTC),
        dt.datetime(2027, 1, 1, tzinfo=dt.UTC),
    )
    for year, month in ((2026, 0), (2026, 13), (1999, 5)):
        with pytest.raises(DomainError):
            month_bounds(year, month)
