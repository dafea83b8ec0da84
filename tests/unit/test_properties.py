"""Property tests: ledger invariants hold after any batch of operations over a few accounts."""

from dataclasses import replace
from uuid import UUID

from hypothesis import event, given, settings
from hypothesis import strategies as st

from domain.apply import MAX_BALANCE, SYSTEM_MAX_BALANCE, Applied, Outcome, Rejected, apply_batch
from domain.errors import (
    ACCOUNT_NOT_FOUND,
    BALANCE_LIMIT,
    CURRENCY_MISMATCH,
    INSUFFICIENT_FUNDS,
    SAME_ACCOUNT,
)
from domain.model import CUSTOMER_KINDS, Account, AccountKind, Operation, OperationType

CURRENCIES = ("USD", "EUR")
WORLD = {"USD": UUID(int=1), "EUR": UUID(int=2)}
CUSTODY_USD = UUID(int=3)
CUSTOMER_IDS = tuple(UUID(int=10 + i) for i in range(4))
UNKNOWN_ID = UUID(int=999)

# Mostly customer accounts, sometimes a system account or an id nobody has.
OPERATION_ACCOUNT_IDS = CUSTOMER_IDS * 3 + (UNKNOWN_ID, WORLD["USD"], CUSTODY_USD)

SETTINGS = settings(max_examples=200, deadline=None)


@st.composite
def ledgers(draw: st.DrawFn) -> dict[UUID, Account]:
    """Customer accounts in one or two currencies, with world balancing each currency to zero."""
    accounts: dict[UUID, Account] = {}
    for account_id in CUSTOMER_IDS:
        accounts[account_id] = Account(
            id=account_id,
            kind=draw(st.sampled_from(sorted(CUSTOMER_KINDS))),
            currency=draw(st.sampled_from(CURRENCIES)),
            balance=draw(st.integers(0, 50)),
            overdraft_limit=draw(st.sampled_from([0, 0, 20])),
        )
    accounts[CUSTODY_USD] = Account(CUSTODY_USD, AccountKind.CUSTODY, "USD", 0)
    for currency, world_id in WORLD.items():
        held = sum(a.balance for a in accounts.values() if a.currency == currency)
        accounts[world_id] = Account(world_id, AccountKind.WORLD, currency, -held)
    return accounts


# Small amounts against small balances land exactly on the overdraft floor often.
amounts = st.one_of(
    st.integers(1, 60),
    st.integers(1, 60),
    st.integers(1, 5_000),
    # Large enough for two in a row to reach a customer's balance limit, and a dozen the world's.
    st.integers(MAX_BALANCE // 2, MAX_BALANCE),
)


@st.composite
def operations(draw: st.DrawFn) -> list[Operation]:
    ops = []
    for index in range(draw(st.integers(0, 30))):
        op_type = draw(
            st.sampled_from(
                [OperationType.DEPOSIT, OperationType.WITHDRAWAL, OperationType.TRANSFER]
            )
        )
        ops.append(
            Operation(
                id=UUID(int=10_000 + index),
                type=op_type,
                account_id=draw(st.sampled_from(OPERATION_ACCOUNT_IDS)),
                amount=draw(amounts),
                # Often differs from the accounts' currency: exercises currency_mismatch.
                currency=draw(st.sampled_from(CURRENCIES)),
                to_account_id=(
                    draw(st.sampled_from(OPERATION_ACCOUNT_IDS))
                    if op_type == OperationType.TRANSFER
                    else None
                ),
            )
        )
    return ops


def legs(op: Operation) -> tuple[UUID, UUID]:
    """The (debited, credited) account ids the rules say `op` moves money between."""
    if op.type == OperationType.DEPOSIT:
        return WORLD[op.currency], op.account_id
    if op.type == OperationType.WITHDRAWAL:
        return op.account_id, WORLD[op.currency]
    assert op.to_account_id is not None
    return op.account_id, op.to_account_id


def bound(account: Account) -> int:
    """Customers stay within the customer limit; system accounts within what storage holds."""
    return MAX_BALANCE if account.kind in CUSTOMER_KINDS else SYSTEM_MAX_BALANCE


def expected_code(
    op: Operation, accounts: dict[UUID, Account], running: dict[UUID, int]
) -> str | None:
    """An independent statement of the rules: the code `op` must fail with, or None."""
    debit_id, credit_id = legs(op)
    if debit_id not in accounts or credit_id not in accounts:
        return ACCOUNT_NOT_FOUND
    if debit_id == credit_id:
        return SAME_ACCOUNT
    if accounts[debit_id].currency != op.currency or accounts[credit_id].currency != op.currency:
        return CURRENCY_MISMATCH
    debit = accounts[debit_id]
    debit_after = running[debit_id] - op.amount
    if debit.kind in CUSTOMER_KINDS and debit_after < -debit.overdraft_limit:
        return INSUFFICIENT_FUNDS
    credit_after = running[credit_id] + op.amount
    if abs(debit_after) > bound(debit) or abs(credit_after) > bound(accounts[credit_id]):
        return BALANCE_LIMIT
    return None


@SETTINGS
@given(initial=ledgers(), ops=operations())
def test_ledger_invariants_hold_after_any_batch(
    initial: dict[UUID, Account], ops: list[Operation]
) -> None:
    outcomes, changed = apply_batch(ops, initial, WORLD)
    final = {**initial, **changed}

    assert [outcome.operation_id for outcome in outcomes] == [op.id for op in ops]

    # Money is neither created nor destroyed: per currency, world included, it sums to zero.
    for currency in CURRENCIES:
        assert sum(a.balance for a in final.values() if a.currency == currency) == 0

    for account in final.values():
        # Only the balance of an account ever changes.
        assert account == replace(initial[account.id], balance=account.balance)
        if account.kind in CUSTOMER_KINDS:
            assert account.balance >= -account.overdraft_limit
            if account.overdraft_limit == 0:
                assert account.balance >= 0
        assert abs(account.balance) <= bound(account)

    running = {account_id: account.balance for account_id, account in initial.items()}
    posted: set[UUID] = set()
    for op, outcome in zip(ops, outcomes, strict=True):
        assert_matches_rules(op, outcome, initial, running)
        event(outcome.code if isinstance(outcome, Rejected) else "applied")
        if isinstance(outcome, Applied):
            assert sum(posting.amount for posting in outcome.postings) == 0
            for posting in outcome.postings:
                running[posting.account_id] += posting.amount
                posted.add(posting.account_id)
                # balance_after chains: each entry starts where the account's previous one ended.
                assert posting.balance_after == running[posting.account_id]

    # Each account's balance is its opening balance plus the sum of its postings ...
    assert {account_id: a.balance for account_id, a in final.items()} == running
    # ... and exactly the accounts that took postings are reported as changed.
    assert set(changed) == posted


def assert_matches_rules(
    op: Operation, outcome: Outcome, accounts: dict[UUID, Account], running: dict[UUID, int]
) -> None:
    code = expected_code(op, accounts, running)
    if code is None:
        assert isinstance(outcome, Applied), (op, outcome)
        debit_id, credit_id = legs(op)
        assert [(p.account_id, p.amount) for p in outcome.postings] == [
            (debit_id, -op.amount),
            (credit_id, op.amount),
        ]
    else:
        assert isinstance(outcome, Rejected), (op, outcome)
        assert outcome.code == code, (op, outcome)
