"""Apply operations to account balances as double-entry postings, or reject them with a code."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

from domain.errors import (
    ACCOUNT_CLOSED,
    ACCOUNT_FROZEN,
    ACCOUNT_NOT_EMPTY,
    ACCOUNT_NOT_FOUND,
    AMOUNT_TOO_SMALL,
    ASSET_NOT_FOUND,
    BALANCE_LIMIT,
    CURRENCY_MISMATCH,
    HOLD_CLOSED,
    INSUFFICIENT_FUNDS,
    INSUFFICIENT_UNITS,
    INVALID_AMOUNT,
    NOT_REVERSIBLE,
    PRICE_UNAVAILABLE,
    REVERSAL_EXCEEDS_ORIGINAL,
    SAME_ACCOUNT,
)
from domain.holds import Hold, release, settle
from domain.investments import Position, PositionChange, allocate, redeem
from domain.model import (
    CONTROL_TYPES,
    CUSTOMER_KINDS,
    INVESTMENT_TYPES,
    Account,
    Operation,
    OperationType,
    Posting,
)
from domain.money import exponent
from domain.reversals import Original, reversal_accounts

# A customer account's balance stays within +-1e18 minor units (balance_limit_exceeded).
MAX_BALANCE = 10**18
# System accounts (world, custody) are not customers: each holds the other side of every customer
# of its currency on its shard, so the customer limit does not apply to them (under it, one
# customer's deposits could use up a world shard, and every other deposit routed through that
# shard failed). Only storage bounds them: balances are BIGINT, and a posting that would not fit
# fails alone here instead of failing the whole batch in the database.
SYSTEM_MAX_BALANCE = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Applied:
    """The operation was booked; `postings` sum to zero, debit first (none for a hold, a void or
    an account control). `hold`: the state a hold, capture or void left its hold in. `reversed`:
    a reversal's original and the total now reversed of it. `amount`: what a reversal of "the
    rest" came to."""

    operation_id: UUID
    postings: tuple[Posting, ...]
    position: PositionChange | None = None
    hold: Hold | None = None
    reversed: tuple[UUID, int] | None = None
    amount: int | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    """The operation failed; `code` is one of the failure codes in domain.errors."""

    operation_id: UUID
    code: str
    message: str


Outcome = Applied | Rejected

PositionKey = tuple[UUID, UUID]  # (account_id, asset_id)


@dataclass(frozen=True, slots=True)
class Holdings:
    """What investment operations need besides balances.

    `positions` by (account, asset) (a missing one counts as empty), `prices` the price_e8 to
    trade each asset at, `custody` the custody account per currency (present in the balances).
    """

    positions: Mapping[PositionKey, Position]
    prices: Mapping[UUID, int]
    custody: Mapping[str, UUID]
    asset_currencies: Mapping[UUID, str]


NO_HOLDINGS = Holdings(positions={}, prices={}, custody={}, asset_currencies={})


@dataclass(frozen=True, slots=True)
class Refs:
    """What captures, voids and reversals refer to: the holds they settle (open or closed; a hold
    that never applied is missing) and the operations reversals take back."""

    holds: Mapping[UUID, Hold]
    originals: Mapping[UUID, Original]


NO_REFS = Refs(holds={}, originals={})

# Operations that may need the currency's world account.
WORLD_TYPES: frozenset[OperationType] = frozenset(
    {OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.CAPTURE, OperationType.REVERSAL}
)


def apply_operation(
    op: Operation,
    balances: Mapping[UUID, Account],
    world: Mapping[str, UUID],
    holdings: Holdings = NO_HOLDINGS,
    refs: Refs = NO_REFS,
) -> tuple[Outcome, dict[UUID, Account]]:
    """Apply one operation; return its outcome and the accounts it changed (empty if rejected).

    Deposit moves money world -> account, withdrawal account -> world, transfer
    account -> to_account. Checks run in this order: accounts exist (account_not_found),
    a transfer's accounts differ (same_account), every account is in op.currency
    (currency_mismatch), a debited customer account stays at or above -overdraft_limit
    (insufficient_funds), no customer balance passes +-MAX_BALANCE and no system balance
    passes +-SYSTEM_MAX_BALANCE (balance_limit_exceeded). A closed account takes nothing
    (account_closed), a frozen one no debit (account_frozen). Holds, captures, voids,
    reversals and account controls: see their functions below; they need `refs`.

    Raises ValueError for a malformed operation (amount <= 0, a transfer without
    to_account_id, to_account_id on another type) and KeyError when `world` has no entry
    for op.currency or that world account is not in `balances`: callers validate
    operations before queueing them and load every world account they may need.
    Neither argument is modified. Allocations and redemptions need `holdings`.
    """
    if op.type in INVESTMENT_TYPES:
        return _apply_investment(op, balances, holdings)
    if op.type == OperationType.HOLD:
        return _apply_hold(op, balances)
    if op.type in (OperationType.CAPTURE, OperationType.VOID):
        return _apply_settlement(op, balances, world, refs)
    if op.type == OperationType.REVERSAL:
        return _apply_reversal(op, balances, world, refs)
    if op.type in CONTROL_TYPES:
        return _apply_control(op, balances)
    debit_id, credit_id = _debit_and_credit(op, world, balances)
    return _move(op, balances, debit_id, credit_id, op.amount)


def _move(
    op: Operation,
    balances: Mapping[UUID, Account],
    debit_id: UUID,
    credit_id: UUID,
    amount: int,
    position: PositionChange | None = None,
    *,
    released: int = 0,
    hold: Hold | None = None,
    reversed: tuple[UUID, int] | None = None,
) -> tuple[Outcome, dict[UUID, Account]]:
    """Book `amount` from debit to credit after the checks every money movement shares.
    `released`: held money of the debited account this movement frees (a capture's hold)."""

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
        if account.closed:
            return _reject(op, ACCOUNT_CLOSED, f"account {account.id} is closed")
    if debit.frozen:
        return _reject(op, ACCOUNT_FROZEN, f"account {debit.id} is frozen")

    debit_after = debit.balance - amount
    credit_after = credit.balance + amount
    held_after = debit.held - released
    if debit.kind in CUSTOMER_KINDS and debit_after - held_after < -debit.overdraft_limit:
        return _reject(op, INSUFFICIENT_FUNDS, f"account {debit.id} has insufficient funds")
    for account, after in ((debit, debit_after), (credit, credit_after)):
        if abs(after) > (MAX_BALANCE if account.kind in CUSTOMER_KINDS else SYSTEM_MAX_BALANCE):
            return _reject(op, BALANCE_LIMIT, f"account {account.id} would pass the balance limit")

    postings = (
        Posting(account_id=debit_id, amount=-amount, balance_after=debit_after),
        Posting(account_id=credit_id, amount=amount, balance_after=credit_after),
    )
    changed = {
        debit_id: _with_balance(debit, debit_after, held_after),
        credit_id: _with_balance(credit, credit_after),
    }
    resolved = amount if op.type == OperationType.REVERSAL else None
    applied = Applied(op.id, postings, position, hold=hold, reversed=reversed, amount=resolved)
    return applied, changed


def _apply_hold(
    op: Operation, balances: Mapping[UUID, Account]
) -> tuple[Outcome, dict[UUID, Account]]:
    """Reserve `amount`: the balance stays, `held` grows; the available money must cover it."""
    if op.amount <= 0:
        raise ValueError(f"operation {op.id}: amount must be > 0, got {op.amount}")
    account = balances.get(op.account_id)
    if account is None:
        return _reject(op, ACCOUNT_NOT_FOUND, f"account {op.account_id} not found")
    payee = balances.get(op.to_account_id) if op.to_account_id is not None else None
    if op.to_account_id is not None and payee is None:
        return _reject(op, ACCOUNT_NOT_FOUND, f"account {op.to_account_id} not found")
    for acc in (account, payee):
        if acc is not None and acc.currency != op.currency:
            return _reject(
                op, CURRENCY_MISMATCH, f"account {acc.id} holds {acc.currency}, not {op.currency}"
            )
        if acc is not None and acc.closed:
            return _reject(op, ACCOUNT_CLOSED, f"account {acc.id} is closed")
    if account.frozen:
        return _reject(op, ACCOUNT_FROZEN, f"account {account.id} is frozen")
    if account.available < op.amount:
        return _reject(op, INSUFFICIENT_FUNDS, f"account {account.id} has insufficient funds")
    hold = Hold(
        id=op.id,
        account_id=op.account_id,
        to_account_id=op.to_account_id,
        currency=op.currency,
        amount=op.amount,
        expires_in=op.expires_in,
    )
    changed = {account.id: _with_balance(account, account.balance, account.held + op.amount)}
    return Applied(op.id, (), hold=hold), changed


def _apply_settlement(
    op: Operation, balances: Mapping[UUID, Account], world: Mapping[str, UUID], refs: Refs
) -> tuple[Outcome, dict[UUID, Account]]:
    """A capture settles `amount` of an open hold (to its payee, else out to the world) and
    releases the rest; a void releases it all. A hold not open fails them (hold_closed)."""
    if op.hold_id is None:
        raise ValueError(f"operation {op.id}: a {op.type} needs hold_id")
    hold = refs.holds.get(op.hold_id)
    if hold is None or not hold.is_open:
        state = "never opened" if hold is None else hold.status.value
        return _reject(op, HOLD_CLOSED, f"hold {op.hold_id} is not open ({state})")
    account = balances.get(hold.account_id)
    if account is None:
        return _reject(op, ACCOUNT_NOT_FOUND, f"account {hold.account_id} not found")
    if op.type == OperationType.VOID:
        closed = release(hold, op.id, expired=op.expiry)
        changed = {account.id: _with_balance(account, account.balance, account.held - hold.amount)}
        return Applied(op.id, (), hold=closed), changed
    if not 0 < op.amount <= hold.amount:
        return _reject(
            op, INVALID_AMOUNT, f"a capture of hold {hold.id} takes at most its {hold.amount}"
        )
    payee = hold.to_account_id
    credit_id = payee if payee is not None else _world_account(op.currency, world, balances)
    return _move(
        op,
        balances,
        hold.account_id,
        credit_id,
        op.amount,
        released=hold.amount,
        hold=settle(hold, op.amount, op.id),
    )


def _apply_reversal(
    op: Operation, balances: Mapping[UUID, Account], world: Mapping[str, UUID], refs: Refs
) -> tuple[Outcome, dict[UUID, Account]]:
    """Take back `amount` (0: all that is left) of a succeeded deposit, withdrawal, transfer or
    capture, the other way round; the reversals of one operation never sum past it."""
    if op.reversal_of is None:
        raise ValueError(f"operation {op.id}: a reversal needs reversal_of")
    if op.amount < 0:
        raise ValueError(f"operation {op.id}: amount must be >= 0 (0: the rest), got {op.amount}")
    original = refs.originals.get(op.reversal_of)
    if original is None or not original.reversible:
        return _reject(op, NOT_REVERSIBLE, f"operation {op.reversal_of} cannot be reversed")
    amount = op.amount or original.remaining
    if amount <= 0 or amount > original.remaining:
        return _reject(
            op,
            REVERSAL_EXCEEDS_ORIGINAL,
            f"operation {original.id} has {original.remaining} left to reverse",
        )
    debit_id, credit_id = reversal_accounts(original, _world_account(op.currency, world, balances))
    return _move(
        op,
        balances,
        debit_id,
        credit_id,
        amount,
        reversed=(original.id, original.reversed + amount),
    )


def _apply_control(
    op: Operation, balances: Mapping[UUID, Account]
) -> tuple[Outcome, dict[UUID, Account]]:
    """Freeze, unfreeze, close. Closing needs a zero balance and no open hold; a closed account
    takes no control either."""
    account = balances.get(op.account_id)
    if account is None:
        return _reject(op, ACCOUNT_NOT_FOUND, f"account {op.account_id} not found")
    if account.closed:
        return _reject(op, ACCOUNT_CLOSED, f"account {account.id} is closed")
    frozen, closed = account.frozen, False
    if op.type == OperationType.FREEZE:
        frozen = True
    elif op.type == OperationType.UNFREEZE:
        frozen = False
    else:
        if account.balance != 0 or account.held != 0:
            return _reject(
                op,
                ACCOUNT_NOT_EMPTY,
                f"account {account.id} needs a zero balance and no open hold to close",
            )
        closed = True
    changed = {
        account.id: Account(
            account.id,
            account.kind,
            account.currency,
            account.balance,
            account.overdraft_limit,
            account.held,
            frozen,
            closed,
        )
    }
    return Applied(op.id, ()), changed


def _apply_investment(
    op: Operation, balances: Mapping[UUID, Account], holdings: Holdings
) -> tuple[Outcome, dict[UUID, Account]]:
    """Allocation: cash -> custody, units bought at the price. Redemption: custody -> cash."""
    if op.asset_id is None:
        raise ValueError(f"operation {op.id}: an investment needs asset_id")
    if op.account_id not in balances:
        return _reject(op, ACCOUNT_NOT_FOUND, f"account {op.account_id} not found")
    currency = holdings.asset_currencies.get(op.asset_id)
    if currency is None:
        return _reject(op, ASSET_NOT_FOUND, f"asset {op.asset_id} not found")
    if currency != op.currency:
        return _reject(
            op, CURRENCY_MISMATCH, f"asset {op.asset_id} trades in {currency}, not {op.currency}"
        )
    price = holdings.prices.get(op.asset_id)
    if price is None or price <= 0:
        return _reject(op, PRICE_UNAVAILABLE, f"asset {op.asset_id} has no closing price yet")
    custody_id = holdings.custody[op.currency]
    key = (op.account_id, op.asset_id)
    position = holdings.positions.get(key) or Position(op.account_id, op.asset_id, 0, 0)
    exp = exponent(op.currency)
    if op.type == OperationType.ALLOCATION:
        if op.amount <= 0:
            raise ValueError(f"operation {op.id}: amount must be > 0, got {op.amount}")
        change = allocate(position, op.amount, exp, price)
        if change is None:
            return _reject(op, AMOUNT_TOO_SMALL, "the amount buys less than 0.00000001 units")
        return _move(op, balances, op.account_id, custody_id, change.cash, change)
    if op.quantity is not None:
        change = redeem(position, exp, price, units=op.quantity)
    else:
        change = redeem(position, exp, price, amount=op.amount)
    if change is None:
        return _reject(op, INSUFFICIENT_UNITS, f"the position in asset {op.asset_id} is too small")
    return _move(op, balances, custody_id, op.account_id, change.cash, change)


def apply_batch(
    ops: Sequence[Operation],
    balances: Mapping[UUID, Account],
    world: Mapping[str, UUID],
    holdings: Holdings = NO_HOLDINGS,
    refs: Refs = NO_REFS,
) -> tuple[list[Outcome], dict[UUID, Account]]:
    """Apply operations in order, each seeing the balances (positions, holds, reversed amounts)
    the previous ones left.

    A rejected operation fails alone. Returns the outcomes in input order and the final
    state of every account that changed; an applied investment's outcome carries its
    PositionChange, a hold's, capture's or void's the hold's new state, a reversal's the
    original's new reversed total. Raises as apply_operation does.
    """
    current = dict(balances)
    positions = dict(holdings.positions)
    holds = dict(refs.holds)
    originals = dict(refs.originals)
    changed: dict[UUID, Account] = {}
    outcomes: list[Outcome] = []
    for op in ops:
        outcome, updated = apply_operation(
            op,
            current,
            world,
            Holdings(positions, holdings.prices, holdings.custody, holdings.asset_currencies)
            if op.type in INVESTMENT_TYPES
            else holdings,
            Refs(holds, originals),
        )
        outcomes.append(outcome)
        current.update(updated)
        changed.update(updated)
        if not isinstance(outcome, Applied):
            continue
        if outcome.position is not None:
            p = outcome.position
            positions[(p.account_id, p.asset_id)] = Position(
                p.account_id, p.asset_id, p.units_after, p.invested_after
            )
        if outcome.hold is not None:
            holds[outcome.hold.id] = outcome.hold
        if outcome.reversed is not None:
            original_id, total = outcome.reversed
            o = originals[original_id]
            originals[original_id] = Original(
                o.id, o.type, o.status, o.account_id, o.to_account_id, o.amount, total
            )
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


def _with_balance(account: Account, balance: int, held: int | None = None) -> Account:
    # Direct construction: dataclasses.replace costs several times more on the apply hot path.
    return Account(
        account.id,
        account.kind,
        account.currency,
        balance,
        account.overdraft_limit,
        account.held if held is None else held,
        account.frozen,
        account.closed,
    )


def _reject(op: Operation, code: str, message: str) -> tuple[Outcome, dict[UUID, Account]]:
    return Rejected(operation_id=op.id, code=code, message=message), {}
