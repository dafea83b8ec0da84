"""Ledger verification after a run: terminal states, conservation, balances = entries, floors, applied once."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from bench.db import Scope
from worker.store.tables import accounts, operations


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


def _statuses(conn: Connection, scope: Scope) -> dict[str, int]:
    rows = conn.execute(
        sa.select(operations.c.status, sa.func.count())
        .where(*scope.where())
        .group_by(operations.c.status)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def check_terminal(conn: Connection, scope: Scope, expected: int | None) -> Check:
    counts = _statuses(conn, scope)
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
    rows = conn.execute(
        sa.select(accounts.c.currency, sa.func.sum(accounts.c.balance), sa.func.count())
        .group_by(accounts.c.currency)
        .order_by(accounts.c.currency)
    ).all()
    off = [(r[0], int(r[1])) for r in rows if int(r[1]) != 0]
    detail = "; ".join(f"{r[0]}: sum of {int(r[2]):,} balances = {int(r[1])}" for r in rows)
    return Check("per currency, balances sum to 0", not off, detail or "no accounts")


_MISMATCHED = sa.text(
    """
    SELECT count(*) FROM accounts a
    LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) e
        ON e.account_id = a.id
    WHERE a.balance <> COALESCE(e.total, 0)
    """
)


def check_balances_match_entries(conn: Connection) -> Check:
    accounts_total = int(
        conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one()
    )
    mismatched = int(conn.execute(_MISMATCHED).scalar_one())
    return Check(
        "every balance = sum of its entries",
        mismatched == 0,
        f"{mismatched:,} of {accounts_total:,} accounts differ",
    )


def check_floors(conn: Connection) -> Check:
    below = int(
        conn.execute(
            sa.select(sa.func.count())
            .select_from(accounts)
            .where(
                accounts.c.kind.in_(["checking", "savings"]),
                accounts.c.balance < -accounts.c.overdraft_limit,
            )
        ).scalar_one()
    )
    return Check("no customer account below its floor", below == 0, f"{below:,} below")


_APPLIED_OTHER_THAN_ONCE = """
    SELECT count(*) FROM (
        SELECT o.id FROM operations o LEFT JOIN entries e ON e.operation_id = o.id
        WHERE {where}
        GROUP BY o.id, o.status
        HAVING (o.status = 'succeeded' AND (count(e.id) <> 2 OR COALESCE(sum(e.amount), 0) <> 0))
            OR (o.status <> 'succeeded' AND count(e.id) <> 0)
    ) AS bad
"""


def check_applied_once(conn: Connection, scope: Scope) -> Check:
    clauses = ["o.seq > :after_seq"]
    params: dict[str, object] = {"after_seq": scope.after_seq}
    if scope.principal_id is not None:
        clauses.append("o.principal_id = :principal_id")
        params["principal_id"] = scope.principal_id
    query = sa.text(_APPLIED_OTHER_THAN_ONCE.format(where=" AND ".join(clauses)))
    bad = int(conn.execute(query, params).scalar_one())
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
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            return Verification(
                [
                    check_terminal(conn, scope, expected),
                    check_conservation(conn),
                    check_balances_match_entries(conn),
                    check_floors(conn),
                    check_applied_once(conn, scope),
                ]
            )
