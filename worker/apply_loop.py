"""The partition apply loop: pending operations of one partition, in seq order, a batch per transaction."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

import structlog
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from domain.apply import NO_HOLDINGS, WORLD_TYPES, Applied, apply_batch
from domain.model import INVESTMENT_TYPES, AccountKind
from worker.store.db import is_retryable
from worker.store.ledger import (
    any_pending,
    ensure_system_accounts,
    load_holdings,
    load_refs,
    lock_accounts,
    lock_pending_batch,
    write_outcomes,
)

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Completion:
    """What the API and subscribers learn when an operation reaches a terminal state."""

    id: str
    status: str
    error_code: str | None
    account_id: str
    to_account_id: str | None
    type: str

    def as_dict(self) -> dict[str, str | None]:
        return {
            "id": self.id,
            "status": self.status,
            "error_code": self.error_code,
            "account_id": self.account_id,
            "to_account_id": self.to_account_id,
            "type": self.type,
        }


@dataclass(frozen=True)
class DrainResult:
    completed: int
    batches: int
    more_pending: bool


MIN_BATCH = 16


def next_batch_limit(limit: int, applied: int, ceiling: int) -> int:
    """Adaptive batch size: double while batches come back full (a backlog), halve when they don't.

    Small batches commit sooner, so a quiet partition answers fast; a backlog ramps to the
    ceiling within a few batches, where set-based statements amortise each transaction.
    """
    floor = min(MIN_BATCH, ceiling)
    if applied >= limit:
        return min(ceiling, limit * 2)
    return max(floor, min(ceiling, limit // 2))


# World shards this process has seen committed; skips one INSERT per batch on the hot path.
_known_world: set[UUID] = set()


def apply_next_batch(conn: Connection, partition: int, batch_size: int) -> list[Completion]:
    """One transaction: lock the partition, apply up to batch_size pending operations, commit."""
    with conn.begin():
        batch, webhooks = lock_pending_batch(conn, partition, batch_size)
        if not batch:
            return []
        ops = [p.operation for p in batch]
        world = ensure_system_accounts(
            conn,
            AccountKind.WORLD,
            (op.currency for op in ops if op.type in WORLD_TYPES),
            shard=partition,
            known=_known_world,
        )
        investments = [op for op in ops if op.type in INVESTMENT_TYPES]
        custody = ensure_system_accounts(
            conn,
            AccountKind.CUSTODY,
            (op.currency for op in investments),
            shard=partition,
            known=_known_world,
        )
        touched: set[UUID] = set(world.values()) | set(custody.values())
        for op in ops:
            touched.add(op.account_id)
            if op.to_account_id is not None:
                touched.add(op.to_account_id)
        balances = lock_accounts(conn, touched)
        if any(w not in balances for w in (*world.values(), *custody.values())):
            # The cache outlived its database (dropped and recreated): create the shards again.
            _known_world.difference_update((*world.values(), *custody.values()))
            ensure_system_accounts(conn, AccountKind.WORLD, world, shard=partition)
            ensure_system_accounts(conn, AccountKind.CUSTODY, custody, shard=partition)
            balances = lock_accounts(conn, touched)
        holdings = load_holdings(conn, investments, custody) if investments else NO_HOLDINGS
        refs = load_refs(conn, ops)
        outcomes, changed = apply_batch(ops, balances, world, holdings, refs)
        write_outcomes(conn, batch, outcomes, changed, events=webhooks)
    _known_world.update((*world.values(), *custody.values()))
    return [
        Completion(
            id=str(op.id),
            status="succeeded" if isinstance(outcome, Applied) else "failed",
            error_code=None if isinstance(outcome, Applied) else outcome.code,
            account_id=str(op.account_id),
            to_account_id=str(op.to_account_id) if op.to_account_id else None,
            type=op.type.value,
        )
        for op, outcome in zip(ops, outcomes, strict=True)
    ]


def apply_with_retry(
    conn: Connection, partition: int, batch_size: int, attempts: int = 8
) -> list[Completion]:
    """Deadlocks and serialization failures roll back everything; try the batch again."""
    for attempt in range(1, attempts + 1):
        try:
            return apply_next_batch(conn, partition, batch_size)
        except DBAPIError as exc:
            if not is_retryable(exc) or attempt == attempts:
                raise
            delay = min(0.5, 0.005 * 2**attempt) * (0.5 + random.random())
            log.warning("apply_retry", partition=partition, attempt=attempt, delay=round(delay, 4))
            time.sleep(delay)
    raise AssertionError("unreachable")


def drain_partition(
    engine: Engine,
    partition: int,
    batch_size: int,
    publish: Callable[[list[Completion]], None],
    time_budget: float = 1.0,
    release: Callable[[], None] | None = None,
    reclaim: Callable[[], None] | None = None,
) -> DrainResult:
    """Apply batches (adaptive size up to batch_size) until nothing is pending or the budget is spent.

    The budget keeps one busy partition from starving the others a worker owns; the caller
    rings the bell again when more is pending. `release` clears the partition's doorbell when a
    look finds nothing (then the loop looks once more); `reclaim` sets it again if that look
    found work. Holding the bell while busy is what keeps a loaded partition at one message.
    """
    deadline = time.monotonic() + time_budget
    completed = batches = 0
    limit = min(MIN_BATCH, batch_size)
    # One connection for the whole drain: a checkout per batch cost more than the batch's SQL.
    with engine.connect() as conn:
        while True:
            asked = limit
            done = apply_with_retry(conn, partition, limit)
            if done:
                completed += len(done)
                batches += 1
                publish(done)
                limit = next_batch_limit(limit, len(done), batch_size)
                if time.monotonic() >= deadline:
                    return DrainResult(completed, batches, more_pending=True)
                if len(done) >= asked:
                    continue  # a full batch: there is probably more
            # The partition looks drained. Looks are single autocommit SELECTs (one round trip,
            # where a transaction costs three).
            if any_pending(conn, partition):
                continue
            if release is None:
                return DrainResult(completed, batches, more_pending=False)
            # Clear the doorbell only now, then look once more: an operation committed before the
            # clear is seen by this look; one committed after it finds no bell and rings anew.
            release()
            if not any_pending(conn, partition):
                return DrainResult(completed, batches, more_pending=False)
            if reclaim is not None:
                reclaim()
