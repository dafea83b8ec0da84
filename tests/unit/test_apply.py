"""Unit tests for domain.apply: postings, balances and every rejection code."""

from uuid import UUID

import pytest

from domain.apply import (
    MAX_BALANCE,
    SYSTEM_MAX_BALANCE,
    Applied,
    Rejected,
    apply_batch,
    apply_operation,
)
from domain.errors import (
    ACCOUNT_NOT_FOUND,
    BALANCE_LIMIT,
    CURRENCY_MISMATCH,
    INSUFFICIENT_FUNDS,
    SAME_ACCOUNT,
)
from domain.model import Account, AccountKind, Operation, OperationType, Posting

WORLD_USD = UUID(int=1)
WORLD_EUR = UUID(int=2)
ALICE = UUID(int=10)  # USD checking, 100.00
BOB = UUID(int=11)  # USD savings, 0.00
CAROL = UUID(int=12)  # USD checking, 0.00, may overdraw 50.00
DAVE = UUID(int=13)  # EUR checking, 20.00
MISSING = UUID(int=99)

WORLD = {"USD": WORLD_USD, "EUR": WORLD_EUR}


def make_balances() -> dict[UUID, Account]:
    accounts = [
        Account(WORLD_USD, AccountKind.WORLD, "USD", -10_000),
        Account(WORLD_EUR, AccountKind.WORLD, "EUR", -2_000),
        Account(ALICE, AccountKind.CHECKING, "USD", 10_000),
        Account(BOB, AccountKind.SAVINGS, "USD", 0),
        Account(CAROL, AccountKind.CHECKING, "USD", 0, overdraft_limit=5_000),
        Account(DAVE, AccountKind.CHECKING, "EUR", 2_000),
    ]
    return {account.id: account for account in accounts}


_next_op = iter(range(1000, 10**9))


def op(
    type_: OperationType,
    account_id: UUID,
    amount: int,
    currency: str = "USD",
    to: UUID | None = None,
) -> Operation:
    return Operation(UUID(int=next(_next_op)), type_, account_id, amount, currency, to)


def deposit(account_id: UUID, amount: int, currency: str = "USD") -> Operation:
    return op(OperationType.DEPOSIT, account_id, amount, currency)


def withdrawal(account_id: UUID, amount: int, currency: str = "USD") -> Operation:
    return op(OperationType.WITHDRAWAL, account_id, amount, currency)


def transfer(source: UUID, target: UUID, amount: int, currency: str = "USD") -> Operation:
    return op(OperationType.TRANSFER, source, amount, currency, to=target)


def applied(
    operation: Operation, balances: dict[UUID, Account]
) -> tuple[Applied, dict[UUID, Account]]:
    outcome, changed = apply_operation(operation, balances, WORLD)
    assert isinstance(outcome, Applied), outcome
    assert outcome.operation_id == operation.id
    assert sum(posting.amount for posting in outcome.postings) == 0
    return outcome, changed


def rejected(operation: Operation, balances: dict[UUID, Account]) -> Rejected:
    before = dict(balances)
    outcome, changed = apply_operation(operation, balances, WORLD)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.operation_id == operation.id
    assert changed == {}
    assert balances == before
    return outcome


def test_deposit_moves_money_from_world_to_account() -> None:
    balances = make_balances()
    outcome, changed = applied(deposit(BOB, 2_550), balances)
    assert outcome.postings == (
        Posting(WORLD_USD, -2_550, -12_550),
        Posting(BOB, 2_550, 2_550),
    )
    assert {k: v.balance for k, v in changed.items()} == {WORLD_USD: -12_550, BOB: 2_550}
    assert changed[BOB] == Account(BOB, AccountKind.SAVINGS, "USD", 2_550)


def test_withdrawal_moves_money_from_account_to_world() -> None:
    outcome, changed = applied(withdrawal(ALICE, 2_500), make_balances())
    assert outcome.postings == (
        Posting(ALICE, -2_500, 7_500),
        Posting(WORLD_USD, 2_500, -7_500),
    )
    assert {k: v.balance for k, v in changed.items()} == {ALICE: 7_500, WORLD_USD: -7_500}


def test_transfer_moves_money_between_accounts() -> None:
    outcome, changed = applied(transfer(ALICE, BOB, 1_000), make_balances())
    assert outcome.postings == (Posting(ALICE, -1_000, 9_000), Posting(BOB, 1_000, 1_000))
    assert {k: v.balance for k, v in changed.items()} == {ALICE: 9_000, BOB: 1_000}


def test_apply_does_not_modify_its_inputs() -> None:
    balances = make_balances()
    snapshot = dict(balances)
    world = dict(WORLD)
    apply_operation(transfer(ALICE, BOB, 1_000), balances, world)
    assert balances == snapshot
    assert world == WORLD


def test_withdrawing_the_whole_balance_is_allowed() -> None:
    _, changed = applied(withdrawal(ALICE, 10_000), make_balances())
    assert changed[ALICE].balance == 0


def test_insufficient_funds() -> None:
    outcome = rejected(withdrawal(ALICE, 10_001), make_balances())
    assert outcome.code == INSUFFICIENT_FUNDS
    assert str(ALICE) in outcome.message


def test_insufficient_funds_on_transfer() -> None:
    assert rejected(transfer(BOB, ALICE, 1), make_balances()).code == INSUFFICIENT_FUNDS


def test_overdraft_allows_going_below_zero_down_to_the_limit() -> None:
    balances = make_balances()
    _, changed = applied(withdrawal(CAROL, 5_000), balances)
    assert changed[CAROL].balance == -5_000
    balances.update(changed)
    assert rejected(withdrawal(CAROL, 1), balances).code == INSUFFICIENT_FUNDS


def test_overdraft_is_not_exceeded_in_one_step() -> None:
    assert rejected(transfer(CAROL, BOB, 5_001), make_balances()).code == INSUFFICIENT_FUNDS


def test_world_account_has_no_floor() -> None:
    balances = make_balances()
    _, changed = applied(deposit(ALICE, 10**15), balances)
    assert changed[WORLD_USD].balance == -10_000 - 10**15


@pytest.mark.parametrize(
    "operation",
    [
        deposit(MISSING, 100),
        withdrawal(MISSING, 100),
        transfer(MISSING, BOB, 100),
        transfer(ALICE, MISSING, 100),
    ],
    ids=["deposit", "withdrawal", "transfer-from", "transfer-to"],
)
def test_account_not_found(operation: Operation) -> None:
    outcome = rejected(operation, make_balances())
    assert outcome.code == ACCOUNT_NOT_FOUND
    assert str(MISSING) in outcome.message


def test_transfer_to_the_same_account() -> None:
    assert rejected(transfer(ALICE, ALICE, 100), make_balances()).code == SAME_ACCOUNT


def test_deposit_into_the_world_account_itself_is_same_account() -> None:
    assert rejected(deposit(WORLD_USD, 100), make_balances()).code == SAME_ACCOUNT


@pytest.mark.parametrize(
    "operation",
    [
        deposit(ALICE, 100, "EUR"),  # account USD, world EUR
        withdrawal(DAVE, 100, "USD"),  # account EUR, world USD
        transfer(ALICE, DAVE, 100),  # credited account in EUR
        transfer(DAVE, ALICE, 100, "EUR"),  # credited account in USD
    ],
    ids=["deposit", "withdrawal", "transfer-to", "transfer-from"],
)
def test_currency_mismatch(operation: Operation) -> None:
    outcome = rejected(operation, make_balances())
    assert outcome.code == CURRENCY_MISMATCH
    assert "EUR" in outcome.message
    assert "USD" in outcome.message


def test_balance_limit_on_the_credited_account() -> None:
    balances = make_balances()
    balances[BOB] = Account(BOB, AccountKind.SAVINGS, "USD", MAX_BALANCE - 99)
    assert rejected(deposit(BOB, 100), balances).code == BALANCE_LIMIT
    _, changed = applied(deposit(BOB, 99), balances)
    assert changed[BOB].balance == MAX_BALANCE


def test_balance_limit_on_a_debited_system_account() -> None:
    # A system account is not held to the customer limit (issue 13.1), only to what BIGINT holds.
    balances = make_balances()
    balances[WORLD_USD] = Account(WORLD_USD, AccountKind.WORLD, "USD", -MAX_BALANCE)
    applied(deposit(ALICE, 1), balances)
    balances[WORLD_USD] = Account(WORLD_USD, AccountKind.WORLD, "USD", -SYSTEM_MAX_BALANCE)
    assert rejected(deposit(ALICE, 1), balances).code == BALANCE_LIMIT


@pytest.mark.parametrize(
    ("operation", "code"),
    [
        # missing beats same-account and currency mismatch
        (transfer(MISSING, MISSING, 100, "EUR"), ACCOUNT_NOT_FOUND),
        # same-account beats currency mismatch and insufficient funds
        (transfer(BOB, BOB, 100, "EUR"), SAME_ACCOUNT),
        # currency mismatch beats insufficient funds
        (transfer(BOB, DAVE, 100), CURRENCY_MISMATCH),
    ],
)
def test_checks_run_in_the_documented_order(operation: Operation, code: str) -> None:
    assert rejected(operation, make_balances()).code == code


@pytest.mark.parametrize("amount", [0, -1])
def test_non_positive_amount_is_a_programming_error(amount: int) -> None:
    with pytest.raises(ValueError, match="amount"):
        apply_operation(deposit(ALICE, amount), make_balances(), WORLD)


def test_transfer_without_target_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="to_account_id"):
        apply_operation(op(OperationType.TRANSFER, ALICE, 100), make_balances(), WORLD)


def test_deposit_with_target_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="to_account_id"):
        apply_operation(op(OperationType.DEPOSIT, ALICE, 100, to=BOB), make_balances(), WORLD)


def test_currency_without_world_account_is_a_programming_error() -> None:
    with pytest.raises(KeyError, match="GBP"):
        apply_operation(deposit(ALICE, 100, "GBP"), make_balances(), WORLD)


def test_world_account_missing_from_balances_is_a_programming_error() -> None:
    balances = make_balances()
    del balances[WORLD_USD]
    with pytest.raises(KeyError, match=str(WORLD_USD)):
        apply_operation(withdrawal(ALICE, 100), balances, WORLD)


def test_account_rejects_a_negative_overdraft_limit() -> None:
    with pytest.raises(ValueError, match="overdraft_limit"):
        Account(ALICE, AccountKind.CHECKING, "USD", 0, overdraft_limit=-1)


def test_batch_applies_in_order_and_a_failing_middle_operation_fails_alone() -> None:
    balances = make_balances()
    ops = [
        transfer(ALICE, BOB, 6_000),
        withdrawal(ALICE, 5_000),  # only 40.00 left after the first transfer
        transfer(ALICE, BOB, 4_000),
    ]
    outcomes, changed = apply_batch(ops, balances, WORLD)

    assert [outcome.operation_id for outcome in outcomes] == [o.id for o in ops]
    assert isinstance(outcomes[0], Applied)
    assert isinstance(outcomes[1], Rejected)
    assert outcomes[1].code == INSUFFICIENT_FUNDS
    assert isinstance(outcomes[2], Applied)
    assert outcomes[2].postings == (Posting(ALICE, -4_000, 0), Posting(BOB, 4_000, 10_000))
    # The world account took no posting, so it is not reported as changed.
    assert {k: v.balance for k, v in changed.items()} == {ALICE: 0, BOB: 10_000}
    assert balances == make_balances()


def test_batch_operation_sees_money_from_an_earlier_one() -> None:
    ops = [deposit(BOB, 500), withdrawal(BOB, 500), withdrawal(BOB, 1)]
    outcomes, changed = apply_batch(ops, make_balances(), WORLD)
    assert [type(outcome) for outcome in outcomes] == [Applied, Applied, Rejected]
    # BOB ends where it began but received postings, so its final state is returned.
    assert changed[BOB].balance == 0
    assert changed[WORLD_USD].balance == -10_000


def test_empty_batch_changes_nothing() -> None:
    assert apply_batch([], make_balances(), WORLD) == ([], {})
