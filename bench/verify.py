"""Ledger verification after a run: terminal states, conservation, balances = entries, floors, applied once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from sqlalchemy import Connection, Engine

from worker.store import bench as store
from worker.store.bench import Scope


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


def check_balances_match_entries(conn: Connection) -> Check:
    accounts_total = store.account_count(conn)
    mismatched = store.balances_off_entries(conn)
    return Check(
        "every balance = sum of its entries",
        mismatched == 0,
        f"{mismatched:,} of {accounts_total:,} accounts differ",
    )


def check_floors(conn: Connection) -> Check:
    below = store.below_floor(conn)
    return Check("no customer account below its floor", below == 0, f"{below:,} below")


def check_applied_once(conn: Connection, scope: Scope) -> Check:
    bad = store.applied_other_than_once(conn, scope)
    return Check(
        "succeeded = exactly 2 entries summing to 0, others none",
        bad == 0,
        f"{bad:,} operations differ",
    )


def verify(engine: Engine, scope: Scope, expected: int | None = None) -> Verification:
    """Run every check in one REPEATABLE READ snapshot, so they all see the same ledger.

    `scope` limits the per-operation checks to the run's operations; conservation, balances and
    floors are checked over the whole database (money moves through shared world accounts).
    """
    with store.snapshot(engine) as conn:
        return Verification(
            [
                check_terminal(conn, scope, expected),
                check_conservation(conn),
                check_balances_match_entries(conn),
                check_floors(conn),
                check_applied_once(conn, scope),
            ]
        )
