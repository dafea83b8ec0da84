"""Doorbells: at most one queued drain message per partition, however many operations arrive."""

from __future__ import annotations

import redis
import redis.asyncio

# The flag lives this long at most, so a bell whose message was lost cannot silence a partition
# for more than a minute; the sweeper rings sooner than that anyway.
BELL_TTL_SECONDS = 60


def bell_key(partition: int) -> str:
    return f"ledgerq:bell:{partition}"


async def claim_bell(client: redis.asyncio.Redis, partition: int) -> bool:
    """True when the caller must send the drain message: no other message is queued for the partition.

    The API calls this after its INSERT committed. If the flag is already set, a drain message is
    queued and its worker clears the flag before reading, so it will see this operation.
    """
    return bool(await client.set(bell_key(partition), "1", nx=True, ex=BELL_TTL_SECONDS))


def clear_bell(client: redis.Redis, partition: int) -> None:
    """The worker clears the flag before it reads pending operations, never after."""
    client.delete(bell_key(partition))


def hold_bell(client: redis.Redis, partition: int) -> None:
    """Set the flag for a message the worker is about to send itself (a re-ring)."""
    client.set(bell_key(partition), "1", ex=BELL_TTL_SECONDS)
