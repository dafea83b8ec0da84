"""Completion events: published on Redis after the apply transaction commits."""

from __future__ import annotations

import json
from collections.abc import Sequence

import redis
import structlog

from worker.apply_loop import Completion

log = structlog.get_logger(__name__)

# A plain Redis pub/sub channel; the API listens on it through Litestar's ChannelsPlugin.
OPERATIONS_CHANNEL = "ledgerq.operations"


def encode_completions(completions: Sequence[Completion]) -> str:
    return json.dumps([c.as_dict() for c in completions], separators=(",", ":"))


def publish_completions(client: redis.Redis, completions: Sequence[Completion]) -> None:
    """One message per batch. A lost event costs a waiter its wait, never a result: PostgreSQL is the truth."""
    if not completions:
        return
    try:
        client.publish(OPERATIONS_CHANNEL, encode_completions(completions))
    except redis.RedisError as exc:
        log.warning("completion_publish_failed", error=str(exc), count=len(completions))
