"""Ledger verification after a run: terminal states, conservation, balances = entries, floors,
held = open holds, holds settled, reversed amounts, applied once. A failed check names a few
offending ids."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import Connection, Engine

from worker.store import bench as store
from worker.store.bench import Offenders, Scope


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class Verification:
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def as_dict(self) -> dict[str, object]:
        return {"passed": self.passed, "checks": [asdict(c) for c in self.checks]}


def check_terminal(conn: Connection, scope: Scope, expected: int | None) -> Check:
    counts = store.status_counts(conn, scope)
    total = sum(counts.values())
    pending = counts.get("pending", 0)
    detail = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())) or "no operations"
    passed = pending == 0
    if expected is not None and total < expected:
        # Accepted by the API (or prefilled) but not found: an acceptance that was not durable.
        passed = False
        detail += f"; {expected:,} were accepted but only {total:,} are stored"
    elif expected is not None and total > expected:
        # Requests that timed out on the client can still have been stored; not a fault.
        detail += f" ({total - expected:,} more than the client saw accepted)"
    return Check("every operation terminal", passed, detail)


def check_conservation(conn: Connection) -> Check:
    rows = store.balance_sums(conn)
    off = [(currency, total) for currency, total, _ in rows if total != 0]
    detail = "; ".join(
        f"{currency}: sum of {count:,} balances = {total}" for currency, total, count in rows
    )
    return Check("per currency, balances sum to 0", not off, detail or "no accounts")


def _detail(found: Offenders, what: str, total: int | None = None) -> str:
    """The count ("0 of 10,001 accounts differ") and the first offending ids, if any."""
    of = f" of {total:,}" if total is not None else ""
    detail = f"{found.count:,}{of} {what}"
    if found.sample:
        more = ", ..." if found.count > len(found.sample) else ""
        detail += f", e.g. {', '.join(found.sample)}{more}"
    return detail


def _check(name: str, found: Offenders, what: str, total: int | None = None) -> Check:
    return Check(name, found.count == 0, _detail(found, what, total))


def check_balances_match_entries(conn: Connection) -> Check:
    return _check(
        "every balance = sum of its entries",
        store.balances_off_entries(conn),
        "accounts differ",
        store.account_count(conn),
    )


def check_floors(conn: Connection) -> Check:
    return _check(
        "no customer account below its floor",
        store.below_floor(conn),
        "below (balance - held < -overdraft_limit)",
    )


def check_held(conn: Connection) -> Check:
    return _check(
        "every account's held = its open holds' total",
        store.held_off_open_holds(conn),
        "accounts differ",
    )


def check_holds_applied(conn: Connection) -> Check:
    return _check(
        "every hold is a succeeded hold operation",
        store.holds_without_applied_hold(conn),
        "holds without one",
    )


def check_holds_settled(conn: Connection) -> Check:
    return _check(
        "holds: captured + released = amount when closed (by one capture or void), 0 when open",
        store.holds_settled_wrongly(conn),
        "holds differ",
    )


def check_reversed_amounts(conn: Connection) -> Check:
    return _check(
        "reversed_amount <= amount and = its succeeded reversals' total",
        store.reversed_amounts_off(conn),
        "operations differ",
    )


def check_applied_once(conn: Connection, scope: Scope) -> Check:
    return _check(
        "succeeded = exactly 2 entries summing to 0 (holds, voids, controls: none), others none",
        store.applied_other_than_once(conn, scope),
        "operations differ",
    )


def verify(engine: Engine, scope: Scope, expected: int | None = None) -> Verification:
    """Run every check in one REPEATABLE READ snapshot, so they all see the same ledger.

    `scope` limits the applied-once check to the run's operations; conservation, balances, floors,
    holds and reversed amounts are checked over the whole database (money moves through shared
    world accounts, and a hold or reversal may refer to an operation of another run).
    """
    with store.snapshot(engine) as conn:
        return Verification(
            [
                check_terminal(conn, scope, expected),
                check_conservation(conn),
                check_balances_match_entries(conn),
                check_floors(conn),
                check_held(conn),
                check_holds_applied(conn),
                check_holds_settled(conn),
                check_reversed_amounts(conn),
                check_applied_once(conn, scope),
            ]
        )
