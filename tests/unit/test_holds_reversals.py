"""Unit tests for the pure rules of holds, captures, voids, reversals and account controls.

Everything is built from values (Account, Operation, Hold, Original): no I/O. The fixture ledger
balances to zero per currency, so every test can check that money is conserved.
"""

from __future__ import annotations

import itertools
import random
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import replace
from uuid import UUID

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from domain.apply import NO_REFS, Applied, Refs, Rejected, apply_batch, apply_operation
from domain.errors import (
    ACCOUNT_CLOSED,
    ACCOUNT_FROZEN,
    ACCOUNT_NOT_EMPTY,
    ACCOUNT_NOT_FOUND,
    CURRENCY_MISMATCH,
    HOLD_CLOSED,
    INSUFFICIENT_FUNDS,
    INVALID_AMOUNT,
    NOT_REVERSIBLE,
    REVERSAL_EXCEEDS_ORIGINAL,
)
from domain.holds import Hold, HoldStatus, release, settle
from domain.model import (
    CUSTOMER_KINDS,
    Account,
    AccountKind,
    Operation,
    OperationStatus,
    OperationType,
    Posting,
)
from domain.reversals import Original, debited_by_reversal, reversal_accounts

WORLD_USD = UUID(int=1)
WORLD_EUR = UUID(int=2)
ALICE = UUID(int=10)  # USD checking, 100.00
BOB = UUID(int=11)  # USD savings, 0.00
CAROL = UUID(int=12)  # USD checking, 0.00, may overdraw 50.00
DAVE = UUID(int=13)  # EUR checking, 20.00
MISSING = UUID(int=99)

WORLD = {"USD": WORLD_USD, "EUR": WORLD_EUR}


def make_balances(*overrides: Account) -> dict[UUID, Account]:
    """The fixture ledger, with `overrides` in place of the accounts of the same ids."""
    accounts = [
        Account(WORLD_USD, AccountKind.WORLD, "USD", -10_000),
        Account(WORLD_EUR, AccountKind.WORLD, "EUR", -2_000),
        Account(ALICE, AccountKind.CHECKING, "USD", 10_000),
        Account(BOB, AccountKind.SAVINGS, "USD", 0),
        Account(CAROL, AccountKind.CHECKING, "USD", 0, overdraft_limit=5_000),
        Account(DAVE, AccountKind.CHECKING, "EUR", 2_000),
    ]
    balances = {a.id: a for a in accounts}
    balances.update((a.id, a) for a in overrides)
    return balances


def account(
    id_: UUID,
    balance: int,
    *,
    held: int = 0,
    overdraft: int = 0,
    frozen: bool = False,
    closed: bool = False,
    kind: AccountKind = AccountKind.CHECKING,
    currency: str = "USD",
) -> Account:
    return Account(id_, kind, currency, balance, overdraft, held, frozen, closed)


_ids = itertools.count(1_000)


def new_id() -> UUID:
    return UUID(int=next(_ids))


def deposit(account_id: UUID, amount: int, currency: str = "USD") -> Operation:
    return Operation(new_id(), OperationType.DEPOSIT, account_id, amount, currency)


def withdrawal(account_id: UUID, amount: int, currency: str = "USD") -> Operation:
    return Operation(new_id(), OperationType.WITHDRAWAL, account_id, amount, currency)


def transfer(source: UUID, target: UUID, amount: int, currency: str = "USD") -> Operation:
    return Operation(new_id(), OperationType.TRANSFER, source, amount, currency, target)


def hold_op(
    account_id: UUID, amount: int, to: UUID | None = None, currency: str = "USD"
) -> Operation:
    return Operation(new_id(), OperationType.HOLD, account_id, amount, currency, to, expires_in=600)


def capture_op(hold: Hold, amount: int) -> Operation:
    # As intake stores it: on the hold's account, to the hold's payee.
    return Operation(
        new_id(),
        OperationType.CAPTURE,
        hold.account_id,
        amount,
        hold.currency,
        hold.to_account_id,
        hold_id=hold.id,
    )


def void_op(hold: Hold, *, expiry: bool = False) -> Operation:
    return Operation(
        new_id(),
        OperationType.VOID,
        hold.account_id,
        0,
        hold.currency,
        hold_id=hold.id,
        expiry=expiry,
    )


def reversal_op(original: Original, amount: int, currency: str = "USD") -> Operation:
    return Operation(
        new_id(),
        OperationType.REVERSAL,
        original.account_id,
        amount,
        currency,
        original.to_account_id,
        reversal_of=original.id,
    )


def control_op(type_: OperationType, account_id: UUID) -> Operation:
    return Operation(new_id(), type_, account_id, 0, "USD")


def open_hold(account_id: UUID, amount: int, to: UUID | None = None, currency: str = "USD") -> Hold:
    return Hold(new_id(), account_id, to, currency, amount)


def original(
    type_: OperationType,
    account_id: UUID,
    amount: int,
    to: UUID | None = None,
    *,
    reversed_: int = 0,
    status: OperationStatus = OperationStatus.SUCCEEDED,
) -> Original:
    return Original(new_id(), type_, status, account_id, to, amount, reversed_)


def refs(*items: Hold | Original) -> Refs:
    return Refs(
        holds={h.id: h for h in items if isinstance(h, Hold)},
        originals={o.id: o for o in items if isinstance(o, Original)},
    )


def totals(balances: Mapping[UUID, Account]) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for a in balances.values():
        sums[a.currency] += a.balance
    return dict(sums)


def applied(
    op: Operation, balances: dict[UUID, Account], references: Refs = NO_REFS
) -> tuple[Applied, dict[UUID, Account], dict[UUID, Account]]:
    """Apply `op`, which must succeed: (outcome, changed, the balances after)."""
    before = dict(balances)
    outcome, changed = apply_operation(op, balances, WORLD, refs=references)
    assert isinstance(outcome, Applied), outcome
    assert outcome.operation_id == op.id
    assert sum(p.amount for p in outcome.postings) == 0
    assert balances == before  # inputs untouched
    after = {**balances, **changed}
    assert totals(after) == totals(balances)
    return outcome, changed, after


def rejected(
    op: Operation, balances: dict[UUID, Account], code: str, references: Refs = NO_REFS
) -> Rejected:
    before = dict(balances)
    outcome, changed = apply_operation(op, balances, WORLD, refs=references)
    assert isinstance(outcome, Rejected), outcome
    assert outcome.operation_id == op.id
    assert outcome.code == code, outcome
    assert changed == {}
    assert balances == before
    return outcome


# --- holds -------------------------------------------------------------------------------------


def test_hold_keeps_the_balance_grows_held_and_lowers_available() -> None:
    balances = make_balances()
    op = hold_op(ALICE, 3_000, to=BOB)
    outcome, changed, _ = applied(op, balances)
    assert outcome.postings == ()
    assert outcome.hold == Hold(
        id=op.id,
        account_id=ALICE,
        to_account_id=BOB,
        currency="USD",
        amount=3_000,
        captured=0,
        released=0,
        status=HoldStatus.OPEN,
        expires_in=600,
        closed_by=None,
    )
    assert outcome.reversed is None
    assert outcome.amount is None
    # Only the held account changes, and only its held amount.
    assert changed == {ALICE: account(ALICE, 10_000, held=3_000)}
    assert changed[ALICE].available == 7_000


def test_holds_add_up_on_one_account() -> None:
    balances = make_balances()
    _, _, balances = applied(hold_op(ALICE, 3_000), balances)
    _, changed, _ = applied(hold_op(ALICE, 7_000), balances)
    assert changed[ALICE] == account(ALICE, 10_000, held=10_000)
    assert changed[ALICE].available == 0


@pytest.mark.parametrize(
    ("holder", "amount", "ok"),
    [
        # balance 10_000, held 4_000: available 6_000
        (account(ALICE, 10_000, held=4_000), 6_000, True),
        (account(ALICE, 10_000, held=4_000), 6_001, False),
        # balance 0, overdraft 5_000: available 5_000
        (account(CAROL, 0, overdraft=5_000), 5_000, True),
        (account(CAROL, 0, overdraft=5_000), 5_001, False),
        # balance 1_000, held 600, overdraft 100: available 500
        (account(CAROL, 1_000, held=600, overdraft=100), 500, True),
        (account(CAROL, 1_000, held=600, overdraft=100), 501, False),
        # already overdrawn into its holds: nothing available
        (account(CAROL, -100, held=4_900, overdraft=5_000), 1, False),
    ],
)
def test_hold_needs_available_funds(holder: Account, amount: int, ok: bool) -> None:
    balances = make_balances(holder)
    assert holder.available == holder.balance - holder.held + holder.overdraft_limit
    op = hold_op(holder.id, amount)
    if ok:
        _, changed, _ = applied(op, balances)
        assert changed[holder.id].held == holder.held + amount
        assert changed[holder.id].balance == holder.balance
        assert changed[holder.id].available == holder.available - amount
    else:
        rejected(op, balances, INSUFFICIENT_FUNDS)


def test_later_withdrawal_and_transfer_count_the_held_amount() -> None:
    balances = make_balances()
    _, _, balances = applied(hold_op(ALICE, 7_000), balances)
    rejected(withdrawal(ALICE, 3_001), balances, INSUFFICIENT_FUNDS)
    rejected(transfer(ALICE, BOB, 3_001), balances, INSUFFICIENT_FUNDS)
    outcome, changed, _ = applied(withdrawal(ALICE, 3_000), balances)
    assert outcome.postings == (Posting(ALICE, -3_000, 7_000), Posting(WORLD_USD, 3_000, -7_000))
    assert changed[ALICE] == account(ALICE, 7_000, held=7_000)
    assert changed[ALICE].available == 0


def test_withdrawal_from_an_overdraft_counts_the_held_amount() -> None:
    balances = make_balances()
    _, _, balances = applied(hold_op(CAROL, 2_000), balances)
    rejected(withdrawal(CAROL, 3_001), balances, INSUFFICIENT_FUNDS)
    _, changed, _ = applied(withdrawal(CAROL, 3_000), balances)
    assert changed[CAROL] == account(CAROL, -3_000, held=2_000, overdraft=5_000)
    assert changed[CAROL].balance - changed[CAROL].held == -5_000


def test_hold_on_a_frozen_account_fails() -> None:
    balances = make_balances(account(ALICE, 10_000, frozen=True))
    rejected(hold_op(ALICE, 1), balances, ACCOUNT_FROZEN)


def test_hold_on_a_closed_account_fails() -> None:
    balances = make_balances(account(BOB, 0, closed=True, kind=AccountKind.SAVINGS))
    rejected(hold_op(BOB, 1), balances, ACCOUNT_CLOSED)


def test_hold_to_a_closed_payee_fails() -> None:
    balances = make_balances(account(BOB, 0, closed=True, kind=AccountKind.SAVINGS))
    rejected(hold_op(ALICE, 1, to=BOB), balances, ACCOUNT_CLOSED)


def test_hold_to_a_frozen_payee_applies() -> None:
    # A frozen account still takes credits, and the capture will credit the payee.
    balances = make_balances(account(BOB, 0, frozen=True, kind=AccountKind.SAVINGS))
    _, changed, _ = applied(hold_op(ALICE, 1, to=BOB), balances)
    assert changed == {ALICE: account(ALICE, 10_000, held=1)}


def test_hold_to_a_payee_in_another_currency_fails() -> None:
    rejected(hold_op(ALICE, 100, to=DAVE), make_balances(), CURRENCY_MISMATCH)


def test_hold_in_another_currency_than_its_account_fails() -> None:
    rejected(hold_op(ALICE, 100, currency="EUR"), make_balances(), CURRENCY_MISMATCH)


def test_hold_on_or_to_a_missing_account_fails() -> None:
    rejected(hold_op(MISSING, 100), make_balances(), ACCOUNT_NOT_FOUND)
    rejected(hold_op(ALICE, 100, to=MISSING), make_balances(), ACCOUNT_NOT_FOUND)


# --- captures and voids ------------------------------------------------------------------------


def held_balances(hold: Hold) -> dict[UUID, Account]:
    """The fixture ledger with `hold` counted in its account's held amount."""
    holder = make_balances()[hold.account_id]
    return make_balances(replace(holder, held=holder.held + hold.amount))


def test_full_capture_pays_the_payee() -> None:
    hold = open_hold(ALICE, 3_000, to=BOB)
    balances = held_balances(hold)
    op = capture_op(hold, 3_000)
    outcome, changed, _ = applied(op, balances, refs(hold))
    assert outcome.postings == (Posting(ALICE, -3_000, 7_000), Posting(BOB, 3_000, 3_000))
    assert outcome.hold == Hold(
        hold.id, ALICE, BOB, "USD", 3_000, 3_000, 0, HoldStatus.CAPTURED, None, op.id
    )
    assert changed == {
        ALICE: account(ALICE, 7_000, held=0),
        BOB: account(BOB, 3_000, kind=AccountKind.SAVINGS),
    }


def test_partial_capture_without_payee_goes_to_the_world_and_releases_the_rest() -> None:
    hold = open_hold(ALICE, 3_000)
    # Another hold of 1_000 stays open on the account: held 4_000 in all.
    balances = make_balances(account(ALICE, 10_000, held=4_000))
    op = capture_op(hold, 1_200)
    outcome, changed, _ = applied(op, balances, refs(hold))
    assert outcome.postings == (
        Posting(ALICE, -1_200, 8_800),
        Posting(WORLD_USD, 1_200, -8_800),
    )
    assert outcome.hold is not None
    assert outcome.hold.status == HoldStatus.CAPTURED
    assert (outcome.hold.captured, outcome.hold.released) == (1_200, 1_800)
    assert outcome.hold.captured + outcome.hold.released == hold.amount
    assert outcome.hold.closed_by == op.id
    # The balance drops by the captured amount only, held by the whole hold amount.
    assert changed[ALICE] == account(ALICE, 8_800, held=1_000)
    assert changed[WORLD_USD].balance == -8_800
    assert set(changed) == {ALICE, WORLD_USD}


def test_partial_capture_to_a_payee() -> None:
    hold = open_hold(ALICE, 3_000, to=BOB)
    balances = held_balances(hold)
    outcome, changed, _ = applied(capture_op(hold, 1), balances, refs(hold))
    assert outcome.postings == (Posting(ALICE, -1, 9_999), Posting(BOB, 1, 1))
    assert outcome.hold is not None
    assert (outcome.hold.captured, outcome.hold.released) == (1, 2_999)
    assert changed[ALICE] == account(ALICE, 9_999, held=0)


def test_capture_of_a_hold_in_an_overdraft() -> None:
    # The hold used the whole overdraft; capturing it lands exactly on the floor.
    hold = open_hold(CAROL, 5_000)
    balances = held_balances(hold)
    assert balances[CAROL].available == 0
    _, changed, _ = applied(capture_op(hold, 5_000), balances, refs(hold))
    assert changed[CAROL] == account(CAROL, -5_000, overdraft=5_000)


@pytest.mark.parametrize("amount", [3_001, 10_000])
def test_capture_above_the_hold_amount_fails(amount: int) -> None:
    hold = open_hold(ALICE, 3_000)
    balances = held_balances(hold)
    rejected(capture_op(hold, amount), balances, INVALID_AMOUNT, refs(hold))


@pytest.mark.parametrize("status", [HoldStatus.CAPTURED, HoldStatus.VOIDED, HoldStatus.EXPIRED])
def test_capture_or_void_of_a_closed_hold_fails(status: HoldStatus) -> None:
    closer = new_id()
    hold = open_hold(ALICE, 3_000, to=BOB)
    if status == HoldStatus.CAPTURED:
        closed = settle(hold, 2_000, closer)
    else:
        closed = release(hold, closer, expired=status == HoldStatus.EXPIRED)
    assert closed.status == status
    balances = make_balances()  # a closed hold no longer counts in held
    for op in (capture_op(closed, 1), capture_op(closed, 3_000), void_op(closed)):
        outcome = rejected(op, balances, HOLD_CLOSED, refs(closed))
        assert status.value in outcome.message


def test_capture_or_void_of_a_hold_not_in_refs_fails() -> None:
    hold = open_hold(ALICE, 3_000)
    balances = held_balances(hold)
    for op in (capture_op(hold, 1), void_op(hold), void_op(hold, expiry=True)):
        outcome = rejected(op, balances, HOLD_CLOSED)
        assert "never opened" in outcome.message


def test_void_releases_it_all() -> None:
    hold = open_hold(ALICE, 3_000, to=BOB)
    balances = make_balances(account(ALICE, 10_000, held=4_000))
    op = void_op(hold)
    outcome, changed, _ = applied(op, balances, refs(hold))
    assert outcome.postings == ()
    assert outcome.hold == Hold(
        hold.id, ALICE, BOB, "USD", 3_000, 0, 3_000, HoldStatus.VOIDED, None, op.id
    )
    assert changed == {ALICE: account(ALICE, 10_000, held=1_000)}


def test_expiry_void_ends_expired() -> None:
    hold = open_hold(ALICE, 3_000)
    balances = held_balances(hold)
    op = void_op(hold, expiry=True)
    outcome, changed, _ = applied(op, balances, refs(hold))
    assert outcome.postings == ()
    assert outcome.hold is not None
    assert outcome.hold.status == HoldStatus.EXPIRED
    assert (outcome.hold.captured, outcome.hold.released) == (0, 3_000)
    assert outcome.hold.closed_by == op.id
    assert changed == {ALICE: account(ALICE, 10_000)}


def test_capture_from_a_frozen_account_fails_while_a_void_works() -> None:
    hold = open_hold(ALICE, 3_000, to=BOB)
    balances = held_balances(hold)
    _, _, balances = applied(control_op(OperationType.FREEZE, ALICE), balances)
    assert balances[ALICE] == account(ALICE, 10_000, held=3_000, frozen=True)
    rejected(capture_op(hold, 3_000), balances, ACCOUNT_FROZEN, refs(hold))
    rejected(capture_op(hold, 1), balances, ACCOUNT_FROZEN, refs(hold))
    outcome, changed, _ = applied(void_op(hold), balances, refs(hold))
    assert outcome.hold is not None
    assert outcome.hold.status == HoldStatus.VOIDED
    assert changed == {ALICE: account(ALICE, 10_000, frozen=True)}


def test_capture_to_a_frozen_payee_applies() -> None:
    hold = open_hold(ALICE, 3_000, to=BOB)
    balances = held_balances(hold)
    balances[BOB] = account(BOB, 0, frozen=True, kind=AccountKind.SAVINGS)
    _, changed, _ = applied(capture_op(hold, 3_000), balances, refs(hold))
    assert changed[BOB] == account(BOB, 3_000, frozen=True, kind=AccountKind.SAVINGS)


def test_capture_to_a_payee_closed_since_the_hold_fails_while_a_void_works() -> None:
    hold = open_hold(ALICE, 3_000, to=BOB)
    balances = held_balances(hold)
    _, _, balances = applied(control_op(OperationType.CLOSE, BOB), balances)
    rejected(capture_op(hold, 3_000), balances, ACCOUNT_CLOSED, refs(hold))
    _, changed, _ = applied(void_op(hold), balances, refs(hold))
    assert changed == {ALICE: account(ALICE, 10_000)}


def test_hold_capture_and_second_capture_in_one_batch() -> None:
    balances = make_balances()
    hold = hold_op(ALICE, 3_000, to=BOB)
    as_hold = Hold(hold.id, ALICE, BOB, "USD", 3_000)
    first, second = capture_op(as_hold, 2_000), capture_op(as_hold, 1_000)
    outcomes, changed = apply_batch([hold, first, second], balances, WORLD)
    assert isinstance(outcomes[0], Applied)
    assert isinstance(outcomes[1], Applied)
    assert outcomes[1].postings == (Posting(ALICE, -2_000, 8_000), Posting(BOB, 2_000, 2_000))
    assert outcomes[1].hold is not None
    assert (outcomes[1].hold.status, outcomes[1].hold.captured, outcomes[1].hold.released) == (
        HoldStatus.CAPTURED,
        2_000,
        1_000,
    )
    assert isinstance(outcomes[2], Rejected)
    assert outcomes[2].code == HOLD_CLOSED
    assert changed == {
        ALICE: account(ALICE, 8_000),
        BOB: account(BOB, 2_000, kind=AccountKind.SAVINGS),
    }


def test_capture_of_a_hold_that_failed_earlier_in_the_batch_fails() -> None:
    hold = hold_op(BOB, 1)  # BOB has nothing available
    as_hold = Hold(hold.id, BOB, None, "USD", 1)
    outcomes, changed = apply_batch(
        [hold, capture_op(as_hold, 1), void_op(as_hold)], make_balances(), WORLD
    )
    assert [o.code for o in outcomes if isinstance(o, Rejected)] == [
        INSUFFICIENT_FUNDS,
        HOLD_CLOSED,
        HOLD_CLOSED,
    ]
    assert changed == {}


@pytest.mark.parametrize("payee", [BOB, None], ids=["to-payee", "to-world"])
@pytest.mark.parametrize("first_kind", ["capture", "void", "expiry"])
def test_many_captures_and_voids_of_one_hold_in_a_batch(
    first_kind: str, payee: UUID | None
) -> None:
    rng = random.Random(f"{first_kind}-{payee}")
    hold = open_hold(ALICE, 3_000, to=payee)
    balances = held_balances(hold)
    first = {
        "capture": capture_op(hold, 1_234),
        "void": void_op(hold),
        "expiry": void_op(hold, expiry=True),
    }[first_kind]
    ops = [first] + [
        capture_op(hold, rng.randint(1, 3_000))
        if rng.random() < 0.5
        else void_op(hold, expiry=rng.random() < 0.3)
        for _ in range(99)
    ]
    assert {op.type for op in ops[1:]} == {OperationType.CAPTURE, OperationType.VOID}
    outcomes, changed = apply_batch(ops, balances, WORLD, refs=refs(hold))
    win = outcomes[0]
    assert isinstance(win, Applied)
    assert all(isinstance(o, Rejected) and o.code == HOLD_CLOSED for o in outcomes[1:])
    final = {**balances, **changed}
    assert final[ALICE].held == 0
    assert totals(final) == totals(balances) == {"USD": 0, "EUR": 0}
    assert win.hold is not None
    assert win.hold.captured + win.hold.released == 3_000
    assert win.hold.closed_by == first.id
    credited = payee or WORLD_USD
    if first_kind == "capture":
        assert win.hold.status == HoldStatus.CAPTURED
        assert win.hold.captured == 1_234
        assert final[ALICE].balance == 10_000 - 1_234
        assert final[credited].balance == balances[credited].balance + 1_234
        assert set(changed) == {ALICE, credited}
    else:
        expected = HoldStatus.EXPIRED if first_kind == "expiry" else HoldStatus.VOIDED
        assert win.hold.status == expected
        assert changed == {ALICE: account(ALICE, 10_000)}


def test_settle_and_release_refuse_a_closed_hold_or_a_bad_amount() -> None:
    hold = open_hold(ALICE, 3_000)
    for bad in (0, -1, 3_001):
        with pytest.raises(ValueError):
            settle(hold, bad, new_id())
    done = release(hold, new_id())
    with pytest.raises(ValueError):
        release(done, new_id())
    with pytest.raises(ValueError):
        settle(done, 1, new_id())


# --- reversals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("made", "debited", "credited"),
    [
        (lambda: original(OperationType.DEPOSIT, ALICE, 4_000), ALICE, WORLD_USD),
        (lambda: original(OperationType.WITHDRAWAL, ALICE, 4_000), WORLD_USD, ALICE),
        (lambda: original(OperationType.TRANSFER, CAROL, 4_000, BOB), BOB, CAROL),
        (lambda: original(OperationType.CAPTURE, CAROL, 4_000, BOB), BOB, CAROL),
        (lambda: original(OperationType.CAPTURE, ALICE, 4_000), WORLD_USD, ALICE),
    ],
    ids=["deposit", "withdrawal", "transfer", "capture-to-payee", "capture-to-world"],
)
def test_reversal_moves_money_back(
    made: Callable[[], Original], debited: UUID, credited: UUID
) -> None:
    orig = made()
    # BOB received the transfer or capture: he has the money to give back.
    balances = make_balances(
        account(WORLD_USD, -14_000, kind=AccountKind.WORLD),
        account(BOB, 4_000, kind=AccountKind.SAVINGS),
    )
    assert reversal_accounts(orig, WORLD_USD) == (debited, credited)
    op = reversal_op(orig, 1_500)
    outcome, changed, _ = applied(op, balances, refs(orig))
    assert outcome.postings == (
        Posting(debited, -1_500, balances[debited].balance - 1_500),
        Posting(credited, 1_500, balances[credited].balance + 1_500),
    )
    assert outcome.reversed == (orig.id, 1_500)
    assert outcome.amount == 1_500
    assert outcome.hold is None
    assert {k: v.balance for k, v in changed.items()} == {
        debited: balances[debited].balance - 1_500,
        credited: balances[credited].balance + 1_500,
    }


def test_debited_by_reversal() -> None:
    assert debited_by_reversal(original(OperationType.DEPOSIT, ALICE, 1)) == ALICE
    assert debited_by_reversal(original(OperationType.WITHDRAWAL, ALICE, 1)) is None
    assert debited_by_reversal(original(OperationType.TRANSFER, ALICE, 1, BOB)) == BOB
    assert debited_by_reversal(original(OperationType.CAPTURE, ALICE, 1, BOB)) == BOB
    assert debited_by_reversal(original(OperationType.CAPTURE, ALICE, 1)) is None


def test_partial_reversal_then_the_rest() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 4_000)
    balances = make_balances()
    first, _, balances = applied(reversal_op(orig, 1_000), balances, refs(orig))
    assert first.reversed == (orig.id, 1_000)
    assert first.amount == 1_000
    # The store records the new total on the original.
    orig = Original(orig.id, orig.type, orig.status, orig.account_id, None, 4_000, 1_000)
    rest, changed, balances = applied(reversal_op(orig, 0), balances, refs(orig))
    assert rest.amount == 3_000
    assert rest.reversed == (orig.id, 4_000)
    assert rest.postings == (Posting(ALICE, -3_000, 6_000), Posting(WORLD_USD, 3_000, -6_000))
    assert changed[ALICE] == account(ALICE, 6_000)
    done = Original(orig.id, orig.type, orig.status, orig.account_id, None, 4_000, 4_000)
    rejected(reversal_op(done, 0), balances, REVERSAL_EXCEEDS_ORIGINAL, refs(done))
    rejected(reversal_op(done, 1), balances, REVERSAL_EXCEEDS_ORIGINAL, refs(done))


def test_partial_reversal_then_the_rest_in_one_batch() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 4_000)
    ops = [reversal_op(orig, 1_000), reversal_op(orig, 0), reversal_op(orig, 0)]
    outcomes, changed = apply_batch(ops, make_balances(), WORLD, refs=refs(orig))
    first, rest, third = outcomes
    assert isinstance(first, Applied) and isinstance(rest, Applied)
    assert (first.amount, first.reversed) == (1_000, (orig.id, 1_000))
    assert (rest.amount, rest.reversed) == (3_000, (orig.id, 4_000))
    assert isinstance(third, Rejected)
    assert third.code == REVERSAL_EXCEEDS_ORIGINAL
    assert changed[ALICE] == account(ALICE, 6_000)
    assert changed[WORLD_USD].balance == -6_000


def test_reversal_above_what_is_left_fails() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 4_000, reversed_=1_000)
    rejected(reversal_op(orig, 3_001), make_balances(), REVERSAL_EXCEEDS_ORIGINAL, refs(orig))
    outcome, _, _ = applied(reversal_op(orig, 3_000), make_balances(), refs(orig))
    assert outcome.reversed == (orig.id, 4_000)


def test_two_reversals_in_one_batch_that_together_exceed_the_original() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 4_000, reversed_=1_000)
    first, second = reversal_op(orig, 2_000), reversal_op(orig, 1_500)
    outcomes, changed = apply_batch([first, second], make_balances(), WORLD, refs=refs(orig))
    assert isinstance(outcomes[0], Applied)
    assert outcomes[0].reversed == (orig.id, 3_000)
    assert isinstance(outcomes[1], Rejected)
    assert outcomes[1].code == REVERSAL_EXCEEDS_ORIGINAL
    assert "has 1000 left" in outcomes[1].message
    assert changed == {
        ALICE: account(ALICE, 8_000),
        WORLD_USD: account(WORLD_USD, -8_000, kind=AccountKind.WORLD),
    }


@pytest.mark.parametrize(
    ("type_", "status"),
    [
        (OperationType.DEPOSIT, OperationStatus.PENDING),
        (OperationType.DEPOSIT, OperationStatus.FAILED),
        (OperationType.TRANSFER, OperationStatus.CANCELLED),
        (OperationType.CAPTURE, OperationStatus.FAILED),
        (OperationType.ALLOCATION, OperationStatus.SUCCEEDED),
        (OperationType.REDEMPTION, OperationStatus.SUCCEEDED),
        (OperationType.REVERSAL, OperationStatus.SUCCEEDED),
        (OperationType.HOLD, OperationStatus.SUCCEEDED),
        (OperationType.VOID, OperationStatus.SUCCEEDED),
        (OperationType.FREEZE, OperationStatus.SUCCEEDED),
    ],
)
def test_reversal_of_an_irreversible_operation_fails(
    type_: OperationType, status: OperationStatus
) -> None:
    payee = BOB if type_ == OperationType.TRANSFER else None
    orig = original(type_, ALICE, 1_000, payee, status=status)
    assert not orig.reversible
    for amount in (0, 500):
        rejected(reversal_op(orig, amount), make_balances(), NOT_REVERSIBLE, refs(orig))


def test_reversal_of_an_operation_not_in_refs_fails() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 1_000)
    rejected(reversal_op(orig, 0), make_balances(), NOT_REVERSIBLE)


def test_reversal_debiting_an_account_without_funds_fails() -> None:
    # BOB was paid 500 and spent it.
    deposit_to_bob = original(OperationType.DEPOSIT, BOB, 500)
    balances = make_balances()
    rejected(reversal_op(deposit_to_bob, 0), balances, INSUFFICIENT_FUNDS, refs(deposit_to_bob))
    paid_bob = original(OperationType.TRANSFER, ALICE, 500, BOB)
    rejected(reversal_op(paid_bob, 1), make_balances(), INSUFFICIENT_FUNDS, refs(paid_bob))


def test_reversal_funds_check_counts_the_held_amount() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 4_000)
    balances = make_balances(account(ALICE, 10_000, held=7_000))
    rejected(reversal_op(orig, 0), balances, INSUFFICIENT_FUNDS, refs(orig))
    outcome, changed, _ = applied(reversal_op(orig, 3_000), balances, refs(orig))
    assert changed[ALICE] == account(ALICE, 7_000, held=7_000)
    assert outcome.reversed == (orig.id, 3_000)


def test_reversal_in_another_currency_fails() -> None:
    orig = original(OperationType.DEPOSIT, ALICE, 4_000)
    rejected(reversal_op(orig, 100, "EUR"), make_balances(), CURRENCY_MISMATCH, refs(orig))


# --- account controls --------------------------------------------------------------------------


def test_freeze_stops_debits_but_not_credits() -> None:
    balances = make_balances()
    outcome, changed, balances = applied(control_op(OperationType.FREEZE, ALICE), balances)
    assert outcome.postings == ()
    assert changed == {ALICE: account(ALICE, 10_000, frozen=True)}
    took_deposit = original(OperationType.DEPOSIT, ALICE, 1_000)
    made_withdrawal = original(OperationType.WITHDRAWAL, ALICE, 1_000)
    references = refs(took_deposit, made_withdrawal)
    for debit in (
        withdrawal(ALICE, 1),
        transfer(ALICE, BOB, 1),
        hold_op(ALICE, 1),
        reversal_op(took_deposit, 0),
    ):
        rejected(debit, balances, ACCOUNT_FROZEN, references)
    _, changed, balances = applied(deposit(ALICE, 500), balances)
    assert changed[ALICE] == account(ALICE, 10_500, frozen=True)
    _, changed, balances = applied(transfer(CAROL, ALICE, 500), balances)
    assert changed[ALICE] == account(ALICE, 11_000, frozen=True)
    _, changed, balances = applied(reversal_op(made_withdrawal, 0), balances, references)
    assert changed[ALICE] == account(ALICE, 12_000, frozen=True)
    # Freezing again is harmless.
    _, changed, _ = applied(control_op(OperationType.FREEZE, ALICE), balances)
    assert changed == {ALICE: account(ALICE, 12_000, frozen=True)}


def test_unfreeze_restores_debits() -> None:
    balances = make_balances(account(ALICE, 10_000, frozen=True))
    rejected(withdrawal(ALICE, 1), balances, ACCOUNT_FROZEN)
    _, changed, balances = applied(control_op(OperationType.UNFREEZE, ALICE), balances)
    assert changed == {ALICE: account(ALICE, 10_000)}
    _, changed, _ = applied(withdrawal(ALICE, 1), balances)
    assert changed[ALICE] == account(ALICE, 9_999)


def test_freeze_and_unfreeze_in_one_batch_keep_their_order() -> None:
    ops = [
        control_op(OperationType.FREEZE, ALICE),
        withdrawal(ALICE, 100),
        deposit(ALICE, 100),
        control_op(OperationType.UNFREEZE, ALICE),
        withdrawal(ALICE, 100),
    ]
    outcomes, changed = apply_batch(ops, make_balances(), WORLD)
    assert [o.code if isinstance(o, Rejected) else "ok" for o in outcomes] == [
        "ok",
        ACCOUNT_FROZEN,
        "ok",
        "ok",
        "ok",
    ]
    assert changed[ALICE] == account(ALICE, 10_000)


def test_freeze_keeps_balance_held_and_overdraft() -> None:
    balances = make_balances(account(CAROL, -100, held=200, overdraft=5_000))
    _, changed, _ = applied(control_op(OperationType.FREEZE, CAROL), balances)
    assert changed == {CAROL: account(CAROL, -100, held=200, overdraft=5_000, frozen=True)}


@pytest.mark.parametrize(
    "holder",
    [
        account(ALICE, 1),
        account(CAROL, -1, overdraft=5_000),
        account(CAROL, 0, held=1, overdraft=5_000),
        account(ALICE, 10_000, held=10_000),
    ],
    ids=["positive", "negative", "held", "both"],
)
def test_close_needs_zero_balance_and_nothing_held(holder: Account) -> None:
    rejected(control_op(OperationType.CLOSE, holder.id), make_balances(holder), ACCOUNT_NOT_EMPTY)


def test_close_after_the_hold_is_voided() -> None:
    hold = open_hold(CAROL, 1_000)
    balances = held_balances(hold)
    rejected(control_op(OperationType.CLOSE, CAROL), balances, ACCOUNT_NOT_EMPTY)
    _, _, balances = applied(void_op(hold), balances, refs(hold))
    _, changed, _ = applied(control_op(OperationType.CLOSE, CAROL), balances)
    assert changed == {CAROL: account(CAROL, 0, overdraft=5_000, closed=True)}


def test_after_close_everything_on_the_account_fails() -> None:
    balances = make_balances()
    outcome, changed, balances = applied(control_op(OperationType.CLOSE, BOB), balances)
    assert outcome.postings == ()
    assert changed == {BOB: account(BOB, 0, closed=True, kind=AccountKind.SAVINGS)}
    paid_bob = original(OperationType.WITHDRAWAL, BOB, 100)
    bob_paid = original(OperationType.TRANSFER, BOB, 100, ALICE)
    bob_got = original(OperationType.DEPOSIT, BOB, 100)
    references = refs(paid_bob, bob_paid, bob_got)
    for op in (
        deposit(BOB, 1),
        withdrawal(BOB, 1),
        transfer(BOB, ALICE, 1),
        transfer(ALICE, BOB, 1),
        hold_op(BOB, 1),
        hold_op(ALICE, 1, to=BOB),
        reversal_op(paid_bob, 0),  # would credit BOB
        reversal_op(bob_paid, 0),  # would credit BOB
        reversal_op(bob_got, 0),  # would debit BOB (closed before short of funds)
        control_op(OperationType.FREEZE, BOB),
        control_op(OperationType.UNFREEZE, BOB),
        control_op(OperationType.CLOSE, BOB),
    ):
        rejected(op, balances, ACCOUNT_CLOSED, references)


def test_close_of_a_frozen_account_then_controls_fail() -> None:
    balances = make_balances(account(BOB, 0, frozen=True, kind=AccountKind.SAVINGS))
    _, changed, balances = applied(control_op(OperationType.CLOSE, BOB), balances)
    assert changed[BOB].closed
    rejected(control_op(OperationType.UNFREEZE, BOB), balances, ACCOUNT_CLOSED)
    rejected(deposit(BOB, 1), balances, ACCOUNT_CLOSED)


def test_control_of_a_missing_account_fails() -> None:
    rejected(control_op(OperationType.FREEZE, MISSING), make_balances(), ACCOUNT_NOT_FOUND)


# --- property: invariants over random sequences ------------------------------------------------

P_WORLD = {"USD": UUID(int=1), "EUR": UUID(int=2)}
P_CUSTOMERS = tuple(UUID(int=10 + i) for i in range(4))
P_UNKNOWN = UUID(int=999)
P_CURRENCIES = ("USD", "EUR")

small = st.integers(1, 80)
T = OperationType
# Weighted: holds, captures, voids and reversals most.
OP_MIX = [T.DEPOSIT, T.WITHDRAWAL, T.TRANSFER, *[T.HOLD] * 3, *[T.CAPTURE] * 2, *[T.VOID] * 2]
OP_MIX += [*[T.REVERSAL] * 3, T.FREEZE, *[T.UNFREEZE] * 2]
ORIGINAL_TYPES = [T.DEPOSIT, T.WITHDRAWAL, T.TRANSFER, T.CAPTURE, T.HOLD]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict[UUID, Account], Refs, list[Operation]]:
    """Customer accounts (world balancing each currency), open and closed holds and originals
    from before the batch, and a batch of operations referring to them and to its own holds."""
    currency_of: dict[UUID, str] = {}
    accounts: dict[UUID, Account] = {}
    for cid in P_CUSTOMERS:
        currency_of[cid] = draw(st.sampled_from(P_CURRENCIES))
        accounts[cid] = Account(
            cid,
            draw(st.sampled_from(sorted(CUSTOMER_KINDS))),
            currency_of[cid],
            draw(st.integers(0, 100)),
            overdraft_limit=draw(st.sampled_from([0, 0, 30])),
        )

    def payee_for(cid: UUID, required: bool = False) -> UUID | None:
        others = [o for o in P_CUSTOMERS if o != cid and currency_of[o] == currency_of[cid]]
        if not others:
            return None
        options: list[UUID | None] = list(others) if required else [None, *others]
        return draw(st.sampled_from(options))

    # Holds from earlier batches: open ones count in held (within what was available).
    holds: dict[UUID, Hold] = {}
    for i in range(draw(st.integers(0, 4))):
        cid = draw(st.sampled_from(P_CUSTOMERS))
        a = accounts[cid]
        hold = Hold(UUID(int=500 + i), cid, payee_for(cid), a.currency, draw(small))
        if draw(st.integers(0, 2)) == 0 or a.available < hold.amount:
            hold = draw(
                st.sampled_from(
                    [
                        settle(hold, hold.amount, UUID(int=600 + i)),
                        release(hold, UUID(int=600 + i)),
                        release(hold, UUID(int=600 + i), expired=True),
                    ]
                )
            )
        else:
            accounts[cid] = Account(
                cid, a.kind, a.currency, a.balance, a.overdraft_limit, a.held + hold.amount
            )
        holds[hold.id] = hold

    originals: dict[UUID, Original] = {}
    for i in range(draw(st.integers(0, 5))):
        cid = draw(st.sampled_from(P_CUSTOMERS))
        type_ = draw(st.sampled_from(ORIGINAL_TYPES))
        to = None
        if type_ == OperationType.TRANSFER:
            to = payee_for(cid, required=True)
            if to is None:
                type_ = OperationType.DEPOSIT
        elif type_ == OperationType.CAPTURE:
            to = payee_for(cid)
        amount = draw(small)
        status = draw(st.sampled_from([OperationStatus.SUCCEEDED] * 4 + [OperationStatus.FAILED]))
        o = Original(
            UUID(int=700 + i), type_, status, cid, to, amount, draw(st.integers(0, amount))
        )
        originals[o.id] = o

    for currency, world_id in P_WORLD.items():
        total = sum(a.balance for a in accounts.values() if a.currency == currency)
        accounts[world_id] = Account(world_id, AccountKind.WORLD, currency, -total)

    # Which account and currency the batch's own holds are on, by id, as they are generated.
    hold_refs: dict[UUID, tuple[UUID, str, int]] = {
        h.id: (h.account_id, h.currency, h.amount) for h in holds.values()
    }
    ops: list[Operation] = []
    for index in range(draw(st.integers(0, 25))):
        op_id = UUID(int=10_000 + index)
        kind = draw(st.sampled_from(OP_MIX))
        cid = draw(st.sampled_from(P_CUSTOMERS))
        # Mostly the account's currency; sometimes not (currency_mismatch).
        currency = draw(st.sampled_from([currency_of[cid]] * 5 + list(P_CURRENCIES)))
        if kind in (OperationType.DEPOSIT, OperationType.WITHDRAWAL):
            op = Operation(op_id, kind, cid, draw(small), currency)
        elif kind == OperationType.TRANSFER:
            to = payee_for(cid, required=True) or draw(st.sampled_from(P_CUSTOMERS))
            if to == cid:
                continue
            op = Operation(op_id, kind, cid, draw(small), currency, to)
        elif kind == OperationType.HOLD:
            op = Operation(op_id, kind, cid, draw(small), currency, payee_for(cid), expires_in=60)
            hold_refs[op_id] = (cid, currency, op.amount)
        elif kind in (OperationType.CAPTURE, OperationType.VOID):
            # Earlier ids of any type: one that is not a hold was never opened.
            choices = [*hold_refs, *hold_refs, *hold_refs, *(o.id for o in ops), P_UNKNOWN]
            hold_id = draw(st.sampled_from(choices))
            holder, hold_currency, hold_amount = hold_refs.get(hold_id, (cid, currency, 1))
            amount = 0
            if kind == OperationType.CAPTURE:
                amount = draw(
                    st.sampled_from(
                        [hold_amount, hold_amount, max(1, hold_amount // 2), hold_amount + 1]
                    )
                )
            op = Operation(
                op_id,
                kind,
                holder,
                amount,
                hold_currency,
                hold_id=hold_id,
                expiry=draw(st.booleans()) if kind == OperationType.VOID else False,
            )
        elif kind == OperationType.REVERSAL:
            ref = draw(st.sampled_from([*originals, *originals, P_UNKNOWN]))
            referred = originals.get(ref)
            owner = referred.account_id if referred is not None else cid
            op = Operation(
                op_id,
                kind,
                owner,
                draw(st.sampled_from([0, 0, 1, 20, 80])),
                currency_of[owner],
                reversal_of=ref,
            )
        else:
            op = Operation(op_id, kind, cid, 0, currency_of[cid])
        ops.append(op)
    return accounts, Refs(holds=holds, originals=originals), ops


def check_state(
    balances: Mapping[UUID, Account], holds: Mapping[UUID, Hold], originals: Mapping[UUID, Original]
) -> None:
    for currency in P_CURRENCIES:
        assert sum(a.balance for a in balances.values() if a.currency == currency) == 0
    open_held: dict[UUID, int] = defaultdict(int)
    for h in holds.values():
        if h.is_open:
            open_held[h.account_id] += h.amount
        else:
            assert h.captured + h.released == h.amount
            assert h.captured >= 0
            assert h.released >= 0
    for a in balances.values():
        assert a.held == open_held[a.id], a
        if a.kind in CUSTOMER_KINDS:
            assert a.balance - a.held >= -a.overdraft_limit, a
    for o in originals.values():
        assert 0 <= o.reversed <= o.amount, o


def expected_rejection(
    op: Operation,
    balances: Mapping[UUID, Account],
    holds: Mapping[UUID, Hold],
    originals: Mapping[UUID, Original],
) -> str | None:
    """The code the rules guarantee for `op` where they are simple to state (None: no claim)."""
    if op.type in (OperationType.CAPTURE, OperationType.VOID):
        assert op.hold_id is not None
        hold = holds.get(op.hold_id)
        if hold is None or not hold.is_open:
            return HOLD_CLOSED
        if op.type == OperationType.CAPTURE and op.amount > hold.amount:
            return INVALID_AMOUNT
    if op.type == OperationType.REVERSAL:
        assert op.reversal_of is not None
        o = originals.get(op.reversal_of)
        if o is None or not o.reversible:
            return NOT_REVERSIBLE
        if (op.amount or o.remaining) > o.remaining or o.remaining == 0:
            return REVERSAL_EXCEEDS_ORIGINAL
    if op.type == OperationType.HOLD:
        a = balances[op.account_id]
        payee = balances[op.to_account_id] if op.to_account_id is not None else a
        if (
            a.currency == payee.currency == op.currency
            and not (a.closed or payee.closed or a.frozen)
            and a.available < op.amount
        ):
            return INSUFFICIENT_FUNDS
    return None


def check_applied(
    op: Operation,
    outcome: Applied,
    balances: Mapping[UUID, Account],
    holds: Mapping[UUID, Hold],
    originals: Mapping[UUID, Original],
) -> None:
    """An applied operation moved what the rules say, between the accounts they say."""
    legs = [(p.account_id, p.amount) for p in outcome.postings]
    if op.type == OperationType.HOLD:
        assert legs == []
        assert outcome.hold is not None
        assert outcome.hold.is_open
        assert outcome.hold.amount == op.amount
        assert balances[op.account_id].available >= op.amount
    elif op.type == OperationType.VOID:
        assert legs == []
        assert outcome.hold is not None
        assert outcome.hold.status == (HoldStatus.EXPIRED if op.expiry else HoldStatus.VOIDED)
        assert outcome.hold.released == holds[outcome.hold.id].amount
    elif op.type == OperationType.CAPTURE:
        assert op.hold_id is not None
        hold = holds[op.hold_id]
        payee = hold.to_account_id or P_WORLD[hold.currency]
        assert legs == [(hold.account_id, -op.amount), (payee, op.amount)]
        assert outcome.hold is not None
        assert outcome.hold.status == HoldStatus.CAPTURED
        assert (outcome.hold.captured, outcome.hold.released) == (
            op.amount,
            hold.amount - op.amount,
        )
    elif op.type == OperationType.REVERSAL:
        assert op.reversal_of is not None
        o = originals[op.reversal_of]
        amount = op.amount or o.remaining
        assert outcome.amount == amount
        assert outcome.reversed == (o.id, o.reversed + amount)
        world = P_WORLD[balances[o.account_id].currency]
        back = {
            OperationType.DEPOSIT: (o.account_id, world),
            OperationType.WITHDRAWAL: (world, o.account_id),
            OperationType.TRANSFER: (o.to_account_id, o.account_id),
            OperationType.CAPTURE: (o.to_account_id or world, o.account_id),
        }[o.type]
        assert legs == [(back[0], -amount), (back[1], amount)]
    elif op.type in (OperationType.FREEZE, OperationType.UNFREEZE):
        assert legs == []


@settings(max_examples=150, deadline=None)
@given(scenario=scenarios())
def test_invariants_hold_over_random_sequences(
    scenario: tuple[dict[UUID, Account], Refs, list[Operation]],
) -> None:
    initial, references, ops = scenario
    check_state(initial, references.holds, references.originals)

    outcomes, changed = apply_batch(ops, initial, P_WORLD, refs=references)
    assert [o.operation_id for o in outcomes] == [op.id for op in ops]

    # Replay the outcomes: after every operation, the invariants hold.
    balances = dict(initial)
    holds = dict(references.holds)
    originals = dict(references.originals)
    for op, outcome in zip(ops, outcomes, strict=True):
        event(f"{op.type}: {outcome.code if isinstance(outcome, Rejected) else 'applied'}")
        code = expected_rejection(op, balances, holds, originals)
        if code is not None:
            assert isinstance(outcome, Rejected), (op, outcome)
            assert outcome.code == code, (op, outcome)
            continue
        if op.type == OperationType.VOID:
            # A void of an open hold always applies (a frozen account included).
            assert isinstance(outcome, Applied), (op, outcome)
        if isinstance(outcome, Rejected):
            continue
        check_applied(op, outcome, balances, holds, originals)
        for p in outcome.postings:
            assert p.balance_after == balances[p.account_id].balance + p.amount
            balances[p.account_id] = replace(balances[p.account_id], balance=p.balance_after)
        if outcome.hold is not None:
            a = balances[outcome.hold.account_id]
            delta = outcome.hold.amount if outcome.hold.is_open else -outcome.hold.amount
            balances[a.id] = replace(a, held=a.held + delta)
            holds[outcome.hold.id] = outcome.hold
        if op.type in (OperationType.FREEZE, OperationType.UNFREEZE):
            frozen = op.type == OperationType.FREEZE
            balances[op.account_id] = replace(balances[op.account_id], frozen=frozen)
        if outcome.reversed is not None:
            original_id, total = outcome.reversed
            originals[original_id] = replace(originals[original_id], reversed=total)
        check_state(balances, holds, originals)

    # apply_batch's final state is the replayed one.
    assert {**initial, **changed} == balances
