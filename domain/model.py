"""Ledger model: accounts, operations and postings as immutable values."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from uuid import UUID


class AccountKind(StrEnum):
    CHECKING = "checking"
    SAVINGS = "savings"
    # System accounts, one per currency: money enters and leaves the ledger through WORLD,
    # investments are held against CUSTODY. Neither has a balance floor.
    WORLD = "world"
    CUSTODY = "custody"


CUSTOMER_KINDS: frozenset[AccountKind] = frozenset({AccountKind.CHECKING, AccountKind.SAVINGS})


class OperationType(StrEnum):
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER = "transfer"
    # Investments: cash <-> the currency's custody account, plus a change of position.
    ALLOCATION = "allocation"
    REDEMPTION = "redemption"


INVESTMENT_TYPES: frozenset[OperationType] = frozenset(
    {OperationType.ALLOCATION, OperationType.REDEMPTION}
)


class OperationStatus(StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES: frozenset[OperationStatus] = frozenset(
    {OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.CANCELLED}
)


@dataclass(frozen=True, slots=True)
class Account:
    """An account and its balance in minor units of `currency`.

    `overdraft_limit` (>= 0) is how far below zero a customer account may go.
    """

    id: UUID
    kind: AccountKind
    currency: str
    balance: int
    overdraft_limit: int = 0

    def __post_init__(self) -> None:
        # A negative limit would turn the floor into a minimum balance above zero, silently.
        if self.overdraft_limit < 0:
            raise ValueError(f"overdraft_limit must be >= 0, got {self.overdraft_limit}")


@dataclass(frozen=True, slots=True)
class Operation:
    """A request to move `amount` minor units of `currency`.

    `account_id` is the account the operation is about: the credited account of a deposit,
    the debited account of a withdrawal or transfer. `to_account_id` is a transfer's
    credited account and is None for the other types.
    """

    id: UUID
    type: OperationType
    account_id: UUID
    amount: int
    currency: str
    to_account_id: UUID | None = None
    # Investments only: the asset, and for a redemption by quantity the units_e8 to sell
    # (then `amount` is 0 until the sale is priced).
    asset_id: UUID | None = None
    quantity: int | None = None


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger entry: signed minor units (debits negative) and the balance it left."""

    account_id: UUID
    amount: int
    balance_after: int
