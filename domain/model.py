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
    # Holds reserve money on account_id; a capture settles (part of) one, a void releases it.
    HOLD = "hold"
    CAPTURE = "capture"
    VOID = "void"
    # Takes back (part of) an earlier deposit, withdrawal, transfer or capture.
    REVERSAL = "reversal"
    # Account controls: they move no money, and apply in their partition's order.
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    CLOSE = "close"


INVESTMENT_TYPES: frozenset[OperationType] = frozenset(
    {OperationType.ALLOCATION, OperationType.REDEMPTION}
)


CONTROL_TYPES: frozenset[OperationType] = frozenset(
    {OperationType.FREEZE, OperationType.UNFREEZE, OperationType.CLOSE}
)
# What a reversal may take back.
REVERSIBLE_TYPES: frozenset[OperationType] = frozenset(
    {
        OperationType.DEPOSIT,
        OperationType.WITHDRAWAL,
        OperationType.TRANSFER,
        OperationType.CAPTURE,
    }
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

    `overdraft_limit` (>= 0) is how far below zero a customer account may go; `held` (>= 0), the
    open holds' total, is not available to debits: a debit needs
    balance - held - amount >= -overdraft_limit. A frozen account takes no debit, a closed one
    no operation at all.
    """

    id: UUID
    kind: AccountKind
    currency: str
    balance: int
    overdraft_limit: int = 0
    held: int = 0
    frozen: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        # A negative limit would turn the floor into a minimum balance above zero, silently.
        if self.overdraft_limit < 0:
            raise ValueError(f"overdraft_limit must be >= 0, got {self.overdraft_limit}")
        if self.held < 0:
            raise ValueError(f"held must be >= 0, got {self.held}")

    @property
    def available(self) -> int:
        """What debits may still spend, the overdraft included."""
        return self.balance - self.held + self.overdraft_limit


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
    # A capture or void: the hold (its hold operation's id). A hold: seconds until it expires.
    hold_id: UUID | None = None
    expires_in: int | None = None
    # A void the expiry sweep submitted: the hold ends `expired`, not `voided`.
    expiry: bool = False
    # A reversal: the operation it takes back (`amount` 0: all that is left of it).
    reversal_of: UUID | None = None


@dataclass(frozen=True, slots=True)
class Posting:
    """One ledger entry: signed minor units (debits negative) and the balance it left."""

    account_id: UUID
    amount: int
    balance_after: int
