"""Issue 13.1: system accounts (world, custody) sum many customers' money; the customer balance
limit must not apply to them, or one customer's deposits could exhaust a shard for everyone."""

from uuid import UUID

from domain.apply import MAX_BALANCE, SYSTEM_MAX_BALANCE, Applied, Rejected, apply_batch
from domain.errors import BALANCE_LIMIT
from domain.model import Account, AccountKind, Operation, OperationType

WORLD_USD = UUID(int=1)
MALLORY = UUID(int=10)
MALLORY_2 = UUID(int=11)
ALICE = UUID(int=12)
WORLD = {"USD": WORLD_USD}
MAX_DEPOSIT = 10**15  # the largest amount one operation takes (domain.money.MAX_MINOR_UNITS)


def deposit(n: int, account: UUID, amount: int = MAX_DEPOSIT) -> Operation:
    return Operation(UUID(int=1000 + n), OperationType.DEPOSIT, account, amount, "USD")


def test_one_customer_filling_a_world_shard_does_not_fail_another_customers_deposit() -> None:
    # The reproduction at the ledger level: one customer brings in 1,000 maximal deposits (1e18,
    # the customer limit) and then some more through a second account; the world shard they share
    # with another customer is then past 1e18 below zero, and that customer's deposit must apply.
    balances = {
        WORLD_USD: Account(WORLD_USD, AccountKind.WORLD, "USD", 0),
        MALLORY: Account(MALLORY, AccountKind.CHECKING, "USD", 0),
        MALLORY_2: Account(MALLORY_2, AccountKind.CHECKING, "USD", 0),
        ALICE: Account(ALICE, AccountKind.CHECKING, "USD", 0),
    }
    ops = [deposit(n, MALLORY) for n in range(1000)]
    ops += [deposit(1000 + n, MALLORY_2) for n in range(5)]
    ops.append(deposit(2000, ALICE, 1_00))
    outcomes, changed = apply_batch(ops, balances, WORLD)
    assert [o.code for o in outcomes if isinstance(o, Rejected)] == []
    assert changed[MALLORY].balance == MAX_BALANCE
    assert changed[ALICE].balance == 1_00
    assert changed[WORLD_USD].balance == -(MAX_BALANCE + 5 * MAX_DEPOSIT + 1_00)


def test_a_customer_account_keeps_its_balance_limit() -> None:
    balances = {
        WORLD_USD: Account(WORLD_USD, AccountKind.WORLD, "USD", -(3 * MAX_BALANCE)),
        MALLORY: Account(MALLORY, AccountKind.CHECKING, "USD", MAX_BALANCE),
    }
    [outcome], changed = apply_batch([deposit(1, MALLORY, 1)], balances, WORLD)
    assert isinstance(outcome, Rejected) and outcome.code == BALANCE_LIMIT
    assert changed == {}


def test_a_system_account_is_bounded_only_by_what_storage_holds() -> None:
    # accounts.balance is a BIGINT: a posting that would not fit fails alone, it never reaches the
    # database (where it would fail the whole batch, again and again).
    assert SYSTEM_MAX_BALANCE == 2**63 - 1
    balances = {
        WORLD_USD: Account(WORLD_USD, AccountKind.WORLD, "USD", -SYSTEM_MAX_BALANCE + 5),
        MALLORY: Account(MALLORY, AccountKind.CHECKING, "USD", 0),
    }
    outcomes, changed = apply_batch(
        [deposit(1, MALLORY, 5), deposit(2, MALLORY, 1)], balances, WORLD
    )
    assert isinstance(outcomes[0], Applied)
    assert isinstance(outcomes[1], Rejected) and outcomes[1].code == BALANCE_LIMIT
    assert changed[WORLD_USD].balance == -SYSTEM_MAX_BALANCE
