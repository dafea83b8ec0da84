"""The classic design, for comparison: one PostgreSQL transaction per operation, applied by bench threads.

Each transaction claims one prefilled pending operation (FOR NO KEY UPDATE SKIP LOCKED), locks
its two accounts in id order, applies it with domain.apply.apply_operation, updates each balance,
inserts the entries, and marks the operation final: the "one request = one SELECT FOR UPDATE
transaction" design, on the same schema, data and rules as the batched workers.

The workers must keep their hands off these operations: beat's sweeper rings any partition whose
operations wait longer than LEDGERQ_SWEEP_AGE, and a worker would then apply them in batches.
So the baseline pauses the workers: it holds every partition's advisory lock (the lock an applier
takes for each batch) for as long as it runs, and a worker that is rung waits on that lock. Any
operation a worker still got (a batch already running when the baseline started) is skipped by the
claim and counted as `taken_by_workers`, outside the baseline's rate.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from domain.apply import Applied, apply_operation
from domain.model import Account, AccountKind, Operation, OperationType
from worker.store.db import is_retryable
from worker.store.ledger import ADVISORY_NAMESPACE, ensure_system_accounts, world_account_id

ATTEMPTS = 8

_CLAIM = sa.text(
    """
    SELECT id, type, account_id, to_account_id, amount, currency, partition, category, status
    FROM operations WHERE id = :id
    FOR NO KEY UPDATE SKIP LOCKED
    """
)
# FOR NO KEY UPDATE is FOR UPDATE minus the key lock: API inserts referencing these accounts
# (foreign keys take KEY SHARE) do not wait on it, exactly as in the workers.
_LOCK_ACCOUNTS = sa.text(
    """
    SELECT id, kind, currency, balance, overdraft_limit FROM accounts
    WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE
    """
)
_SET_BALANCE = sa.text(
    "UPDATE accounts SET balance = :balance, updated_at = clock_timestamp() WHERE id = :id"
)
_INSERT_ENTRY = sa.text(
    """
    INSERT INTO entries (account_id, operation_id, amount, balance_after, currency, category, created_at)
    VALUES (:account_id, :operation_id, :amount, :balance_after, :currency, :category, clock_timestamp())
    """
)
_FINISH = sa.text(
    """
    UPDATE operations SET status = :status, error_code = :code, error_message = :message,
        applied_at = clock_timestamp(), updated_at = clock_timestamp()
    WHERE id = :id
    """
)


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
    # By primary key alone (a status condition let the planner walk the pending index).
    row = conn.execute(_CLAIM, {"id": operation_id}).one_or_none()
    if row is None or row.status != "pending":
        return "taken"  # a worker holds it or already applied it
    op = Operation(
        id=row.id,
        type=OperationType(row.type),
        account_id=row.account_id,
        amount=row.amount,
        currency=row.currency,
        to_account_id=row.to_account_id,
    )
    world = {op.currency: world_account_id(op.currency, row.partition)}
    ids = sorted({op.account_id, op.to_account_id or world[op.currency]})
    balances = {
        r.id: Account(r.id, AccountKind(r.kind), r.currency, r.balance, r.overdraft_limit)
        for r in conn.execute(_LOCK_ACCOUNTS, {"ids": ids})
    }
    outcome, changed = apply_operation(op, balances, world)
    if isinstance(outcome, Applied):
        for account_id in sorted(changed):
            conn.execute(_SET_BALANCE, {"id": account_id, "balance": changed[account_id].balance})
        for posting in outcome.postings:
            conn.execute(
                _INSERT_ENTRY,
                {
                    "account_id": posting.account_id,
                    "operation_id": op.id,
                    "amount": posting.amount,
                    "balance_after": posting.balance_after,
                    "currency": op.currency,
                    "category": row.category,
                },
            )
        conn.execute(_FINISH, {"id": op.id, "status": "succeeded", "code": None, "message": None})
        return "succeeded"
    conn.execute(
        _FINISH, {"id": op.id, "status": "failed", "code": outcome.code, "message": outcome.message}
    )
    return outcome.code


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


@contextlib.contextmanager
def workers_paused(engine: Engine, partitions: Iterable[int]) -> Iterator[None]:
    """Hold every partition's advisory lock on one session: appliers (which take the same lock per
    transaction) wait until the block ends. Waits for batches already running to commit first."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for partition in sorted(partitions):
            conn.execute(sa.select(sa.func.pg_advisory_lock(ADVISORY_NAMESPACE, partition)))
        try:
            yield
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock_all()))


def run_baseline(engine: Engine, ids: Sequence[UUID], threads: int, progress: Progress) -> float:
    """Apply the operations with `threads` threads (thread k takes ids k, k+threads, ...); seconds taken.

    The engine's pool must hold `threads` connections.
    """
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="baseline") as pool:
        futures = [pool.submit(_thread, engine, ids[k::threads], progress) for k in range(threads)]
        for future in futures:
            future.result()
    return time.perf_counter() - started
