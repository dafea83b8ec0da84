"""Worker metrics: what each worker process applied, served over HTTP for Prometheus to scrape.

Why an endpoint per worker process rather than prometheus-client's multiprocess mode: workers run
on any number of hosts, and a multiprocess directory is shared by the processes of one host only.
Each worker process serves its own registry on LEDGERQ_WORKER_METRICS_HOST:PORT (the first free
port of PORT..PORT+15, so several workers on one host each get one), and Prometheus scrapes every
worker like any other target; sums across workers are PromQL's job. Facts of PostgreSQL and Redis
(pending depth, live workers) are not here: the API computes them at scrape time.

The worker also counts completions per partition in Redis, in one-second buckets, for the admin
queue view's "applied in the last minute" (read by the API, any number of workers), and, in the
same round trip, every batch by size in one cumulative hash (read by `ledgerq bench`, which reports
the difference over a run).
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import redis
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.exposition import start_http_server

from worker.apply_loop import Completion

log = structlog.get_logger(__name__)

# The worker's own registry: the API imports this module (for the Redis keys) and must not
# expose worker series; the metrics are made on first use, so only a worker process has them (in
# prometheus-client's multiprocess mode, merely creating one writes a file the API would read).
REGISTRY = CollectorRegistry()


@dataclass(frozen=True)
class WorkerMetrics:
    applied: Counter
    failed: Counter
    latency: Histogram
    batch_size: Histogram


@functools.cache
def worker_metrics() -> WorkerMetrics:
    ProcessCollector(registry=REGISTRY)
    return WorkerMetrics(
        applied=Counter(
            "ledgerq_operations_applied",
            "Operations applied successfully (status succeeded), by operation type.",
            ["type"],
            registry=REGISTRY,
        ),
        failed=Counter(
            "ledgerq_operations_failed",
            "Operations that failed when applied (status failed), by operation type and failure "
            "code.",
            ["type", "code"],
            registry=REGISTRY,
        ),
        latency=Histogram(
            "ledgerq_operation_latency_seconds",
            "Seconds from submit (the operation id's UUIDv7 timestamp, taken by the API) to the "
            "commit of the batch that applied it, succeeded or failed.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
            registry=REGISTRY,
        ),
        batch_size=Histogram(
            "ledgerq_batch_size",
            "Operations applied per batch (one transaction).",
            buckets=(1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
            registry=REGISTRY,
        ),
    )


def submitted_at(operation_id: str) -> float | None:
    """Unix seconds encoded in a UUIDv7 operation id (None for any other kind of id)."""
    try:
        value = uuid.UUID(operation_id)
    except ValueError:
        return None
    if value.version != 7:
        return None
    return (value.int >> 80) / 1000.0


def record_batch(completions: Sequence[Completion], committed_at: float) -> None:
    """Count one committed batch: outcomes by type and code, latency of each, the batch's size."""
    m = worker_metrics()
    m.batch_size.observe(len(completions))
    for c in completions:
        if c.status == "succeeded":
            m.applied.labels(c.type).inc()
        else:
            m.failed.labels(c.type, c.error_code or "unknown").inc()
        started = submitted_at(c.id)
        if started is not None:
            # Clocks of the API's and the worker's hosts may differ a little; never negative.
            m.latency.observe(max(0.0, committed_at - started))


def serve_metrics(host: str, port: int, tries: int = 16) -> int | None:
    """Serve REGISTRY on the first free port of port..port+tries-1; the port, or None."""
    if port == 0:
        return None
    worker_metrics()  # served from the start, zeros included
    for candidate in range(port, min(port + tries, 65536)):
        try:
            start_http_server(candidate, addr=host, registry=REGISTRY)
        except OSError:
            continue
        log.info("worker_metrics_listening", host=host, port=candidate)
        return candidate
    log.warning("worker_metrics_unavailable", host=host, ports=f"{port}-{port + tries - 1}")
    return None


# ----------------------------------------------------------------- recent completions in Redis

RECENT_PREFIX = "ledgerq:completed:"
RECENT_WINDOW = 60
# Batches by size since the key was made, over every worker (no expiry: a dozen fields). Field
# BATCH_BUCKETS[i] counts the batches of size in (BATCH_BUCKETS[i-1], BATCH_BUCKETS[i]],
# BATCH_OVERFLOW those above the last bound (only a LEDGERQ_BATCH_SIZE above 500 makes them),
# BATCH_OPERATIONS the operations of all of them.
BATCH_SIZES_KEY = "ledgerq:batch_sizes"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 500)
BATCH_OVERFLOW = "inf"
BATCH_OPERATIONS = "ops"
BATCH_FIELDS = (*(str(b) for b in BATCH_BUCKETS), BATCH_OVERFLOW)
# Buckets live a little longer than the window; Redis's clock names them, so hosts agree.
_COUNT_RECENT = """
local now = tonumber(redis.call('TIME')[1])
local key = KEYS[1] .. now
redis.call('HINCRBY', key, 'a' .. ARGV[1], tonumber(ARGV[2]))
redis.call('HINCRBY', key, 'f' .. ARGV[1], tonumber(ARGV[3]))
redis.call('EXPIRE', key, tonumber(ARGV[4]))
redis.call('HINCRBY', KEYS[2], ARGV[5], 1)
redis.call('HINCRBY', KEYS[2], ARGV[6], tonumber(ARGV[2]) + tonumber(ARGV[3]))
return now
"""
# Sums of the last ARGV[1] one-second buckets: a flat list of field, total (a<p> applied, f<p> failed).
READ_RECENT = """
local now = tonumber(redis.call('TIME')[1])
local totals = {}
for second = now - tonumber(ARGV[1]) + 1, now do
  local flat = redis.call('HGETALL', KEYS[1] .. second)
  for i = 1, #flat, 2 do
    totals[flat[i]] = (totals[flat[i]] or 0) + tonumber(flat[i + 1])
  end
end
local out = {}
for field, total in pairs(totals) do
  out[#out + 1] = field
  out[#out + 1] = total
end
return out
"""


@functools.cache
def _count_script(client: redis.Redis) -> Any:
    return client.register_script(_COUNT_RECENT)


def count_recent(client: redis.Redis, partition: int, completions: Sequence[Completion]) -> None:
    """Add a batch to its partition's per-second completion counts and to the batch sizes, in one
    round trip (best effort: a view, not the truth)."""
    if not completions:
        return
    failed = sum(1 for c in completions if c.status != "succeeded")
    try:
        _count_script(client)(
            keys=[RECENT_PREFIX, BATCH_SIZES_KEY],
            args=[
                partition,
                len(completions) - failed,
                failed,
                RECENT_WINDOW * 2,
                batch_bucket(len(completions)),
                BATCH_OPERATIONS,
            ],
        )
    except redis.RedisError as exc:
        log.warning("recent_count_failed", partition=partition, error=str(exc))


def parse_recent(flat: Sequence[bytes | str | int]) -> dict[int, tuple[int, int]]:
    """READ_RECENT's answer -> partition: (applied, failed)."""
    totals: dict[int, list[int]] = {}
    for i in range(0, len(flat) - 1, 2):
        field = flat[i]
        name = field.decode() if isinstance(field, bytes) else str(field)
        kind, partition = name[:1], name[1:]
        if kind not in ("a", "f") or not partition.isdigit():
            continue
        slot = totals.setdefault(int(partition), [0, 0])
        slot[0 if kind == "a" else 1] += int(flat[i + 1])
    return {p: (v[0], v[1]) for p, v in totals.items()}


# ----------------------------------------------------------------- batch sizes in Redis


def batch_bucket(size: int) -> str:
    """The BATCH_SIZES_KEY field that counts a batch of `size` operations (size >= 1)."""
    if size < 1:
        raise ValueError(f"a batch holds at least one operation, got {size}")
    for bound in BATCH_BUCKETS:
        if size <= bound:
            return str(bound)
    return BATCH_OVERFLOW


def _text(value: bytes | str | int) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class BatchSizes:
    """Batches per size bucket (every field of BATCH_FIELDS, in order) and their operations."""

    buckets: dict[str, int]
    operations: int

    @classmethod
    def empty(cls) -> BatchSizes:
        return cls({f: 0 for f in BATCH_FIELDS}, 0)

    @property
    def batches(self) -> int:
        return sum(self.buckets.values())

    @property
    def mean(self) -> float | None:
        """Exact: operations / batches (the operations are counted, not estimated)."""
        return self.operations / self.batches if self.batches else None

    def percentile(self, q: float) -> int | None:
        """Nearest rank over batches: the upper bound of the bucket holding the q-th batch, so
        "p50 = 4" reads "half of the batches held at most 4 operations". None when there are no
        batches, or when that batch is above the last bound (BATCH_OVERFLOW has none)."""
        total = self.batches
        if not total:
            return None
        rank = max(1, math.ceil(q * total))
        seen = 0
        for field, count in self.buckets.items():
            seen += count
            if seen >= rank:
                return int(field) if field != BATCH_OVERFLOW else None
        return None  # unreachable: seen ends at total >= rank

    def since(self, before: BatchSizes) -> BatchSizes:
        """What was counted after `before` was read. A count that went down means the key was
        reset in between (Redis flushed or restarted empty): then all of self is new."""
        diff = {f: self.buckets.get(f, 0) - before.buckets.get(f, 0) for f in BATCH_FIELDS}
        operations = self.operations - before.operations
        if operations < 0 or any(v < 0 for v in diff.values()):
            return self
        return BatchSizes(diff, operations)

    def as_dict(self) -> dict[str, Any]:
        mean = self.mean
        return {
            "buckets": dict(self.buckets),
            "batches": self.batches,
            "operations": self.operations,
            "mean": round(mean, 2) if mean is not None else None,
            "p50": self.percentile(0.50),
            "p90": self.percentile(0.90),
            "p99": self.percentile(0.99),
        }


def parse_batch_sizes(raw: Mapping[Any, bytes | str | int]) -> BatchSizes:
    """HGETALL of BATCH_SIZES_KEY -> BatchSizes (unknown fields ignored, missing ones 0)."""
    fields = {_text(k): int(_text(v)) for k, v in raw.items()}
    return BatchSizes({f: fields.get(f, 0) for f in BATCH_FIELDS}, fields.get(BATCH_OPERATIONS, 0))


def read_batch_sizes(client: redis.Redis) -> BatchSizes:
    """The cumulative batch sizes counted so far by every worker of the deployment."""
    # A sync client answers a dict; redis-py's types also allow its asyncio client's awaitable.
    return parse_batch_sizes(cast("dict[bytes, bytes]", client.hgetall(BATCH_SIZES_KEY)))
