"""/metrics of the API: the queue gauges come from a background refresher (a scrape runs no query),
and LEDGERQ_METRICS_TOKEN restricts the endpoint to Prometheus's bearer token.

An API process of its own (fresh database, private Redis, no worker): its refresher reads the
queue once at start and then only every hour, so what a scrape shows is what that reading saw.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from uuid import UUID

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.isolated import deployment_env, migrated_database, private_redis, wait_until
from tests.integration.support import LedgerClient, Process, insert_pending, wait_for_http
from worker.routing import partition_for
from worker.settings import normalize_database_url
from worker.store.db import make_engine


@dataclass
class Api:
    url: str
    token: str
    engine: Engine
    process: Process


@pytest.fixture(scope="module")
def api(server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("metrics-gauges")
    token = secrets.token_urlsafe(32)
    with (
        private_redis(tmp / "redis") as redis_url,
        migrated_database(server_urls[0], "ledgerq_metrics") as url,
    ):
        env = {
            **deployment_env(url, redis_url, tmp / "data"),
            "LEDGERQ_API_PORT": str(free_port()),
            "LEDGERQ_DB_POOL_SIZE": "4",
            "LEDGERQ_METRICS_INTERVAL": "3600",
            "LEDGERQ_METRICS_TOKEN": token,
        }
        process = Process("metrics-api", ["-m", "cli", "api"], env, tmp)
        engine = make_engine(normalize_database_url(url), pool_size=1)
        try:
            process.start()
            base = f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}"
            wait_for_http(f"{base}/health", process, timeout=60)
            yield Api(base, token, engine, process)
        finally:
            process.stop()
            engine.dispose()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def scrape(api: Api) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = httpx.get(
        f"{api.url}/metrics", headers={"Authorization": f"Bearer {api.token}"}, timeout=10
    )
    assert r.status_code == 200, r.text
    return samples(r.text)


def test_metrics_require_the_bearer_token_when_one_is_set(api: Api) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer " + secrets.token_urlsafe(32)},
        {"Authorization": f"Basic {api.token}"},
        {"Authorization": api.token},
    ):
        r = httpx.get(f"{api.url}/metrics", headers=headers, timeout=10)
        assert r.status_code == 401, (headers, r.text)
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "unauthenticated"
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
        assert "ledgerq_" not in r.text
    scraped = scrape(api)
    assert ("ledgerq_followers", frozenset({("kind", "operation")})) in scraped
    # The other probes stay open: load balancers and supervisors carry no token.
    assert httpx.get(f"{api.url}/health", timeout=10).status_code == 200


async def test_a_scrape_serves_the_last_background_reading_and_runs_no_query(api: Api) -> None:
    def read() -> bool:
        return ("ledgerq_queue_gauges_age_seconds", frozenset()) in scrape(api)

    wait_until(read, 30, lambda: "no queue gauges reading yet")
    first = scrape(api)
    assert first[("ledgerq_metrics_source_up", frozenset({("source", "postgresql")}))] == 1

    async with httpx.AsyncClient(base_url=api.url, timeout=30) as http:
        alice = await LedgerClient.register(http, "alice")
        account = await alice.create_account()
    partition = str(partition_for(UUID(account), 8))
    # Pending now, and nobody applies it (no worker); the reading was taken before it existed.
    insert_pending(api.engine, alice.user_id, account, [700])
    pending = ("ledgerq_pending_operations", frozenset({("partition", partition)}))
    ages = []
    for _ in range(5):
        scraped = scrape(api)
        # Had the scrape counted the pending operations itself, it would show this one.
        assert scraped[pending] == 0
        ages.append(scraped[("ledgerq_queue_gauges_age_seconds", frozenset())])
    # One reading served throughout: its age only grows.
    assert ages == sorted(ages) and ages[-1] > ages[0]
