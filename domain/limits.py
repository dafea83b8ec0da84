"""Deposit limits: how much money a principal may bring into the ledger, per operation and per day.

A deposit is the one operation that creates money in the ledger (the world account pays it), so
deposits are limited twice: each deposit's amount (`per_operation`) and the sum of a subject's
deposits over any rolling 24 hours (`daily`). The subjects are the user who submits and, when a
request comes with an API key, that key as well; every limit is in minor units of one currency
and each currency is counted on its own (a user's USD deposits never use up their EUR limit).

A request is judged whole: if its new deposits (every item of a batch) would pass a limit of any
of its subjects, none of them is taken. Pure rules, no I/O: the API keeps each subject's window
(`Window`) in PostgreSQL and runs `judge` over the requests of one group commit.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from uuid import UUID

from domain.errors import InvalidAmount
from domain.money import MAX_MINOR_UNITS, exponent, format_amount

# The rolling day is kept in 15-minute buckets: the current one and the 96 before it, so a deposit
# counts for at least 24 hours (and less than 24 h 15 min) after it was taken.
BUCKET_SECONDS = 900
WINDOW_BUCKETS = 24 * 3600 // BUCKET_SECONDS + 1

# Defaults keep what one operation accepted before limits existed: every amount (MAX_MINOR_UNITS,
# 10,000,000,000,000.00 USD) and ten such amounts a day.
DEFAULT_PER_OPERATION = MAX_MINOR_UNITS
DEFAULT_DAILY = 10 * MAX_MINOR_UNITS
# The largest limit anyone may set: a window's sum always fits a BIGINT with room to spare.
MAX_LIMIT = 10**18

USER = "user"
API_KEY = "api_key"
SUBJECT_KINDS = (USER, API_KEY)

PER_OPERATION = "per_operation"
DAILY = "daily"


@dataclass(frozen=True, slots=True)
class Limits:
    """A subject's limits in one currency, in minor units."""

    per_operation: int
    daily: int

    def __post_init__(self) -> None:
        for name, value in ((PER_OPERATION, self.per_operation), (DAILY, self.daily)):
            if not 1 <= value <= MAX_LIMIT:
                raise ValueError(f"{name} must be between 1 and {MAX_LIMIT}, got {value}")

    def overridden(self, per_operation: int | None, daily: int | None) -> Limits:
        """These limits with a subject's own values where it has them (None: keep the default)."""
        if per_operation is None and daily is None:
            return self
        return Limits(
            self.per_operation if per_operation is None else per_operation,
            self.daily if daily is None else daily,
        )


DEFAULT_LIMITS = Limits(DEFAULT_PER_OPERATION, DEFAULT_DAILY)


@dataclass(frozen=True, slots=True)
class Subject:
    """Whose limits a deposit counts against: a user, or an API key (ids never collide)."""

    kind: str
    id: UUID

    def __post_init__(self) -> None:
        if self.kind not in SUBJECT_KINDS:
            raise ValueError(f"subject kind must be one of {SUBJECT_KINDS}, got {self.kind!r}")

    def __hash__(self) -> int:
        # UUID hashes in Python code; its integer hashes in C (subjects key every lookup).
        return hash(self.id.int)


Key = tuple[Subject, str]  # (subject, currency)


def parse_limit(value: Decimal, currency: str, field: str) -> int:
    """A limit given as a decimal amount of `currency` ("1000.00"), in minor units: exact, above
    zero, at most MAX_LIMIT minor units. Raises InvalidAmount (with `field`) or UnknownCurrency."""
    exp = exponent(currency)
    if not isinstance(value, Decimal) or not value.is_finite() or value <= 0:
        raise InvalidAmount(f"{field} must be a decimal amount greater than zero", field)
    _, digits, value_exp = value.as_tuple()
    assert isinstance(value_exp, int)  # finite
    if -value_exp > exp:
        raise InvalidAmount(
            f"{field} has more decimal places than {currency} allows ({exp})", field
        )
    # Bounded before it is expanded: no huge exponent becomes a huge integer.
    if value.adjusted() + exp > len(str(MAX_LIMIT)):
        raise _limit_too_large(currency, field)
    minor: int = int("".join(map(str, digits))) * 10 ** (value_exp + exp)
    if minor > MAX_LIMIT:
        raise _limit_too_large(currency, field)
    return minor


def _limit_too_large(currency: str, field: str) -> InvalidAmount:
    return InvalidAmount(
        f"{field} must be at most {format_amount(MAX_LIMIT, currency)} {currency}", field
    )


def bucket_of(seconds: float) -> int:
    """The bucket a moment (seconds since the epoch) falls in."""
    return math.floor(seconds / BUCKET_SECONDS)


@dataclass(frozen=True, slots=True)
class Window:
    """A subject's deposits in one currency over the rolling day: sums per bucket, oldest first,
    the last one being bucket `head`. Buckets that left the window are dropped when it rolls."""

    head: int = 0
    sums: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.sums) > WINDOW_BUCKETS or (self.sums and min(self.sums) < 0):
            raise ValueError(f"a window holds at most {WINDOW_BUCKETS} sums, none negative")

    def _by_bucket(self) -> dict[int, int]:
        first = self.head - len(self.sums) + 1
        return {first + i: amount for i, amount in enumerate(self.sums) if amount}

    def rolled(self, bucket: int) -> Window:
        """The window as seen from `bucket`. A bucket before `head` (a clock behind the one that
        wrote last) counts as `head`: a window never rolls back, so nothing leaves it early."""
        if bucket <= self.head:
            return self
        now = bucket
        oldest = now - WINDOW_BUCKETS + 1
        kept = {b: amount for b, amount in self._by_bucket().items() if b >= oldest}
        if not kept:
            return Window(now, ())
        first = min(kept)
        return Window(now, tuple(kept.get(b, 0) for b in range(first, now + 1)))

    def total(self) -> int:
        return sum(self.sums)

    def plus(self, bucket: int, amount: int) -> Window:
        """This window with `amount` taken in `bucket` (or in `head`, if that is later)."""
        rolled = self.rolled(bucket)
        sums = rolled.sums or (0,)
        return Window(rolled.head, (*sums[:-1], sums[-1] + amount))

    def seconds_until(self, now: float, room: int) -> int:
        """Seconds from `now` until at most `room` is left counted, as old buckets leave the window
        (a bucket leaves when the window's oldest bucket moves past it)."""
        total = self.total()
        if total <= room:
            return 0
        for b, amount in sorted(self._by_bucket().items()):
            total -= amount
            if total <= room:
                return max(1, math.ceil((b + WINDOW_BUCKETS) * BUCKET_SECONDS - now))
        raise AssertionError("unreachable: every bucket leaves the window in the end")


@dataclass(frozen=True, slots=True)
class Standing:
    """A subject's limits in one currency as they stand at a moment: the limits in effect (its
    own values over the defaults), what its rolling day counts, and what may still come in."""

    limits: Limits
    used: int
    remaining: int


def standing(
    defaults: Limits, per_operation: int | None, daily: int | None, window: Window, now: float
) -> Standing:
    """Where a subject stands at `now` (seconds since the epoch) with its own values (None: the
    default) and its stored window, rolled to `now`."""
    limits = defaults.overridden(per_operation, daily)
    used = window.rolled(bucket_of(now)).total()
    return Standing(limits, used, max(0, limits.daily - used))


@dataclass(frozen=True, slots=True)
class Claim:
    """One request's new deposits, (currency, amount) in request order, counted against each of
    `subjects`. Replays of deposits taken earlier are not part of a claim."""

    subjects: tuple[Subject, ...]
    deposits: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a claim was refused: the first limit it would pass.

    `requested` is the deposit's amount (per_operation) or the claim's total in the currency
    (daily); `remaining` what the subject may still deposit in that currency now (daily) or in
    one deposit (per_operation). `retry_after` is how many seconds until the same claim would fit
    the daily window; None when it never will (it is over a limit on its own).
    """

    limit: str
    subject: Subject
    currency: str
    limit_amount: int
    requested: int
    remaining: int
    retry_after: int | None


def judge(
    claims: Sequence[Claim],
    windows: Mapping[Key, Window],
    limits: Mapping[Key, Limits],
    now: float,
) -> tuple[list[Refusal | None], dict[Key, Window]]:
    """Judge claims in order, each seeing the deposits of the claims taken before it.

    `windows` holds each (subject, currency)'s window as stored (missing: nothing deposited yet),
    `limits` each one's effective limits (a KeyError names a pair the caller did not provide).
    Returns a verdict per claim (None: taken) and the windows that changed, rolled to `now`.
    """
    bucket = bucket_of(now)
    changed: dict[Key, Window] = {}
    verdicts: list[Refusal | None] = []
    for claim in claims:
        if not claim.deposits:
            verdicts.append(None)
            continue
        # Per currency: the claim's total and its largest deposit (the one a per-operation limit
        # would refuse first).
        totals: dict[str, int] = {}
        largest: dict[str, int] = {}
        for currency, amount in claim.deposits:
            if amount <= 0:
                raise ValueError(f"a deposit's amount must be > 0, got {amount}")
            totals[currency] = totals.get(currency, 0) + amount
            largest[currency] = max(largest.get(currency, 0), amount)
        # Each (subject, currency) looked up once per claim.
        seen: list[tuple[Key, Limits, Window]] = []
        for currency in totals:
            for subject in claim.subjects:
                key = (subject, currency)
                window = changed.get(key)
                if window is None:
                    window = windows.get(key, _EMPTY).rolled(bucket)
                seen.append((key, limits[key], window))
        refusal = _check(seen, totals, largest, now)
        verdicts.append(refusal)
        if refusal is None:
            for key, _, window in seen:
                changed[key] = window.plus(bucket, totals[key[1]])
    return verdicts, changed


_EMPTY = Window()


def _check(
    seen: Sequence[tuple[Key, Limits, Window]],
    totals: Mapping[str, int],
    largest: Mapping[str, int],
    now: float,
) -> Refusal | None:
    # Per operation first, for every subject: a deposit over it can never be taken.
    for (subject, currency), limits, _ in seen:
        amount = largest[currency]
        if amount > limits.per_operation:
            limit = limits.per_operation
            return Refusal(PER_OPERATION, subject, currency, limit, amount, limit, None)
    for (subject, currency), limits, window in seen:
        total, daily = totals[currency], limits.daily
        used = window.total()
        if used + total <= daily:
            continue
        remaining = max(0, daily - used)
        retry = None if total > daily else window.seconds_until(now, daily - total)
        return Refusal(DAILY, subject, currency, daily, total, remaining, retry)
    return None
