"""The API's Prometheus metrics: what this process accepted, HTTP requests, and the queue's facts.

Queue facts (pending depth and oldest pending age per partition from PostgreSQL, live workers
from the lease registry in Redis) are read in the background by one refresher per API process
(`QueueGauges`, every LEDGERQ_METRICS_INTERVAL seconds), never by a scrape: a scrape serves the
last reading, so scraping often, or from several Prometheus servers, costs PostgreSQL nothing.
Every API process reads the same facts, so any of them answers the same however many run. What
workers applied is counted by each worker process and scraped from it (worker/metrics.py).

With LEDGERQ_METRICS_TOKEN set, /metrics answers only `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import structlog
from litestar import Request, Response, get
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from api.errors import ApiError
from api.state import Services, services_of
from api.waiters import raise_if_cancelled
from worker.leases import LEASE_TTL, REGISTRY_KEY, lease_key
from worker.metrics import READ_RECENT, RECENT_PREFIX, RECENT_WINDOW, parse_recent
from worker.store import queue

log = structlog.get_logger(__name__)

OPERATIONS_SUBMITTED = Counter(
    "ledgerq_operations_submitted",
    "Operations accepted by this API process (new, not idempotent replays), by operation type.",
    ["type"],
)


HTTP_LABELS = ["method", "path", "status_code", "app_name"]
HTTP_REQUESTS = Counter(
    "ledgerq_http_requests_total",
    "HTTP requests by method, route template and status.",
    HTTP_LABELS,
)
HTTP_DURATION = Histogram(
    "ledgerq_http_request_duration_seconds",
    "HTTP request duration in seconds, by method, route template and status.",
    HTTP_LABELS,
)


class HttpMetrics:
    """ledgerq_http_requests_total and ledgerq_http_request_duration_seconds, labelled by route
    template (never the raw path with its ids); errors are status_code=~"5..". Recorded by the
    request edge (api/logging.py); the labelled children are looked up once per series."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def record(self, method: str, path: str, status: int, seconds: float) -> None:
        key = (method, path, status)
        series = self._children.get(key)
        if series is None:
            values = (method, path, str(status), "ledgerq")
            series = (HTTP_REQUESTS.labels(*values), HTTP_DURATION.labels(*values))
            self._children[key] = series
        series[0].inc()
        series[1].observe(seconds)


# ----------------------------------------------------------------- the queue's facts


@dataclass
class PartitionFacts:
    pending: int = 0
    oldest_pending_age: float | None = None
    holder: str | None = None
    applied_last_minute: int = 0
    failed_last_minute: int = 0


@dataclass
class QueueFacts:
    partitions: dict[int, PartitionFacts]
    workers_alive: int | None = None
    # Which source answered: a scrape still reports the other's facts when one is down.
    sources: dict[str, bool] = field(default_factory=dict)


async def read_pending(services: Services) -> dict[int, tuple[int, float]]:
    """partition -> (pending operations, seconds the oldest has waited); reads the pending index."""
    async with services.reads.connect() as conn:
        return await queue.pending_by_partition(conn)


async def read_workers(services: Services) -> tuple[int, dict[int, str | None]]:
    """(live workers in the lease registry, the lease holder of each partition): one round trip."""
    partitions = services.settings.partitions
    async with services.redis.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.zrange(REGISTRY_KEY, 0, -1, withscores=True)
        pipe.mget([lease_key(p) for p in range(partitions)])
        (seconds, micros), members, holders = await pipe.execute()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    alive = sum(1 for _, score in members if score >= now_ms - LEASE_TTL * 1000)
    return alive, {p: (h.decode() if isinstance(h, bytes) else h) for p, h in enumerate(holders)}


async def read_recent(services: Services) -> dict[int, tuple[int, int]]:
    """partition -> (applied, failed) in the last minute, as counted by the workers."""
    flat = await services.redis.eval(READ_RECENT, 1, RECENT_PREFIX, RECENT_WINDOW)
    return parse_recent(flat)


async def read_queue_facts(services: Services, recent: bool = False) -> QueueFacts:
    """Everything known about each partition; a source that fails is marked down, not raised."""
    facts = QueueFacts({p: PartitionFacts() for p in range(services.settings.partitions)})
    try:
        for p, (pending, age) in (await read_pending(services)).items():
            if p in facts.partitions:
                facts.partitions[p].pending = pending
                facts.partitions[p].oldest_pending_age = age
        facts.sources["postgresql"] = True
    except Exception as exc:
        log.warning("queue_facts_failed", source="postgresql", error=str(exc))
        facts.sources["postgresql"] = False
    try:
        facts.workers_alive, holders = await read_workers(services)
        for p, holder in holders.items():
            facts.partitions[p].holder = holder
        if recent:
            for p, (applied, failed) in (await read_recent(services)).items():
                if p in facts.partitions:
                    facts.partitions[p].applied_last_minute = applied
                    facts.partitions[p].failed_last_minute = failed
        facts.sources["redis"] = True
    except Exception as exc:
        log.warning("queue_facts_failed", source="redis", error=str(exc))
        facts.sources["redis"] = False
    return facts


class QueueGauges:
    """The queue's facts for /metrics, read by this process every `interval` seconds in the
    background (one refresher per API process; started in api/state.py's lifespan)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.facts: QueueFacts | None = None
        self._read_at: float | None = None  # time.monotonic() of the last reading
        self.refreshes = 0  # readings taken (tests read it)

    async def refresh(self, services: Services) -> None:
        self.facts = await read_queue_facts(services)
        self._read_at = time.monotonic()
        self.refreshes += 1

    def age(self) -> float | None:
        """Seconds since the facts were read (None before the first reading)."""
        return None if self._read_at is None else time.monotonic() - self._read_at

    async def run(self, services: Services) -> None:
        while True:
            try:
                await self.refresh(services)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # read_queue_facts marks a failed source; anything else
                log.warning("queue_gauges_refresh_failed", error=str(exc))
            raise_if_cancelled()
            await asyncio.sleep(self.interval)


class QueueFactsCollector(Collector):
    """Gauges of the facts last read by the process's refresher (a collector per scrape)."""

    def __init__(self, facts: QueueFacts, age: float) -> None:
        self.facts = facts
        self.age = age

    def collect(self) -> Iterator[Metric]:
        facts = self.facts
        age = GaugeMetricFamily(
            "ledgerq_queue_gauges_age_seconds",
            "Seconds since this API process read the queue gauges (refreshed every "
            "LEDGERQ_METRICS_INTERVAL seconds).",
        )
        age.add_metric([], self.age)
        yield age
        up = GaugeMetricFamily(
            "ledgerq_metrics_source_up",
            "1 if the source of the queue gauges (postgresql, redis) answered their last "
            "refresh, else 0.",
            labels=["source"],
        )
        for source, ok in sorted(facts.sources.items()):
            up.add_metric([source], 1.0 if ok else 0.0)
        yield up
        if facts.sources.get("postgresql"):
            pending = GaugeMetricFamily(
                "ledgerq_pending_operations",
                "Operations waiting to be applied, per partition.",
                labels=["partition"],
            )
            oldest = GaugeMetricFamily(
                "ledgerq_oldest_pending_age_seconds",
                "Seconds the oldest pending operation of the partition has waited (0: none).",
                labels=["partition"],
            )
            for p, f in sorted(facts.partitions.items()):
                pending.add_metric([str(p)], f.pending)
                oldest.add_metric([str(p)], f.oldest_pending_age or 0.0)
            yield pending
            yield oldest
        if facts.workers_alive is not None:
            workers = GaugeMetricFamily(
                "ledgerq_workers_alive",
                "Workers with a live heartbeat in the lease registry (workers in `auto` mode).",
            )
            workers.add_metric([], facts.workers_alive)
            yield workers


class _Families(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self.families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def _process_registry() -> Any:
    """This process's metrics, or every API process's when they share a multiprocess directory."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return REGISTRY


def followers(services: Services) -> Metric:
    waiting, following = services.waiters.counts()
    family = GaugeMetricFamily(
        "ledgerq_followers",
        "Requests of this API process following completions now: `operation` (Prefer: wait and "
        "server-sent events), `account` (WebSockets).",
        labels=["kind"],
    )
    family.add_metric(["operation"], waiting)
    family.add_metric(["account"], following)
    return family


def require_metrics_token(request: Request[Any, Any, Any], token: str | None) -> None:
    """With LEDGERQ_METRICS_TOKEN set, only `Authorization: Bearer <token>` may scrape."""
    if token is None:
        return
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.encode()
    ):
        return
    raise ApiError(
        401,
        "unauthenticated",
        "/metrics requires its bearer token (LEDGERQ_METRICS_TOKEN).",
        headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
    )


@get("/metrics", operation_id="metrics", include_in_schema=False, exclude_from_auth=True)
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text format: this process's counters and histograms, then the queue's facts as
    last read in the background (no query here)."""
    services = services_of(request.app)
    require_metrics_token(request, services.settings.metrics_token)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families([*_process_registry().collect(), followers(services)]))
    gauges = services.queue_gauges
    age = gauges.age()
    if gauges.facts is not None and age is not None:
        registry.register(QueueFactsCollector(gauges.facts, age))
    return Response(
        generate_latest(registry),
        media_type=CONTENT_TYPE_LATEST,
        headers={"Cache-Control": "no-store"},
    )
