"""Partitioning and queue names: which queue an operation's doorbell rings on. Pure, no I/O."""

from __future__ import annotations

import zlib
from uuid import UUID

QUEUE_PREFIX = "ledgerq.p"
CONTROL_QUEUE = "ledgerq.control"
DRAIN_TASK = "ledgerq.drain_partition"
SWEEP_TASK = "ledgerq.sweep_pending"
# Webhook deliveries have a queue of their own (worker/webhooks.py, `ledgerq dispatcher`): never a
# partition queue, nor the control queue the partition workers consume.
WEBHOOK_QUEUE = "ledgerq.webhooks"
WEBHOOK_DISPATCH_TASK = "ledgerq.webhooks.dispatch"


def partition_for(account_id: UUID, partitions: int) -> int:
    """The partition of an operation is fixed by its `account_id` (the account debited, except
    for deposits and redemptions, where it is the account credited).

    crc32 of the canonical UUID text: stable across processes, hosts and Python versions,
    unlike hash(), which is salted per process.
    """
    return zlib.crc32(str(account_id).encode("ascii")) % partitions


def queue_for_partition(partition: int) -> str:
    return f"{QUEUE_PREFIX}{partition}"


def queues_for_partitions(partitions: tuple[int, ...] | list[int]) -> list[str]:
    return [queue_for_partition(p) for p in partitions]


def route_task(
    name: str,
    args: tuple[object, ...],
    kwargs: dict[str, object],
    options: dict[str, object],
    task: object = None,
    **_: object,
) -> dict[str, str] | None:
    """Celery router: a drain doorbell goes to its partition's queue, the webhook dispatch to the
    webhook queue, everything else to control."""
    if name == WEBHOOK_DISPATCH_TASK:
        return {"queue": WEBHOOK_QUEUE}
    if name == DRAIN_TASK:
        partition = kwargs.get("partition", args[0] if args else None)
        if not isinstance(partition, int):
            raise ValueError(f"{DRAIN_TASK} needs an int partition, got {partition!r}")
        return {"queue": queue_for_partition(partition)}
    if name.startswith("ledgerq."):
        return {"queue": CONTROL_QUEUE}
    return None
