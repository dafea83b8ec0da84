"""Celery tasks: the drain doorbell of a partition and the sweeper."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from celery import signals
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from worker import metrics
from worker.apply_loop import Completion, drain_partition
from worker.celery_app import app
from worker.doorbell import clear_bell, hold_bell
from worker.events import publish_completions
from worker.routing import DRAIN_TASK, SWEEP_TASK
from worker.settings import Settings, get_settings
from worker.store.db import make_engine, read_budget
from worker.store.holds import submit_expiry_voids
from worker.store.pools import log_budget, worker_pool
from worker.store.queue import stale_partitions
from worker.store.webhooks import prune_deliveries

log = structlog.get_logger(__name__)


# How the worker's connections appear in pg_stat_activity.
APPLICATION_NAME = "ledgerq-worker"


@dataclass(frozen=True)
class Resources:
    engine: Engine
    redis: redis.Redis


@functools.cache
def resources() -> Resources:
    """Per process, created on first use: pool children must not share their parent's sockets.
    The engine holds at most worker_pool(LEDGERQ_DB_POOL_SIZE) connections (no overflow)."""
    settings = get_settings()
    return Resources(
        engine=make_engine(
            settings.database_url,
            pool_size=worker_pool(settings.db_pool_size),
            max_overflow=0,
            pre_ping=False,
            application_name=APPLICATION_NAME,
        ),
        redis=redis.Redis.from_url(settings.redis_url),
    )


def best_effort(what: str, action: Callable[[], Any], partition: int) -> bool:
    """Run a Redis (or broker) step the ledger does not depend on; a failure is logged, never
    raised: after a commit, raising would fail a drain whose work is done (and its message would
    be retried for nothing), and the sweeper rings whatever a lost bell leaves pending."""
    try:
        action()
    except (redis.RedisError, BrokerError, OSError) as exc:
        log.warning("drain_step_failed", step=what, partition=partition, error=str(exc))
        return False
    return True


def report_batch(res: Resources, partition: int, done: Sequence[Completion]) -> None:
    """After a batch committed: wake its waiters first, then count it and log it. Redis failing
    here costs followers their event (they find the final state in PostgreSQL, api/waiters.py)
    and the admin view a count, never the drain."""
    best_effort("publish", lambda: publish_completions(res.redis, done), partition)
    metrics.record_batch(done, time.time())
    best_effort("count", lambda: metrics.count_recent(res.redis, partition, done), partition)
    failed = 0
    for c in done:
        if c.status != "succeeded":
            failed += 1
            log.info("operation_failed", operation_id=c.id, type=c.type, error_code=c.error_code)
    log.info(
        "batch_applied",
        size=len(done),
        succeeded=len(done) - failed,
        failed=failed,
        operation_ids=[c.id for c in done],
    )


def ring(partition: int) -> None:
    """Queue a drain message for the partition (the router sends it to the partition's queue)."""
    app.send_task(DRAIN_TASK, args=[partition])


def ring_many(partitions: Sequence[int]) -> None:
    """Queue a drain message for each partition, over one broker connection."""
    with app.producer_or_acquire() as producer:
        for partition in partitions:
            app.send_task(DRAIN_TASK, args=[partition], producer=producer)


@app.task(
    name=DRAIN_TASK,
    autoretry_for=(OperationalError,),
    retry_backoff=True,
    retry_backoff_max=30,
    max_retries=None,
    acks_late=True,
)
def drain(partition: int) -> int:
    """Apply everything pending in the partition. Duplicates and redeliveries find nothing to do."""
    with structlog.contextvars.bound_contextvars(partition=partition):
        return _drain(partition)


def _drain(partition: int) -> int:
    """Redis steps (the bell, the events, the counts) are best effort: with Redis down the drain
    still applies what is pending and returns normally. A bell left set (its clear failed) expires
    after BELL_TTL_SECONDS; until then the sweeper rings the partition for what arrives."""
    res = resources()
    settings = get_settings()

    # The bell stays set while this drain finds work, so submits meanwhile send no message;
    # drain_partition clears it only when the partition looks empty, and then looks once more.
    def release() -> None:
        best_effort("clear_bell", lambda: clear_bell(res.redis, partition), partition)

    def reclaim() -> None:
        best_effort("hold_bell", lambda: hold_bell(res.redis, partition), partition)

    reclaim()
    result = drain_partition(
        res.engine,
        partition,
        settings.batch_size,
        publish=lambda done: report_batch(res, partition, done),
        release=release,
        reclaim=reclaim,
    )
    if result.more_pending:
        # Yield to the other partitions this worker owns; come back through the queue.
        reclaim()
        best_effort("ring", lambda: ring(partition), partition)
    if result.completed:
        log.info(
            "partition_drained",
            completed=result.completed,
            batches=result.batches,
            more_pending=result.more_pending,
        )
    return result.completed


@app.task(name=SWEEP_TASK, acks_late=True)
def sweep() -> list[int]:
    """Submit the voids of expired holds, then ring every partition they went to and every one
    whose pending operations are older than LEDGERQ_SWEEP_AGE; delete finished webhook
    deliveries older than LEDGERQ_WEBHOOK_RETENTION (a batch per run)."""
    settings = get_settings()
    with resources().engine.connect() as conn:
        expiring = submit_expiry_voids(conn, settings.partitions)
        partitions = sorted(set(stale_partitions(conn, settings.sweep_age)) | set(expiring))
    if settings.webhook_retention:
        with resources().engine.begin() as conn:
            pruned = prune_deliveries(conn, settings.webhook_retention)
        if pruned:
            log.info("webhook_deliveries_pruned", count=pruned)
    for partition in partitions:
        ring(partition)
    if expiring:
        log.info("holds_expiring", partitions=expiring)
    if partitions:
        log.info("sweeper_rang", partitions=partitions)
    return partitions


# ----------------------------------------------------------------- the connection budget at start


def worker_processes(pool: Any) -> int:
    """Processes of this worker that hold database connections: the prefork pool's children
    (one task each at a time); solo and thread pools run tasks in the main process."""
    if pool is not None and "prefork" in type(pool).__module__:
        return int(getattr(pool, "num_processes", 1) or 1)
    return 1


def check_connection_budget(settings: Settings, processes: int) -> str | None:
    """Warn (log) when this worker's processes, at worker_pool(LEDGERQ_DB_POOL_SIZE) connections
    each, and the connections other clients hold now exceed the server's max_connections; the
    warning, or None. Only a warning: refusing to start would not free a slot."""
    needed = processes * worker_pool(settings.db_pool_size)
    engine = make_engine(
        settings.database_url, pool_size=1, max_overflow=0, application_name=APPLICATION_NAME
    )
    try:
        with engine.connect() as conn:
            budget = read_budget(conn, APPLICATION_NAME, needed)
    except Exception as exc:  # a check must not stop the worker: say so and go on
        log.warning("connection_budget_unchecked", error=str(exc).splitlines()[0])
        return None
    finally:
        engine.dispose()
    what = (
        f"this worker's {processes} process(es) x {worker_pool(settings.db_pool_size)} "
        f"(LEDGERQ_DB_POOL_SIZE {settings.db_pool_size})"
    )
    return log_budget(log, budget, what)


@signals.worker_ready.connect
def _check_connection_budget(sender: Any = None, **_: Any) -> None:
    check_connection_budget(get_settings(), worker_processes(getattr(sender, "pool", None)))
