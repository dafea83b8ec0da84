"""The classic design, for comparison: one PostgreSQL transaction per operation, applied by bench threads.

Each transaction claims one prefilled pending operation (FOR NO KEY UPDATE SKIP LOCKED), locks
its two accounts in id order, applies it with the domain's rule (domain.apply.apply_operation),
and writes its balances, entries and final status: the "one request = one SELECT FOR UPDATE
transaction" design, on the same schema, data, rules and store functions as the batched workers
(worker/store/ledger.py: claim_pending, lock_accounts, write_outcomes), without their partition
lock and batches.

The workers must keep their hands off these operations: beat's sweeper rings any partition whose
operations wait longer than LEDGERQ_SWEEP_AGE, and a worker would then apply them in batches.
So the baseline pauses the workers: it holds every partition's advisory lock (the lock an applier
takes for each batch) for as long as it runs, and a worker that is rung waits on that lock. Any
operation a worker still got (a batch already running when the baseline started) is skipped by the
claim and counted as `taken_by_workers`, outside the baseline's rate.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from uuid import UUID

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from domain.apply import Applied, apply_operation
from domain.model import AccountKind
from worker.store.db import is_retryable
from worker.store.ledger import (
    claim_pending,
    ensure_system_accounts,
    load_refs,
    lock_accounts,
    world_account_id,
    write_outcomes,
)

ATTEMPTS = 8


@dataclass
class Progress:
    """Counters the threads bump and the display reads (a torn read only delays a number)."""

    applied: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    taken_by_workers: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def done(self) -> int:
        return self.applied + sum(self.failed.values()) + self.taken_by_workers


def apply_one(conn: Connection, operation_id: UUID) -> str:
    """One operation in the caller's transaction: 'succeeded', a failure code, or 'taken'."""
    claimed = claim_pending(conn, operation_id)
    if claimed is None:
        return "taken"  # a worker holds it or already applied it
    partition, pending = claimed
    op = pending.operation
    world = {op.currency: world_account_id(op.currency, partition)}
    balances = lock_accounts(conn, {op.account_id, op.to_account_id or world[op.currency]})
    # A capture's hold (its partition is its account's; the row is locked above, with it).
    refs = load_refs(conn, [op])
    outcome, changed = apply_operation(op, balances, world, refs=refs)
    write_outcomes(conn, [pending], [outcome], changed)
    return "succeeded" if isinstance(outcome, Applied) else outcome.code


def _apply_with_retry(engine: Engine, operation_id: UUID, progress: Progress) -> str:
    for attempt in range(1, ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return apply_one(conn, operation_id)
        except DBAPIError as exc:
            if not is_retryable(exc) or attempt == ATTEMPTS:
                raise
            with progress.lock:
                progress.retries += 1
            time.sleep(min(0.2, 0.002 * 2**attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def _thread(engine: Engine, ids: Sequence[UUID], progress: Progress) -> None:
    for operation_id in ids:
        result = _apply_with_retry(engine, operation_id, progress)
        with progress.lock:
            if result == "succeeded":
                progress.applied += 1
            elif result == "taken":
                progress.taken_by_workers += 1
            else:
                progress.failed[result] += 1


def prepare_world(engine: Engine, partitions: Sequence[int], currency: str) -> None:
    """Create the world shards up front, as the workers would on first use, outside the timing."""
    with engine.begin() as conn:
        for partition in partitions:
            ensure_system_accounts(conn, AccountKind.WORLD, [currency], shard=partition)


def lanes(
    ids: Sequence[UUID], threads: int, keys: Sequence[UUID] | None = None
) -> list[list[UUID]]:
    """Each thread's operations, in order: thread k takes ids k, k+threads, ...; with `keys` (an
    account per operation), every operation of one account goes to the same thread, in order, so
    a capture never runs before its hold."""
    if keys is None:
        return [list(ids[k::threads]) for k in range(threads)]
    lanes: list[list[UUID]] = [[] for _ in range(threads)]
    for operation_id, key in zip(ids, keys, strict=True):
        lanes[key.int % threads].append(operation_id)
    return lanes


def run_baseline(
    engine: Engine,
    ids: Sequence[UUID],
    threads: int,
    progress: Progress,
    keys: Sequence[UUID] | None = None,
) -> float:
    """Apply the operations with `threads` threads (split by `lanes`); seconds taken.

    The engine's pool must hold `threads` connections.
    """
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="baseline") as pool:
        futures = [
            pool.submit(_thread, engine, lane, progress) for lane in lanes(ids, threads, keys)
        ]
        for future in futures:
            future.result()
    return time.perf_counter() - started
