"""Watching ledgerq: Prometheus metrics of the API and of a worker, /ready, the admin queue view,
request ids, and JSON logs that name the request and the operation.

Most tests run against a deployment of their own (private Redis, fresh database, one worker, one
API, both logging JSON, no beat): counts start from zero, nothing else moves them, and without a
sweeper an operation inserted as pending stays pending until something rings its partition.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.isolated import (
    deployment_env,
    fresh_database,
    migrated_database,
    private_redis,
    wait_until,
)
from tests.integration.support import (
    LedgerClient,
    Process,
    insert_pending,
    wait_for_http,
    wait_terminal,
)
from worker.metrics import read_batch_sizes
from worker.routing import partition_for
from worker.settings import normalize_database_url
from worker.store.db import make_engine
from worker.store.migrate import head_revision, upgrade

PARTITIONS = 8


@dataclass
class Deployment:
    api_url: str
    worker_metrics_url: str
    engine: Engine
    env: dict[str, str]
    api: Process
    worker: Process

    @property
    def master(self) -> dict[str, str]:
        return {"X-API-Key": self.env["LEDGERQ_MASTER_KEY"]}


@pytest.fixture(scope="module")
def deployment(
    server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    tmp = tmp_path_factory.mktemp("observability")
    with (
        private_redis(tmp / "redis") as redis_url,
        migrated_database(server_urls[0], "ledgerq_observability") as database_url,
    ):
        metrics_port = free_port()
        env = {
            **deployment_env(database_url, redis_url, tmp / "data"),
            "LEDGERQ_LOG_FORMAT": "json",
            "LEDGERQ_MASTER_KEY": secrets.token_urlsafe(32),
            "LEDGERQ_WORKER_METRICS_PORT": str(metrics_port),
            "LEDGERQ_API_PORT": str(free_port()),
            "LEDGERQ_DB_POOL_SIZE": "4",
            # The queue gauges are read in the background: every second here.
            "LEDGERQ_METRICS_INTERVAL": "1",
        }
        worker = Process("obs-worker", ["-m", "cli", "worker"], env, tmp)
        api = Process("obs-api", ["-m", "cli", "api"], env, tmp)
        engine = make_engine(normalize_database_url(database_url), pool_size=2)
        try:
            worker.start()
            api.start()
            api_url = f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}"
            wait_for_http(f"{api_url}/health", api, timeout=60)
            worker_metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            wait_for_http(worker_metrics_url, worker, timeout=60)
            yield Deployment(api_url, worker_metrics_url, engine, env, api, worker)
        finally:
            api.stop()
            worker.stop()
            engine.dispose()


@pytest.fixture
async def client(deployment: Deployment) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=deployment.api_url, timeout=60) as http:
        yield http


# ----------------------------------------------------------------- reading Prometheus text

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    r = httpx.get(url, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def eventually(read: Callable[[], Samples], check: Callable[[Samples], bool]) -> Samples:
    """Scrape until check holds (a worker counts a batch just after its waiters are woken)."""
    box: dict[str, Samples] = {}

    def ok() -> bool:
        box["last"] = read()
        return check(box["last"])

    wait_until(ok, timeout=30, what=lambda: "metrics never matched")
    return box["last"]


# ----------------------------------------------------------------- metrics


async def test_metrics_count_submitted_applied_failed_with_latency_and_batch_sizes(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    alice = await LedgerClient.register(client, "alice")
    account = await alice.create_account()
    api_before = scrape(f"{deployment.api_url}/metrics")
    worker_before = scrape(deployment.worker_metrics_url)

    deposits = [
        await alice.submit_ok({"type": "deposit", "account_id": account, "amount": "5.00"})
        for _ in range(3)
    ]
    await alice.wait_all(deposits)
    overdraw = await alice.submit_ok(
        {"type": "withdrawal", "account_id": account, "amount": "99.00"}
    )
    assert (await alice.wait(overdraw))["error"]["code"] == "insufficient_funds"

    api_after = scrape(f"{deployment.api_url}/metrics")
    submitted = "ledgerq_operations_submitted_total"
    assert (
        value(api_after, submitted, type="deposit") - value(api_before, submitted, type="deposit")
        == 3
    )
    assert (
        value(api_after, submitted, type="withdrawal")
        - value(api_before, submitted, type="withdrawal")
        == 1
    )
    # HTTP request metrics are labelled by route template, not by the raw path with its ids.
    assert (
        value(
            api_after,
            "ledgerq_http_requests_total",
            app_name="ledgerq",
            method="POST",
            path="/api/v1/operations",
            status_code="202",
        )
        >= 4
    )

    def grew(after: Samples, name: str, by: float, **labels: str) -> bool:
        return value(after, name, **labels) - value(worker_before, name, **labels) >= by

    worker_after = eventually(
        lambda: scrape(deployment.worker_metrics_url),
        lambda s: (
            grew(s, "ledgerq_operations_applied_total", 3, type="deposit")
            and grew(
                s,
                "ledgerq_operations_failed_total",
                1,
                type="withdrawal",
                code="insufficient_funds",
            )
        ),
    )
    applied = "ledgerq_operations_applied_total"
    assert (
        value(worker_after, applied, type="deposit") - value(worker_before, applied, type="deposit")
        == 3
    )
    failed = "ledgerq_operations_failed_total"
    assert (
        value(worker_after, failed, type="withdrawal", code="insufficient_funds")
        - value(worker_before, failed, type="withdrawal", code="insufficient_funds")
        == 1
    )
    assert value(worker_after, applied, type="withdrawal") == value(
        worker_before, applied, type="withdrawal"
    )
    # Every completed operation has a latency observation; batches carried all four.
    latency = "ledgerq_operation_latency_seconds"
    assert grew(worker_after, f"{latency}_count", 4)
    assert value(worker_after, f"{latency}_sum") > value(worker_before, f"{latency}_sum")
    assert grew(worker_after, f"{latency}_bucket", 4, le="+Inf")
    assert grew(worker_after, "ledgerq_batch_size_count", 1)
    assert grew(worker_after, "ledgerq_batch_size_sum", 4)
    # The batch sizes the worker counts in Redis (for `ledgerq bench`) are the same batches: one
    # worker and a private Redis, so the totals match its histogram exactly.
    box: dict[str, Any] = {}
    with redis.Redis.from_url(deployment.env["LEDGERQ_REDIS_URL"]) as r:

        def matches(s: Samples) -> bool:
            sizes = read_batch_sizes(r)
            box["sizes"] = sizes
            return (sizes.batches, sizes.operations) == (
                value(s, "ledgerq_batch_size_count"),
                value(s, "ledgerq_batch_size_sum"),
            )

        worker_after = eventually(lambda: scrape(deployment.worker_metrics_url), matches)
        sizes = box["sizes"]
    assert sizes.operations >= 4 and sizes.batches >= 1
    assert sizes.buckets["1"] == value(worker_after, "ledgerq_batch_size_bucket", le="1.0")
    assert sizes.buckets["1"] + sizes.buckets["2"] == value(
        worker_after, "ledgerq_batch_size_bucket", le="2.0"
    )

    # The API reads the queue's gauges from PostgreSQL and Redis in the background (every
    # LEDGERQ_METRICS_INTERVAL): the worker shows once a reading after its start is served.
    api_after = eventually(
        lambda: scrape(f"{deployment.api_url}/metrics"),
        lambda s: value(s, "ledgerq_workers_alive") == 1,
    )
    assert value(api_after, "ledgerq_metrics_source_up", source="postgresql") == 1
    assert value(api_after, "ledgerq_metrics_source_up", source="redis") == 1
    for p in range(PARTITIONS):
        assert ("ledgerq_pending_operations", frozenset({("partition", str(p))})) in api_after


async def test_pending_depth_and_queue_view_show_an_operation_nobody_rang(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    alice = await LedgerClient.register(client, "alice")
    account = await alice.create_account()
    partition = str(partition_for(UUID(account), PARTITIONS))
    # Committed as pending without a doorbell; this deployment has no sweeper to ring it.
    [stuck] = insert_pending(deployment.engine, alice.user_id, account, [700])

    # Shown from the first background reading after the insert.
    samples = eventually(
        lambda: scrape(f"{deployment.api_url}/metrics"),
        lambda s: value(s, "ledgerq_pending_operations", partition=partition) == 1,
    )
    assert value(samples, "ledgerq_oldest_pending_age_seconds", partition=partition) > 0

    r = await client.get("/api/v1/admin/queues", headers=deployment.master)
    assert r.status_code == 200, r.text
    view = r.json()
    assert view["workers_alive"] == 1
    assert [q["partition"] for q in view["partitions"]] == list(range(PARTITIONS))
    worker_name = f"ledgerq-auto-{deployment.worker.proc.pid}@"  # type: ignore[union-attr]
    assert all(q["holder"].startswith(worker_name) for q in view["partitions"]), view
    mine = view["partitions"][int(partition)]
    assert mine["pending"] == 1
    assert mine["oldest_pending_age_seconds"] > 0
    assert set(mine) == {
        "partition",
        "pending",
        "oldest_pending_age_seconds",
        "applied_last_minute",
        "failed_last_minute",
        "holder",
    }

    # A submit rings the partition: the stuck operation is applied with it, and the counts move.
    before = mine["applied_last_minute"]
    await alice.deposit(account, "1.00")
    assert wait_terminal(deployment.engine, [stuck]) == {stuck: "succeeded"}
    samples = eventually(
        lambda: scrape(f"{deployment.api_url}/metrics"),
        lambda s: value(s, "ledgerq_pending_operations", partition=partition) == 0,
    )
    assert value(samples, "ledgerq_oldest_pending_age_seconds", partition=partition) == 0

    def applied_now() -> int:
        r = httpx.get(
            f"{deployment.api_url}/api/v1/admin/queues", headers=deployment.master, timeout=10
        )
        return int(r.json()["partitions"][int(partition)]["applied_last_minute"])

    wait_until(lambda: applied_now() >= before + 2, 30, lambda: f"applied {applied_now()}")
    r = await client.get("/api/v1/admin/queues", headers=deployment.master)
    mine = r.json()["partitions"][int(partition)]
    assert (mine["pending"], mine["oldest_pending_age_seconds"]) == (0, None)


async def test_queue_view_is_for_admins_only(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    alice = await LedgerClient.register(client, "alice")
    r = await alice.request("GET", "/api/v1/admin/queues")
    assert r.status_code == 403, r.text
    assert r.json()["code"] == "insufficient_scope"
    r = await client.get("/api/v1/admin/queues")
    assert r.status_code == 401


# ----------------------------------------------------------------- request ids and JSON logs


def json_lines(process: Process) -> list[dict[str, Any]]:
    lines = []
    for line in process.log_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def test_request_ids_are_echoed_or_made(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    r = await client.get("/health", headers={"X-Request-ID": "trace-abc-123"})
    assert r.headers["X-Request-ID"] == "trace-abc-123"
    made = (await client.get("/health")).headers["X-Request-ID"]
    assert len(made) == 32 and int(made, 16) >= 0
    assert (await client.get("/health")).headers["X-Request-ID"] != made
    # Errors answered outside the route (authentication, unknown paths) carry it too.
    r = await client.get("/api/v1/accounts", headers={"X-Request-ID": "no-credentials"})
    assert (r.status_code, r.headers["X-Request-ID"]) == (401, "no-credentials")
    r = await client.get("/no/such/path", headers={"X-Request-ID": "lost"})
    assert (r.status_code, r.headers["X-Request-ID"]) == (404, "lost")
    # An id unsafe to log or echo (spaces, too long) is replaced by a new one.
    for bad in ("has spaces in it", "x" * 200):
        echoed = (await client.get("/health", headers={"X-Request-ID": bad})).headers[
            "X-Request-ID"
        ]
        assert echoed != bad and len(echoed) == 32


async def test_json_logs_carry_the_request_id_and_the_operation_id(
    deployment: Deployment, client: httpx.AsyncClient
) -> None:
    alice = await LedgerClient.register(client, "alice")
    account = await alice.create_account()
    request_id = f"req-{secrets.token_hex(6)}"
    r = await alice.submit(
        {"type": "deposit", "account_id": account, "amount": "3.00"}, **{"X-Request-ID": request_id}
    )
    assert r.status_code == 202 and r.headers["X-Request-ID"] == request_id
    deposit = r.json()["id"]
    failing = await alice.submit_ok(
        {"type": "withdrawal", "account_id": account, "amount": "50.00"}
    )
    await alice.wait_all([deposit, failing])

    def logged(process: Process, event: str, **match: Any) -> dict[str, Any] | None:
        for line in json_lines(process):
            if line.get("event") == event and all(line.get(k) == v for k, v in match.items()):
                return line
        return None

    # Every line the API writes is one JSON object (uvicorn's own lines included).
    api_lines = [line for line in deployment.api.log_text().splitlines() if line.strip()]
    assert api_lines and all(isinstance(json.loads(line), dict) for line in api_lines)
    accepted = logged(deployment.api, "operation_accepted", operation_id=deposit)
    assert accepted is not None
    assert accepted["request_id"] == request_id and accepted["level"] == "info"
    assert "timestamp" in accepted

    # The worker logs each batch with the ids it applied, and each failure with its code.
    wait_until(
        lambda: logged(deployment.worker, "operation_failed", operation_id=failing) is not None,
        30,
        lambda: deployment.worker.log_text()[-2000:],
    )
    failure = logged(deployment.worker, "operation_failed", operation_id=failing)
    assert failure is not None and failure["error_code"] == "insufficient_funds"
    batches = [
        line
        for line in json_lines(deployment.worker)
        if line.get("event") == "batch_applied" and deposit in line.get("operation_ids", [])
    ]
    assert len(batches) == 1 and "partition" in batches[0]
    # Celery's own lines are JSON too, not "WARNING/MainProcess" stdout captures.
    assert logged(deployment.worker, "worker_metrics_listening") is not None
    assert any(
        str(line.get("event", "")).endswith("ready.") for line in json_lines(deployment.worker)
    )
    assert "WARNING/MainProcess" not in deployment.worker.log_text()


# ----------------------------------------------------------------- readiness


async def test_ready_checks_postgres_redis_broker_and_migrations(http: httpx.AsyncClient) -> None:
    r = await http.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ok",
        "checks": {"postgres": "ok", "migrations": "ok", "redis": "ok", "broker": "ok"},
    }
    assert (await http.get("/health")).json() == {"status": "ok", "checks": {}}


def test_ready_is_503_when_the_schema_is_behind(
    server_urls: tuple[str, str], service_env: dict[str, str], tmp_path: Path
) -> None:
    with fresh_database(server_urls[0], "ledgerq_behind") as url:
        upgrade(normalize_database_url(url), "0001")
        port = free_port()
        env = {
            **service_env,
            "LEDGERQ_DATABASE_URL": url,
            "LEDGERQ_API_PORT": str(port),
            "LEDGERQ_DB_POOL_SIZE": "3",
        }
        api = Process("api-behind", ["-m", "cli", "api"], env, tmp_path)
        api.start()
        try:
            base = f"http://127.0.0.1:{port}"
            wait_for_http(f"{base}/health", api, timeout=60)
            r = httpx.get(f"{base}/ready", timeout=10)
            assert r.status_code == 503, r.text
            body = r.json()
            assert body["status"] == "unavailable"
            assert body["checks"]["migrations"] == (
                f"error: database at 0001, code expects {head_revision()}"
            )
            assert {k: v for k, v in body["checks"].items() if k != "migrations"} == {
                "postgres": "ok",
                "redis": "ok",
                "broker": "ok",
            }
            # Migrated while the API runs: ready without a restart (a failed check is not cached).
            upgrade(normalize_database_url(url))
            r = httpx.get(f"{base}/ready", timeout=10)
            assert r.status_code == 200, r.text
        finally:
            api.stop()
