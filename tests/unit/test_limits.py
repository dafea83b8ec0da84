"""Unit tests for domain.limits: rolling windows and the judgement of deposit claims."""

from decimal import Decimal
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.errors import InvalidAmount, UnknownCurrency
from domain.limits import (
    API_KEY,
    BUCKET_SECONDS,
    DAILY,
    DEFAULT_DAILY,
    DEFAULT_LIMITS,
    DEFAULT_PER_OPERATION,
    MAX_LIMIT,
    PER_OPERATION,
    USER,
    WINDOW_BUCKETS,
    Claim,
    Limits,
    Standing,
    Subject,
    Window,
    bucket_of,
    judge,
    parse_limit,
    standing,
)
from domain.money import MAX_MINOR_UNITS, parse_amount

ALICE = Subject(USER, UUID(int=1))
BOB = Subject(USER, UUID(int=2))
KEY = Subject(API_KEY, UUID(int=3))
DAY = 24 * 3600
T0 = 1_800_000_000.0  # a moment; bucket arithmetic is relative to it


def limits(*pairs: tuple[Subject, str], per_operation: int = 1_000, daily: int = 5_000) -> dict:
    return {pair: Limits(per_operation, daily) for pair in pairs}


def claim(*deposits: tuple[str, int], subjects: tuple[Subject, ...] = (ALICE,)) -> Claim:
    return Claim(subjects, deposits)


# ---------------------------------------------------------------- defaults


def test_defaults_keep_every_amount_one_operation_accepts_and_ten_of_them_a_day() -> None:
    assert DEFAULT_PER_OPERATION == MAX_MINOR_UNITS
    for currency, largest in (("USD", "10000000000000"), ("JPY", "1000000000000000")):
        assert parse_amount(largest, currency) <= DEFAULT_PER_OPERATION
    assert DEFAULT_DAILY >= 10 * DEFAULT_PER_OPERATION
    ten = claim(*[("USD", MAX_MINOR_UNITS)] * 10)
    verdicts, _ = judge([ten], {}, {(ALICE, "USD"): DEFAULT_LIMITS}, T0)
    assert verdicts == [None]


def test_the_reproduction_is_refused_on_its_own() -> None:
    # 1,000 maximal deposits in one batch: over the daily limit whatever came before.
    batch = claim(*[("USD", MAX_MINOR_UNITS)] * 1_000)
    [refusal], changed = judge([batch], {}, {(ALICE, "USD"): DEFAULT_LIMITS}, T0)
    assert refusal is not None and changed == {}
    assert (refusal.limit, refusal.subject, refusal.currency) == (DAILY, ALICE, "USD")
    assert refusal.requested == 1_000 * MAX_MINOR_UNITS and refusal.retry_after is None
    assert refusal.remaining == DEFAULT_DAILY


def test_limits_are_bounded() -> None:
    with pytest.raises(ValueError, match="per_operation"):
        Limits(0, 1)
    with pytest.raises(ValueError, match="daily"):
        Limits(1, MAX_LIMIT + 1)
    assert DEFAULT_LIMITS.overridden(None, None) is DEFAULT_LIMITS
    assert DEFAULT_LIMITS.overridden(5, None) == Limits(5, DEFAULT_DAILY)
    assert DEFAULT_LIMITS.overridden(None, 7) == Limits(DEFAULT_PER_OPERATION, 7)


# ---------------------------------------------------------------- windows


def test_a_window_keeps_a_deposit_for_at_least_a_day() -> None:
    start = bucket_of(T0)
    window = Window().plus(start, 100)
    assert window.total() == 100
    # Every moment within 24 hours of the deposit still counts it ...
    for seconds in (0, 1, BUCKET_SECONDS, DAY - 1, DAY):
        assert window.rolled(bucket_of(T0 + seconds)).total() == 100, seconds
    # ... and it is gone once the window's oldest bucket moved past its bucket.
    gone = (start + WINDOW_BUCKETS) * BUCKET_SECONDS
    assert window.rolled(bucket_of(gone - 1)).total() == 100
    assert window.rolled(bucket_of(gone)).total() == 0
    assert gone - T0 < DAY + BUCKET_SECONDS + 1


def test_a_window_never_rolls_back() -> None:
    window = Window().plus(bucket_of(T0), 100)
    earlier = bucket_of(T0 - 3 * BUCKET_SECONDS)
    assert window.rolled(earlier) == window
    assert window.plus(earlier, 5) == Window(window.head, (105,))


def test_a_window_forgets_buckets_in_order() -> None:
    b = bucket_of(T0)
    window = Window().plus(b, 10).plus(b + 4, 20).plus(b + 50, 30)
    assert window.total() == 60 and window.head == b + 50 and len(window.sums) == 51
    assert window.rolled(b + WINDOW_BUCKETS).total() == 50
    assert window.rolled(b + WINDOW_BUCKETS + 4).total() == 30
    assert window.rolled(b + WINDOW_BUCKETS + 50) == Window(b + WINDOW_BUCKETS + 50, ())


def test_seconds_until_room() -> None:
    b = bucket_of(T0)
    window = Window().plus(b, 10).plus(b + 4, 20)
    now = (b + 10) * BUCKET_SECONDS + 7
    assert window.seconds_until(now, 30) == 0
    # 20 of room: the first bucket (10) must leave.
    assert window.seconds_until(now, 20) == (b + WINDOW_BUCKETS) * BUCKET_SECONDS - now
    assert window.seconds_until(now, 0) == (b + 4 + WINDOW_BUCKETS) * BUCKET_SECONDS - now


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.integers(0, 3 * WINDOW_BUCKETS), st.integers(1, 1_000)), max_size=40
    ),
    look=st.integers(0, 4 * WINDOW_BUCKETS),
)
def test_a_window_sums_exactly_the_deposits_of_its_last_day(
    steps: list[tuple[int, int]], look: int
) -> None:
    """Against a plain list of (bucket, amount): the window's total from any later bucket is the
    sum of the deposits taken in the WINDOW_BUCKETS buckets ending there."""
    window = Window()
    taken: list[tuple[int, int]] = []
    bucket = 0
    for advance, amount in steps:
        bucket += advance % 7  # time moves forward, often within a bucket
        window = window.plus(bucket, amount)
        taken.append((bucket, amount))
    at = bucket + look
    expected = sum(a for b, a in taken if b > at - WINDOW_BUCKETS)
    assert window.rolled(at).total() == expected
    assert len(window.rolled(at).sums) <= WINDOW_BUCKETS


# ---------------------------------------------------------------- judgement


def test_claims_are_judged_in_order_each_seeing_the_ones_taken_before() -> None:
    claims = [claim(("USD", 1_000)), claim(("USD", 1_000), ("USD", 900)), claim(("USD", 2_200))]
    verdicts, changed = judge(claims, {}, limits((ALICE, "USD"), per_operation=5_000), T0)
    assert verdicts[:2] == [None, None]
    third = verdicts[2]
    assert third is not None and (third.limit, third.remaining) == (DAILY, 2_100)
    # 2,900 taken; the third would fit once the window forgets them, not before.
    assert third.retry_after is not None and third.retry_after > DAY - BUCKET_SECONDS
    assert changed[(ALICE, "USD")].total() == 2_900


def test_a_refused_claim_takes_nothing_and_a_smaller_one_after_it_fits() -> None:
    claims = [claim(("USD", 1_000), ("USD", 1_001)), claim(("USD", 999))]
    verdicts, changed = judge(claims, {}, limits((ALICE, "USD")), T0)
    refusal = verdicts[0]
    assert refusal is not None and refusal.limit == PER_OPERATION
    assert (refusal.requested, refusal.limit_amount, refusal.retry_after) == (1_001, 1_000, None)
    assert verdicts[1] is None
    assert changed == {(ALICE, "USD"): Window(bucket_of(T0), (999,))}


def test_currencies_are_counted_apart() -> None:
    pairs = limits((ALICE, "USD"), (ALICE, "JPY"))
    claims = [claim(*[("USD", 1_000)] * 5), claim(*[("JPY", 1_000)] * 5), claim(("USD", 1))]
    verdicts, changed = judge(claims, {}, pairs, T0)
    assert verdicts[:2] == [None, None] and verdicts[2] is not None
    assert verdicts[2].currency == "USD"
    assert {key: w.total() for key, w in changed.items()} == {
        (ALICE, "USD"): 5_000,
        (ALICE, "JPY"): 5_000,
    }


def test_users_are_counted_apart() -> None:
    pairs = limits((ALICE, "USD"), (BOB, "USD"))
    full = {(ALICE, "USD"): Window().plus(bucket_of(T0), 5_000)}
    verdicts, changed = judge(
        [claim(("USD", 1)), claim(("USD", 1), subjects=(BOB,))], full, pairs, T0
    )
    assert verdicts[0] is not None and verdicts[0].subject == ALICE
    assert verdicts[1] is None and set(changed) == {(BOB, "USD")}


def test_a_key_counts_against_its_own_limits_and_its_users() -> None:
    pairs = {(ALICE, "USD"): Limits(1_000, 5_000), (KEY, "USD"): Limits(500, 1_500)}
    both = (ALICE, KEY)
    verdicts, changed = judge(
        [
            claim(("USD", 600), subjects=both),  # over the key's per-operation limit
            claim(("USD", 500), ("USD", 500), ("USD", 500), subjects=both),
            claim(("USD", 1), subjects=both),  # the key's day is full
            claim(("USD", 1_000), ("USD", 1_000), subjects=(ALICE,)),  # the user's is not
        ],
        {},
        pairs,
        T0,
    )
    first, _, third, fourth = verdicts
    assert first is not None and (first.limit, first.subject) == (PER_OPERATION, KEY)
    assert verdicts[1] is None
    assert third is not None and (third.limit, third.subject, third.remaining) == (DAILY, KEY, 0)
    assert fourth is None
    assert changed[(KEY, "USD")].total() == 1_500
    assert changed[(ALICE, "USD")].total() == 3_500


def test_stored_windows_count_and_roll() -> None:
    b = bucket_of(T0)
    stored = {(ALICE, "USD"): Window(b - WINDOW_BUCKETS + 1, (4_000,))}
    pairs = limits((ALICE, "USD"), per_operation=5_000)
    verdicts, _ = judge([claim(("USD", 1_001))], stored, pairs, T0)
    assert verdicts[0] is not None and verdicts[0].remaining == 1_000
    # One bucket later the stored deposit has left the window.
    later = T0 + BUCKET_SECONDS
    verdicts, changed = judge([claim(("USD", 1_001))], stored, pairs, later)
    assert verdicts == [None]
    assert changed[(ALICE, "USD")] == Window(bucket_of(later), (1_001,))


def test_judge_leaves_its_inputs_alone_and_needs_limits_for_every_pair() -> None:
    stored = {(ALICE, "USD"): Window(bucket_of(T0), (10,))}
    snapshot = dict(stored)
    judge([claim(("USD", 5))], stored, limits((ALICE, "USD")), T0)
    assert stored == snapshot
    with pytest.raises(KeyError):
        judge([claim(("EUR", 5))], stored, limits((ALICE, "USD")), T0)
    with pytest.raises(ValueError):
        judge([claim(("USD", 0))], stored, limits((ALICE, "USD")), T0)


# ---------------------------------------------------------------- limits as the admin writes them


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [
        ("1000.00", "USD", 100_000),
        ("0.01", "USD", 1),
        ("12", "JPY", 12),
        ("1.5", "BHD", 1_500),
        ("10000000000000000", "USD", MAX_LIMIT),
        ("1000000000000000000", "JPY", MAX_LIMIT),
    ],
)
def test_parse_limit(value: str, currency: str, minor: int) -> None:
    assert parse_limit(Decimal(value), currency, "daily") == minor


@pytest.mark.parametrize(
    ("value", "currency", "message"),
    [
        ("0", "USD", "greater than zero"),
        ("-1", "USD", "greater than zero"),
        ("NaN", "USD", "greater than zero"),
        ("Infinity", "USD", "greater than zero"),
        ("0.001", "USD", "more decimal places"),
        ("1.5", "JPY", "more decimal places"),
        ("10000000000000000.01", "USD", "at most 10000000000000000.00 USD"),
        ("1E+400", "USD", "at most"),
    ],
)
def test_parse_limit_refuses(value: str, currency: str, message: str) -> None:
    with pytest.raises(InvalidAmount, match=message) as info:
        parse_limit(Decimal(value), currency, "daily")
    assert info.value.field == "daily"


def test_parse_limit_needs_a_known_currency() -> None:
    with pytest.raises(UnknownCurrency):
        parse_limit(Decimal("1"), "XXX", "daily")


# ---------------------------------------------------------------- where a subject stands


def test_standing_is_the_limits_in_effect_and_what_the_rolling_day_holds() -> None:
    b = bucket_of(T0)
    window = Window(b - 1, (700, 300))
    now = standing(Limits(1_000, 5_000), None, 2_000, window, T0)
    assert now == Standing(Limits(1_000, 2_000), used=1_000, remaining=1_000)
    # Nothing of its own: the defaults; an empty window counts nothing.
    assert standing(DEFAULT_LIMITS, None, None, Window(), T0) == Standing(
        DEFAULT_LIMITS, 0, DEFAULT_DAILY
    )
    # A day later both buckets have left the window.
    assert standing(Limits(1_000, 5_000), None, None, window, T0 + DAY + BUCKET_SECONDS).used == 0
    # Over a limit lowered below what was taken: nothing remains, never less.
    assert standing(Limits(1_000, 5_000), None, 500, window, T0).remaining == 0
