"""Doorbells: at most one queued drain message per partition, however many operations arrive."""

from __future__ import annotations

from collections.abc import Sequence

import redis
import redis.asyncio

# The flag lives this long at most, so a bell whose message was lost cannot silence a partition
# for more than a minute; the sweeper rings sooner than that anyway.
BELL_TTL_SECONDS = 60


def bell_key(partition: int) -> str:
    return f"ledgerq:bell:{partition}"


async def claim_bells(client: redis.asyncio.Redis, partitions: Sequence[int]) -> list[int]:
    """The partitions whose drain message the caller must send (one Redis round trip for all):
    those with no message queued. A flag already set means a queued or running drain holds it,
    and its worker clears the flag before its last read, so it will see what was just stored.
    Call only after the new operations committed.
    """
    if not partitions:
        return []
    async with client.pipeline(transaction=False) as pipe:
        for p in partitions:
            pipe.set(bell_key(p), "1", nx=True, ex=BELL_TTL_SECONDS)
        claimed = await pipe.execute()
    return [p for p, ok in zip(partitions, claimed, strict=True) if ok]


async def release_bells(client: redis.asyncio.Redis, partitions: Sequence[int]) -> None:
    """Give back bells whose message could not be sent, so the next submit rings again."""
    if partitions:
        await client.delete(*(bell_key(p) for p in partitions))


def clear_bell(client: redis.Redis, partition: int) -> None:
    """The worker clears the flag before it reads pending operations, never after."""
    client.delete(bell_key(partition))


def hold_bell(client: redis.Redis, partition: int) -> None:
    """Set the flag for a message the worker is about to send itself (a re-ring)."""
    client.set(bell_key(partition), "1", ex=BELL_TTL_SECONDS)
