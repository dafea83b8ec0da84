"""Holdings valued at their latest close: totals per currency, per client, and portfolios
(domain/investments.py, domain/returns.py). Pure rules, no I/O."""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from decimal import Decimal

from domain.investments import (
    ClientTotals,
    CurrencyTotal,
    client_totals,
    currency_totals,
    holding_value,
)
from domain.returns import Trade, parse_scaled, portfolio_period, value_portfolio

A, B, C = uuid.UUID(int=3), uuid.UUID(int=4), uuid.UUID(int=5)
ALICE, BOB = uuid.UUID(int=10), uuid.UUID(int=11)
D1, D2, D3, D4 = (dt.date(2026, 11, d) for d in (2, 3, 4, 5))


@dataclass(frozen=True)
class Held:
    """A stored position as the store reads it (asset, currency, units e8, invested, close e8)."""

    asset_id: uuid.UUID
    currency: str
    units: int
    invested: int
    close: int | None


@dataclass(frozen=True)
class ClientHeld:
    client_id: uuid.UUID
    username: str
    currency: str
    units: int
    invested: int
    close: int | None


def units(text: str) -> int:
    return parse_scaled(text, "units")


def close(text: str) -> int:
    return parse_scaled(text, "close")


def test_a_holding_is_worth_its_units_at_the_close_rounded_down() -> None:
    assert holding_value(Held(A, "USD", units("3.33333333"), 1000, close("3"))) == 999
    assert holding_value(Held(A, "JPY", units("1.5"), 150, close("101"))) == 151  # 151.5 -> 151
    assert holding_value(Held(A, "USD", units("1"), 100, None)) is None  # no close yet


def test_currency_totals_never_add_currencies_and_count_unpriced_holdings_at_nothing() -> None:
    held = [
        Held(A, "USD", units("10"), 10_000, close("12.10")),
        Held(C, "BRL", units("1"), 700, None),
        Held(B, "USD", units("10"), 5_000, close("4")),
    ]
    assert currency_totals(held) == [
        CurrencyTotal("BRL", invested=700, market_value=0),
        CurrencyTotal("USD", invested=15_000, market_value=16_100),
    ]
    assert currency_totals([]) == []


def test_client_totals_group_each_clients_holdings_in_the_order_clients_come() -> None:
    rows = [
        ClientHeld(BOB, "bob", "USD", units("2"), 2_000, close("12.10")),
        ClientHeld(BOB, "bob", "USD", units("1"), 900, close("4")),
        ClientHeld(BOB, "bob", "EUR", units("1"), 300, None),
        ClientHeld(ALICE, "alice", "USD", units("10"), 10_000, close("12.10")),
    ]
    assert client_totals(rows) == [
        ClientTotals(
            BOB,
            "bob",
            [CurrencyTotal("EUR", 300, 0), CurrencyTotal("USD", 2_900, 2_420 + 400)],
        ),
        ClientTotals(ALICE, "alice", [CurrencyTotal("USD", 10_000, 12_100)]),
    ]


def test_the_portfolio_period_defaults_to_the_first_trade_until_today() -> None:
    trades = [Trade(D2, A, ALICE, "USD", 100, 1), Trade(D1, A, ALICE, "USD", 100, 1)]
    assert portfolio_period(None, None, trades, D4) == (D1, D4)
    assert portfolio_period(None, None, [], D4) == (D4, D4)
    assert portfolio_period(D2, None, trades, D4) == (D2, D4)
    assert portfolio_period(None, D3, trades, D4) == (D1, D3)


def test_a_portfolio_against_a_hand_worked_fixture() -> None:
    """The fixture of test_investments.py `test_returns_against_a_hand_worked_fixture`, held:

    A (USD): closes 10.00, 11.00, -, 12.10; bought 100.00 on D1 (10 units, account X) and 55.00 on
    D2 (5 units, account Y). B (USD): closes -, 5.00, -, 4.00; bought 50.00 on D2 (10 units).
    C (BRL): 1 unit for 7.00, never priced.
    """
    held = [
        Held(A, "USD", units("10"), 10_000, close("12.10")),  # account X
        Held(A, "USD", units("5"), 5_500, close("12.10")),  # account Y
        Held(B, "USD", units("10"), 5_000, close("4")),
        Held(C, "BRL", units("1"), 700, None),
    ]
    trades = [
        Trade(D1, A, ALICE, "USD", 10_000, units("10")),
        Trade(D2, A, ALICE, "USD", 5_500, units("5")),
        Trade(D2, B, ALICE, "USD", 5_000, units("10")),
    ]
    closes = {
        A: {D1: close("10"), D2: close("11"), D4: close("12.10")},
        B: {D2: close("5"), D4: close("4")},
    }
    portfolio = value_portfolio(held, trades, closes, D1, D4)
    assert (portfolio.since, portfolio.until) == (D1, D4)
    assert [
        (h.market_value, h.simple_return, h.time_weighted_return) for h in portfolio.holdings
    ] == [
        # Each position of A has A's time-weighted return (over every account holding it).
        (12_100, Decimal("0.210000"), Decimal("0.210000")),
        (6_050, Decimal("0.100000"), Decimal("0.210000")),
        (4_000, Decimal("-0.200000"), Decimal("-0.200000")),
        (None, None, None),
    ]
    assert portfolio.totals == [
        # Unpriced: worth nothing yet, so all of it looks lost; no day to chain.
        CurrencyTotal("BRL", 700, 0, Decimal("-1.000000"), None),
        # A and B combined per day: 1.1 x (16500 + 5000 - 5500 - 5000) / 10000 ... = 0.133256.
        CurrencyTotal("USD", 20_500, 22_150, Decimal("0.080488"), Decimal("0.133256")),
    ]


def test_a_portfolio_over_no_days_still_values_holdings() -> None:
    held = [Held(A, "USD", units("1"), 1_000, close("12"))]
    portfolio = value_portfolio(held, [], {}, D4, D1)  # from after to: no day counts
    assert [(h.market_value, h.time_weighted_return) for h in portfolio.holdings] == [(1_200, None)]
    assert portfolio.totals == [CurrencyTotal("USD", 1_000, 1_200, Decimal("0.200000"), None)]
