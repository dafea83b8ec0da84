"""Apply operations to account balances as double-entry postings, or reject them with a code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

from domain.errors import (
    ACCOUNT_NOT_FOUND,
    BALANCE_LIMIT,
    CURRENCY_MISMATCH,
    INSUFFICIENT_FUNDS,
    SAME_ACCOUNT,
)
from domain.model import CUSTOMER_KINDS, Account, Operation, OperationType, Posting

# Balances are stored as BIGINT (max ~9.2e18); refusing anything beyond 1e18 keeps every
# arithmetic step of the storage layer far from overflow.
MAX_BALANCE = 10**18


@dataclass(frozen=True, slots=True)
class Applied:
    """The operation was booked; `postings` sum to zero, debit first."""

    operation_id: UUID
    postings: tuple[Posting, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The operation failed; `code` is one of the failure codes in domain.errors."""

    operation_id: UUID
    code: str
    message: str


Outcome = Applied | Rejected


def apply_operation(
    op: Operation, balances: Mapping[UUID, Account], world: Mapping[str, UUID]
) -> tuple[Outcome, dict[UUID, Account]]:
    """Apply one operation; return its outcome and the accounts it changed (empty if rejected).

    Deposit moves money world -> account, withdrawal account -> world, transfer
    account -> to_account. Checks run in this order: accounts exist (account_not_found),
    a transfer's accounts differ (same_account), every account is in op.currency
    (currency_mismatch), a debited customer account stays at or above -overdraft_limit
    (insufficient_funds), no balance passes +-MAX_BALANCE (balance_limit_exceeded).

    Raises ValueError for a malformed operation (amount <= 0, a transfer without
    to_account_id, to_account_id on another type) and KeyError when `world` has no entry
    for op.currency or that world account is not in `balances`: callers validate
    operations before queueing them and load every world account they may need.
    Neither argument is modified.
    """
    debit_id, credit_id = _debit_and_credit(op, world, balances)

    for account_id in (op.account_id, op.to_account_id):
        if account_id is not None and account_id not in balances:
            return _reject(op, ACCOUNT_NOT_FOUND, f"account {account_id} not found")
    # Also catches a deposit into, or a withdrawal from, the world account itself.
    if debit_id == credit_id:
        return _reject(op, SAME_ACCOUNT, "the debited and credited accounts are the same")

    debit, credit = balances[debit_id], balances[credit_id]
    for account in (debit, credit):
        if account.currency != op.currency:
            return _reject(
                op,
                CURRENCY_MISMATCH,
                f"account {account.id} holds {account.currency}, the operation is in {op.currency}",
            )

    debit_after = debit.balance - op.amount
    credit_after = credit.balance + op.amount
    if debit.kind in CUSTOMER_KINDS and debit_after < -debit.overdraft_limit:
        return _reject(op, INSUFFICIENT_FUNDS, f"account {debit.id} has insufficient funds")
    for account, after in ((debit, debit_after), (credit, credit_after)):
        if abs(after) > MAX_BALANCE:
            return _reject(op, BALANCE_LIMIT, f"account {account.id} would pass the balance limit")

    postings = (
        Posting(account_id=debit_id, amount=-op.amount, balance_after=debit_after),
        Posting(account_id=credit_id, amount=op.amount, balance_after=credit_after),
    )
    changed = {
        debit_id: _with_balance(debit, debit_after),
        credit_id: _with_balance(credit, credit_after),
    }
    return Applied(operation_id=op.id, postings=postings), changed


def apply_batch(
    ops: Sequence[Operation], balances: Mapping[UUID, Account], world: Mapping[str, UUID]
) -> tuple[list[Outcome], dict[UUID, Account]]:
    """Apply operations in order, each seeing the balances the previous ones left.

    A rejected operation fails alone. Returns the outcomes in input order and the final
    state of every account that received a posting. Raises as apply_operation does.
    """
    current = dict(balances)
    changed: dict[UUID, Account] = {}
    outcomes: list[Outcome] = []
    for op in ops:
        outcome, updated = apply_operation(op, current, world)
        outcomes.append(outcome)
        current.update(updated)
        changed.update(updated)
    return outcomes, changed


def _debit_and_credit(
    op: Operation, world: Mapping[str, UUID], balances: Mapping[UUID, Account]
) -> tuple[UUID, UUID]:
    if op.amount <= 0:
        raise ValueError(f"operation {op.id}: amount must be > 0, got {op.amount}")
    if op.type == OperationType.TRANSFER:
        if op.to_account_id is None:
            raise ValueError(f"operation {op.id}: a transfer needs to_account_id")
        return op.account_id, op.to_account_id
    if op.to_account_id is not None:
        raise ValueError(f"operation {op.id}: only a transfer has to_account_id")
    world_id = _world_account(op.currency, world, balances)
    if op.type == OperationType.DEPOSIT:
        return world_id, op.account_id
    if op.type == OperationType.WITHDRAWAL:
        return op.account_id, world_id
    raise ValueError(f"operation {op.id}: unsupported type {op.type!r}")


def _world_account(
    currency: str, world: Mapping[str, UUID], balances: Mapping[UUID, Account]
) -> UUID:
    if currency not in world:
        raise KeyError(f"no world account is mapped for currency {currency}")
    world_id = world[currency]
    if world_id not in balances:
        raise KeyError(f"world account {world_id} for {currency} is not among the balances")
    return world_id


def _with_balance(account: Account, balance: int) -> Account:
    # Direct construction: dataclasses.replace costs several times more on the apply hot path.
    return Account(account.id, account.kind, account.currency, balance, account.overdraft_limit)


def _reject(op: Operation, code: str, message: str) -> tuple[Outcome, dict[UUID, Account]]:
    return Rejected(operation_id=op.id, code=code, message=message), {}
