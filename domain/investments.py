"""Investment rules: unit arithmetic at a price, positions, allocations and redemptions as postings.

Quantities are integers of 10^-8 units ("units_e8") and prices integers of 10^-8 currency units
per unit ("price_e8"), so no float ever touches money.

Rounding (always in the ledger's favour by less than one smallest step, never in the client's
disfavour by more):
- allocation: units bought = floor(amount / price) to 8 decimals; the whole amount is invested.
- redemption by quantity: cash credited = floor(units x price) to the currency's minor unit.
- redemption by amount: units sold = ceil(amount / price) to 8 decimals; exactly the amount is
  credited.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol
from uuid import UUID

from domain.money import exponent

UNIT_SCALE = 10**8  # units and prices carry 8 decimals
PRICE_SCALE = 10**8


@dataclass(frozen=True, slots=True)
class Position:
    """What an account holds of one asset, and the cash put into it (average cost basis)."""

    account_id: UUID
    asset_id: UUID
    units: int  # units_e8
    invested: int  # minor units of the asset's currency


@dataclass(frozen=True, slots=True)
class PositionChange:
    """The effect of an applied allocation or redemption on a position."""

    account_id: UUID
    asset_id: UUID
    units_delta: int
    invested_delta: int
    units_after: int
    invested_after: int
    price: int  # price_e8 used
    cash: int  # minor units moved (positive)


def _scale(exponent: int) -> int:
    # minor units -> e16 scale: amount_major * 10^16 = amount_minor * 10^(16 - exponent)
    return int(10 ** (16 - exponent))


def units_for_amount(amount: int, exponent: int, price: int) -> int:
    """Units (e8) bought with `amount` minor units at `price` (e8), rounded down."""
    if price <= 0:
        raise ValueError(f"price must be positive, got {price}")
    return (amount * _scale(exponent)) // price


def units_for_proceeds(amount: int, exponent: int, price: int) -> int:
    """Units (e8) to sell so that exactly `amount` minor units are raised, rounded up."""
    if price <= 0:
        raise ValueError(f"price must be positive, got {price}")
    return -((-amount * _scale(exponent)) // price)


def proceeds_for_units(units: int, exponent: int, price: int) -> int:
    """Minor units raised by selling `units` (e8) at `price` (e8), rounded down."""
    return (units * price) // _scale(exponent)


def market_value(units: int, exponent: int, price: int) -> int:
    """Value of a holding in minor units at a price, rounded down (as a sale would be)."""
    return proceeds_for_units(units, exponent, price)


def allocate(position: Position, amount: int, exponent: int, price: int) -> PositionChange | None:
    """Buy with `amount`; None when the amount buys less than one smallest unit."""
    units = units_for_amount(amount, exponent, price)
    if units <= 0:
        return None
    return PositionChange(
        account_id=position.account_id,
        asset_id=position.asset_id,
        units_delta=units,
        invested_delta=amount,
        units_after=position.units + units,
        invested_after=position.invested + amount,
        price=price,
        cash=amount,
    )


def redeem(
    position: Position,
    exponent: int,
    price: int,
    *,
    units: int | None = None,
    amount: int | None = None,
) -> PositionChange | None:
    """Sell by quantity or by amount; None when the position holds too few units (or the sale
    raises no cash). The cost basis shrinks in proportion to the units sold (average cost)."""
    if (units is None) == (amount is None):
        raise ValueError("redeem needs exactly one of units or amount")
    if units is not None:
        sold, cash = units, proceeds_for_units(units, exponent, price)
    else:
        assert amount is not None
        sold, cash = units_for_proceeds(amount, exponent, price), amount
    if sold <= 0 or cash <= 0 or sold > position.units:
        return None
    released = (
        position.invested
        if sold == position.units
        else (position.invested * sold) // position.units
    )
    return PositionChange(
        account_id=position.account_id,
        asset_id=position.asset_id,
        units_delta=-sold,
        invested_delta=-released,
        units_after=position.units - sold,
        invested_after=position.invested - released,
        price=price,
        cash=cash,
    )


# ---------------------------------------------------------------- holdings at their latest close


class Holding(Protocol):
    """What is held of one asset in one account (a stored position, read with its asset's
    currency and latest close; None while the asset has no close)."""

    @property
    def currency(self) -> str: ...
    @property
    def units(self) -> int: ...
    @property
    def invested(self) -> int: ...
    @property
    def close(self) -> int | None: ...


class ClientHolding(Holding, Protocol):
    """A holding of one client (admin reports)."""

    @property
    def client_id(self) -> UUID: ...
    @property
    def username(self) -> str: ...


def holding_value(holding: Holding) -> int | None:
    """Market value in minor units at the latest close (rounded down, as a sale would be); None
    while the asset has no close."""
    if holding.close is None:
        return None
    return market_value(holding.units, exponent(holding.currency), holding.close)


@dataclass(frozen=True, slots=True)
class CurrencyTotal:
    """Holdings of one currency summed (money of different currencies is never added): the cash
    invested and the market value, unpriced holdings counting nothing. Portfolios add returns."""

    currency: str
    invested: int
    market_value: int
    simple_return: Decimal | None = None
    time_weighted_return: Decimal | None = None


def currency_totals(holdings: Iterable[Holding]) -> list[CurrencyTotal]:
    """Totals per currency, by currency code."""
    sums: dict[str, list[int]] = {}
    for h in holdings:
        acc = sums.setdefault(h.currency, [0, 0])
        acc[0] += h.invested
        acc[1] += holding_value(h) or 0
    return [CurrencyTotal(c, invested, value) for c, (invested, value) in sorted(sums.items())]


@dataclass(frozen=True, slots=True)
class ClientTotals:
    client_id: UUID
    username: str
    totals: list[CurrencyTotal]


def client_totals(holdings: Iterable[ClientHolding]) -> list[ClientTotals]:
    """Each client's totals per currency, clients in the order they first appear."""
    by_client: dict[UUID, tuple[str, list[ClientHolding]]] = {}
    for h in holdings:
        by_client.setdefault(h.client_id, (h.username, []))[1].append(h)
    return [
        ClientTotals(client_id, username, currency_totals(held))
        for client_id, (username, held) in by_client.items()
    ]
