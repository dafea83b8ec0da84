"""The fault matrix: each scenario injects one fault under steady load, then proves exactly-once.

A scenario runs the client for `warmup` seconds, injects its fault, recovers (as a process
supervisor or an operator would: restart what was killed), keeps the load on for `after`
seconds, stops the load (keys in flight are pursued until answered), waits until nothing is
pending, and checks the client's record against the ledger:

- lost: a key the API accepted that has no operation, or an accepted operation not final;
- doubled: an operation with other entries than one application makes, or an account whose
  balance differs from what the client's accepted operations (with their final statuses) add up to;
- refused-but-stored: a key the API refused that has an operation anyway;
- the ledger invariants over the whole database (balances equal entries, money conserved);
- a follower: once all is applied, a submit with `Prefer: wait` must answer its final state
  (a lost completion event must not leave it waiting out its timeout).

What clients saw is every attempt's answer from the fault until the end of the load; recovery
is how long after the fault clients kept seeing failures, and how long until operations were
applied within a second of being accepted again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import psycopg

from tests.faults.client import FaultClient, make_http
from tests.faults.stack import Stack

# An operation applied later than this after it was accepted counts as not yet recovered.
RECOVERED_LATENCY = 1.0


@dataclass
class Outcome:
    scenario: str
    keys: int
    accepted: int
    refused: int
    unanswered: int
    lost: int
    doubled: int
    refused_but_stored: int
    invariants: list[str]
    clients_saw: dict[str, int]
    client_outage_s: float
    apply_recovery_s: float
    # A `Prefer: wait` submit after the fault: the status it answered and how long it took.
    follower: tuple[str, float] = ("", 0.0)
    notes: list[str] = field(default_factory=list)

    @property
    def exactly_once(self) -> bool:
        return (
            self.lost == 0
            and self.doubled == 0
            and self.refused_but_stored == 0
            and self.unanswered == 0
            and not self.invariants
            and self.follower[0] == "succeeded"
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "exactly_once": self.exactly_once}


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    inject: Callable[[Stack], None]
    recover: Callable[[Stack], None]
    # Seconds the fault lasts before recover() (the process or server is down meanwhile).
    down_for: float = 2.0
    # Wait (up to this long) for a client-visible sign of the fault before recovering.
    until: Callable[[FaultClient, float], bool] | None = None
    until_timeout: float = 60.0


def _saw_backpressure(client: FaultClient, since: float) -> bool:
    return any(a.outcome == "503 backlog_full" for a in client.record.attempts if a.at >= since)


SCENARIOS = [
    Scenario(
        "worker_sigkill",
        "a Celery worker SIGKILLed (its pool too), restarted 2 s later",
        lambda s: s.kill_worker(0),
        lambda s: s.start_worker(0),
    ),
    Scenario(
        "redis_sigkill_empty",
        "Redis (broker, bells, leases, events) SIGKILLed, restarted empty 2 s later",
        lambda s: s.kill_redis(),
        lambda s: s.start_redis_empty(),
    ),
    Scenario(
        "postgres_restart",
        "PostgreSQL stopped (fast: sessions cut) and started again 2 s later",
        lambda s: s.stop_postgres(),
        lambda s: s.start_postgres(),
    ),
    Scenario(
        "api_sigkill",
        "the API SIGKILLed mid-request (all its processes), restarted 1 s later",
        lambda s: s.kill_api(),
        lambda s: s.start_api(),
        down_for=1.0,
    ),
    Scenario(
        "workers_stopped_backpressure",
        "every worker stopped until clients get 503 backlog_full, then started again",
        lambda s: s.stop_workers(),
        lambda s: s.start_workers(),
        down_for=0.0,
        until=_saw_backpressure,
    ),
]


def _connect(stack: Stack) -> psycopg.Connection[Any]:
    return psycopg.connect(
        stack.database_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True
    )


def wait_settled(stack: Stack, timeout: float = 180) -> int:
    """Wait until no operation is pending; answer how many still are at the deadline."""
    deadline = time.monotonic() + timeout
    pending = -1
    while time.monotonic() < deadline:
        try:
            with _connect(stack) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM operations WHERE status = 'pending'"
                ).fetchone()
                assert row is not None
                pending = int(row[0])
        except psycopg.OperationalError:
            pending = -1
        if pending == 0:
            return 0
        time.sleep(0.5)
    return pending


def ledger_invariants(conn: psycopg.Connection[Any]) -> list[str]:
    problems = []
    rows = conn.execute(
        """
        SELECT count(*) FROM (
            SELECT a.id FROM accounts a LEFT JOIN entries e ON e.account_id = a.id
            GROUP BY a.id HAVING a.balance <> COALESCE(SUM(e.amount), 0)) m
        """
    ).fetchone()
    if rows and rows[0]:
        problems.append(f"{rows[0]} accounts whose balance differs from their entries")
    unbalanced = conn.execute(
        "SELECT currency, sum(balance) FROM accounts GROUP BY currency HAVING sum(balance) <> 0"
    ).fetchall()
    if unbalanced:
        problems.append(f"money created or destroyed: {unbalanced}")
    return problems


def check(stack: Stack, client: FaultClient, name: str, fault_at: float, end: float) -> Outcome:
    intents = list(client.record.intents.values())
    accepted = [i for i in intents if i.outcome == "accepted"]
    refused = [i for i in intents if i.outcome == "refused"]
    unanswered = [i for i in intents if i.outcome == "unanswered"]
    with _connect(stack) as conn:
        stored = {
            key: (str(op_id), status, n_entries, total)
            for key, op_id, status, n_entries, total in conn.execute(
                """
                SELECT o.idempotency_key, o.id, o.status, count(e.id), COALESCE(sum(e.amount), 0)
                FROM operations o LEFT JOIN entries e ON e.operation_id = o.id
                WHERE o.principal_id = %s
                GROUP BY o.id
                """,
                (UUID(client.user_id),),
            ).fetchall()
        }
        balances = {
            str(account_id): int(balance)
            for account_id, balance in conn.execute(
                "SELECT id, balance FROM accounts WHERE owner_id = %s", (UUID(client.user_id),)
            ).fetchall()
        }
        invariants = ledger_invariants(conn)
        latencies = conn.execute(
            """
            SELECT extract(epoch FROM created_at), extract(epoch FROM applied_at - created_at)
            FROM operations WHERE principal_id = %s AND applied_at IS NOT NULL
                AND created_at >= to_timestamp(%s)
            """,
            (UUID(client.user_id), fault_at - 2),
        ).fetchall()
    lost = doubled = 0
    expected: Counter[str] = Counter()
    for intent in accepted:
        row = stored.get(intent.key)
        if row is None or row[0] != intent.operation_id or row[1] == "pending":
            lost += 1
            continue
        _, status, n_entries, total = row
        if status == "succeeded":
            # A deposit's or transfer's one application: two entries that sum to zero.
            if n_entries != 2 or total != 0:
                doubled += 1
            expected[intent.account_id] += (
                intent.amount_minor if intent.kind == "deposit" else -intent.amount_minor
            )
            if intent.to_account_id is not None:
                expected[intent.to_account_id] += intent.amount_minor
        elif n_entries != 0:
            doubled += 1
    for account_id, balance in balances.items():
        if balance != expected[account_id]:
            doubled += 1
    refused_but_stored = sum(1 for i in refused if i.key in stored)
    fail_times = [a.at for a in client.record.failures_after(fault_at)]
    late = [float(created) + float(lat) for created, lat in latencies if lat > RECOVERED_LATENCY]
    return Outcome(
        scenario=name,
        keys=len(intents),
        accepted=len(accepted),
        refused=len(refused),
        unanswered=len(unanswered),
        lost=lost,
        doubled=doubled,
        refused_but_stored=refused_but_stored,
        invariants=invariants,
        clients_saw=dict(client.record.seen(fault_at, end).most_common()),
        client_outage_s=round(max(fail_times) - fault_at, 1) if fail_times else 0.0,
        apply_recovery_s=round(max(late) - fault_at, 1) if late else 0.0,
    )


async def run_scenario(
    stack: Stack, scenario: Scenario, warmup: float = 3.0, after: float = 8.0
) -> Outcome:
    """One scenario under load on a running stack, with a fresh client (its own user and record)."""
    async with make_http(stack.url) as http:
        client = FaultClient(stack.url)
        await client.setup(http)
        stop = asyncio.Event()
        load = asyncio.create_task(client.run(http, stop, give_up=120))
        await asyncio.sleep(warmup)
        fault_at = time.time()
        await asyncio.to_thread(scenario.inject, stack)
        if scenario.until is not None:
            deadline = time.monotonic() + scenario.until_timeout
            # Polls what the lanes recorded; they signal nothing.
            while not scenario.until(client, fault_at) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)
        await asyncio.sleep(scenario.down_for)
        await asyncio.to_thread(scenario.recover, stack)
        await asyncio.sleep(after)
        end = time.time()
        stop.set()
        await load
        pending = await asyncio.to_thread(wait_settled, stack)
        follower = await client.follow_one(http)
    outcome = check(stack, client, scenario.name, fault_at, end)
    outcome.follower = follower
    if pending:
        outcome.notes.append(f"{pending} operations still pending after the wait")
    if scenario.until is not None and not scenario.until(client, fault_at):
        outcome.notes.append("the fault never became visible to clients")
    return outcome


def table(outcomes: list[Outcome]) -> str:
    """The fault matrix as a Markdown table (docs/reliability.md)."""
    lines = [
        "| scenario | keys | accepted | what clients saw from the fault on | client outage | "
        "applied within 1 s again after | lost | doubled | exactly once | a follower after it |",
        "|---|---:|---:|---|---:|---:|---:|---:|---|---|",
    ]
    for o in outcomes:
        saw = ", ".join(f"{k}: {v:,}" for k, v in o.clients_saw.items())
        lines.append(
            f"| {o.scenario} | {o.keys:,} | {o.accepted:,} | {saw} | {o.client_outage_s} s | "
            f"{o.apply_recovery_s} s | {o.lost} | {o.doubled} | "
            f"{'yes' if o.exactly_once else 'NO'} | {o.follower[0]} in {o.follower[1]} s |"
        )
    return "\n".join(lines)
