"""Completion events: published on Redis after the apply transaction commits."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence

import redis
import redis.asyncio
import structlog

from worker.apply_loop import Completion

log = structlog.get_logger(__name__)

# Plain Redis pub/sub channels; the API listens on them through Litestar's ChannelsPlugin.
OPERATIONS_CHANNEL = "operations"
CAPTADO_CHANNEL = "captado"


def channel(name: str, client: redis.Redis | redis.asyncio.Redis) -> str:
    """Pub/sub channels are global to a Redis server, whatever the database number: named after
    the database, deployments (or test runs) sharing one server never hear each other."""
    db = client.connection_pool.connection_kwargs.get("db", 0)
    return f"ledgerq.{db}.{name}"


_INVESTMENT_TYPES = frozenset({"allocation", "redemption"})


def captado_cache_key(year: int, month: int) -> str:
    return f"ledgerq:captado:{year:04d}-{month:02d}"


def months_touched(now: dt.datetime) -> list[tuple[int, int]]:
    """The month an operation applied just now belongs to; near midnight of the 1st, the
    previous one too (applied_at was taken inside the transaction, a moment earlier)."""
    months = {(now.year, now.month)}
    earlier = now - dt.timedelta(minutes=1)
    months.add((earlier.year, earlier.month))
    return sorted(months)


def encode_completions(completions: Sequence[Completion]) -> str:
    return json.dumps([c.as_dict() for c in completions], separators=(",", ":"))


def publish_completions(client: redis.Redis, completions: Sequence[Completion]) -> None:
    """One message per batch. A lost event costs a waiter its wait, never a result: PostgreSQL is the truth."""
    if not completions:
        return
    try:
        client.publish(channel(OPERATIONS_CHANNEL, client), encode_completions(completions))
        if any(c.type in _INVESTMENT_TYPES and c.status == "succeeded" for c in completions):
            invalidate_captado(client, dt.datetime.now(dt.UTC))
    except redis.RedisError as exc:
        log.warning("completion_publish_failed", error=str(exc), count=len(completions))


async def publish_completions_async(
    client: redis.asyncio.Redis, completions: Sequence[Completion]
) -> None:
    """publish_completions for the API (a cancel is final without the worker): best effort."""
    if not completions:
        return
    try:
        await client.publish(channel(OPERATIONS_CHANNEL, client), encode_completions(completions))
    except redis.RedisError as exc:
        log.warning("completion_publish_failed", error=str(exc), count=len(completions))


def invalidate_captado(client: redis.Redis, now: dt.datetime) -> None:
    """Drop the cached captado of the month and tell WebSocket followers to recompute it."""
    for year, month in months_touched(now):
        client.delete(captado_cache_key(year, month))
        client.publish(channel(CAPTADO_CHANNEL, client), json.dumps({"year": year, "month": month}))
