"""Celery tasks: the drain doorbell of a partition and the sweeper."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import structlog
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from worker import metrics
from worker.apply_loop import Completion, drain_partition
from worker.celery_app import app
from worker.doorbell import clear_bell, hold_bell
from worker.events import publish_completions
from worker.routing import DRAIN_TASK, SWEEP_TASK
from worker.settings import get_settings
from worker.store.db import make_engine
from worker.sweeper import stale_partitions

log = structlog.get_logger(__name__)


# How the worker's connections appear in pg_stat_activity.
APPLICATION_NAME = "ledgerq-worker"


@dataclass(frozen=True)
class Resources:
    engine: Engine
    redis: redis.Redis


@functools.cache
def resources() -> Resources:
    """Per process, created on first use: pool children must not share their parent's sockets."""
    settings = get_settings()
    return Resources(
        engine=make_engine(
            settings.database_url, pool_size=2, pre_ping=False, application_name=APPLICATION_NAME
        ),
        redis=redis.Redis.from_url(settings.redis_url),
    )


def report_batch(res: Resources, partition: int, done: Sequence[Completion]) -> None:
    """After a batch committed: wake its waiters first, then count it and log it."""
    publish_completions(res.redis, done)
    metrics.record_batch(done, time.time())
    metrics.count_recent(res.redis, partition, done)
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
    res = resources()
    settings = get_settings()
    # The bell stays set while this drain finds work, so submits meanwhile send no message;
    # drain_partition clears it only when the partition looks empty, and then looks once more.
    hold_bell(res.redis, partition)
    result = drain_partition(
        res.engine,
        partition,
        settings.batch_size,
        publish=lambda done: report_batch(res, partition, done),
        release=lambda: clear_bell(res.redis, partition),
        reclaim=lambda: hold_bell(res.redis, partition),
    )
    if result.more_pending:
        # Yield to the other partitions this worker owns; come back through the queue.
        hold_bell(res.redis, partition)
        ring(partition)
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
    """Ring every partition whose pending operations are older than LEDGERQ_SWEEP_AGE."""
    settings = get_settings()
    with resources().engine.connect() as conn:
        partitions = stale_partitions(conn, settings.sweep_age)
    for partition in partitions:
        ring(partition)
    if partitions:
        log.info("sweeper_rang", partitions=partitions)
    return partitions
