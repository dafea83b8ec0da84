"""The end-to-end path with RabbitMQ as the Celery broker (LEDGERQ_BROKER_URL=amqp://...).

A deployment of its own: worker (auto leases), beat and API on a fresh database and a private
Redis (events, doorbells, leases), with a RabbitMQ virtual host of its own when rabbitmqctl can
make one, so the session's processes never see these queues. Skipped only when nothing answers
on the AMQP port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import socket
import subprocess
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.isolated import (
    active_partition_queues,
    deployment_env,
    migrated_database,
    private_redis,
    wait_until,
)
from tests.integration.support import (
    LedgerClient,
    Process,
    assert_ledger_consistent,
    key,
    wait_for_http,
)
from worker.routing import queue_for_partition
from worker.settings import normalize_database_url
from worker.store.db import make_engine

AMQP_URL = os.environ.get("LEDGERQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


def _amqp_answers(url: str) -> bool:
    parts = urlsplit(url)
    try:
        with socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 5672), 2):
            return True
    except OSError:
        return False


def _rabbitmqctl(*args: str) -> bool:
    if shutil.which("rabbitmqctl") is None:
        return False
    try:
        done = subprocess.run(["rabbitmqctl", *args], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextlib.contextmanager
def amqp_vhost(url: str) -> Iterator[str]:
    """A fresh virtual host for this test when we may create one (we run as the broker's admin
    on CI); otherwise the URL's own vhost, shared with whatever else uses it."""
    parts = urlsplit(url)
    vhost = f"ledgerq_test_{secrets.token_hex(4)}"
    user = parts.username or "guest"
    if not (
        _rabbitmqctl("add_vhost", vhost)
        and _rabbitmqctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    ):
        yield url
        return
    try:
        yield urlunsplit(parts._replace(path=f"/{vhost}"))
    finally:
        _rabbitmqctl("delete_vhost", vhost)


@pytest.fixture(scope="module")
def amqp_deployment(
    server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, str], Engine]]:
    if not _amqp_answers(AMQP_URL):
        pytest.skip(
            f"no AMQP server answers at {urlsplit(AMQP_URL).netloc.rpartition('@')[2]} "
            "(start RabbitMQ, or set LEDGERQ_TEST_AMQP_URL)"
        )
    tmp = tmp_path_factory.mktemp("rabbitmq")
    logs = tmp / "logs"
    logs.mkdir()
    with (
        amqp_vhost(AMQP_URL) as broker_url,
        private_redis(tmp / "redis") as redis_url,
        migrated_database(server_urls[0], "ledgerq_amqp") as database_url,
    ):
        env = deployment_env(database_url, redis_url, tmp / "data", broker_url=broker_url)
        env["LEDGERQ_API_PORT"] = str(free_port())
        processes = [
            Process("amqp-worker", ["-m", "cli", "worker"], env, logs),
            Process("amqp-beat", ["-m", "cli", "beat"], env, logs),
            Process("amqp-api", ["-m", "cli", "api"], env, logs),
        ]
        engine = make_engine(normalize_database_url(database_url), pool_size=2)
        try:
            for process in processes:
                process.start()
            processes[0].wait_for_log("ready", timeout=60)
            wait_for_http(f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}/health", processes[2], 60)
            yield env, engine
        finally:
            for process in processes:
                process.stop()
            engine.dispose()


@pytest.mark.timeout(120)
def test_the_worker_consumes_its_partitions_from_rabbitmq(
    amqp_deployment: tuple[dict[str, str], Engine],
) -> None:
    env, _ = amqp_deployment
    assert env["LEDGERQ_BROKER_URL"].startswith("amqp://")
    wanted = {"ledgerq.control"} | {queue_for_partition(p) for p in range(8)}
    wait_until(
        lambda: list(active_partition_queues(env["LEDGERQ_BROKER_URL"]).values()) == [wanted],
        15,
        lambda: (
            f"celery inspect active_queues: {active_partition_queues(env['LEDGERQ_BROKER_URL'])}"
        ),
    )


@pytest.mark.timeout(120)
async def test_core_path_with_rabbitmq_as_broker(
    amqp_deployment: tuple[dict[str, str], Engine],
) -> None:
    env, engine = amqp_deployment
    base = f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}"
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:
        alice = await LedgerClient.register(http, "rabbit")
        main, savings = await alice.create_account(), await alice.create_account(kind="savings")

        await alice.deposit(main, "100.00")
        withdrawal = await alice.wait(
            await alice.submit_ok({"type": "withdrawal", "account_id": main, "amount": "25.50"})
        )
        assert withdrawal["status"] == "succeeded"
        transfer = await alice.wait(
            await alice.submit_ok(
                {"type": "transfer", "account_id": main, "to_account_id": savings, "amount": "10"}
            )
        )
        assert transfer["status"] == "succeeded"
        assert (await alice.balance(main), await alice.balance(savings)) == ("64.50", "10.00")

        # Concurrent withdrawals: 20 x 5.00 against 64.50, exactly 12 fit.
        body = {"type": "withdrawal", "account_id": main, "amount": "5.00"}
        responses = await asyncio.gather(*(alice.submit(body) for _ in range(20)))
        assert [r.status_code for r in responses] == [202] * 20
        results = await alice.wait_all([r.json()["id"] for r in responses], within=60)
        statuses = [r["status"] for r in results]
        assert statuses.count("succeeded") == 12
        assert {r["error"]["code"] for r in results if r["status"] == "failed"} == {
            "insufficient_funds"
        }
        assert await alice.balance(main) == "4.50"

        # Replay with the same key: the same operation, not a second one.
        replay_key = key()
        body = {"type": "deposit", "account_id": savings, "amount": "1.25"}
        first = await alice.submit(body, replay_key)
        assert first.status_code == 202
        await alice.wait(first.json()["id"])
        again = await alice.submit(body, replay_key)
        assert again.status_code == 200
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.json()["id"] == first.json()["id"]
        assert again.json()["status"] == "succeeded"
        assert await alice.balance(savings) == "11.25"
    assert_ledger_consistent(engine)
