"""Availability: the API across a PostgreSQL restart and outage, followers whose completion event
never comes, and the drain when Redis fails after a batch committed.

The restart tests run a deployment of their own on a private embedded PostgreSQL (its own port,
stopped and started by the test; the machine's server is never touched), a private Redis, one
worker and one API process.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import redis
import sqlalchemy as sa
import websockets
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from devserver import EmbeddedServer, free_port, start_postgres, start_redis
from tests.integration.isolated import (
    deployment_env,
    migrated_database,
    private_redis,
)
from tests.integration.support import (
    PASSWORD,
    TERMINAL,
    LedgerClient,
    Process,
    assert_ledger_consistent,
    entry_counts,
    insert_pending,
    wait_for_http,
    wait_terminal,
)
from tests.integration.test_events import sse_events
from worker.apply_loop import drain_partition
from worker.routing import partition_for
from worker.settings import Settings, normalize_database_url
from worker.store.db import make_engine
from worker.store.migrate import upgrade
from worker.store.queries import new_id
from worker.store.tables import accounts, users

pytestmark = pytest.mark.timeout(300)

DATABASE = "ledgerq_availability"


def _port(server: EmbeddedServer) -> int:
    return int(server.url.rsplit(":", 1)[1].split("/", 1)[0])


@dataclass
class Stack:
    """A deployment on a private PostgreSQL the test may stop and start."""

    pg: EmbeddedServer
    pg_dir: Path
    api_url: str
    api: Process
    worker: Process
    engine: Engine
    env: dict[str, str]

    def stop_postgres(self) -> None:
        self.pg.stop()

    def start_postgres(self) -> None:
        # The same port, as a restarted server (or its replacement behind a DNS name) would be.
        self.pg = start_postgres(self.pg_dir, port=_port(self.pg), database=DATABASE)

    def restart_postgres(self) -> None:
        """`pg_ctl restart -m fast`: every session is cut, the server is back at once."""
        self.stop_postgres()
        self.start_postgres()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("availability")
    pg_dir = tmp / "pg"
    pg = start_postgres(pg_dir, database=DATABASE)
    try:
        url = normalize_database_url(pg.url)
        upgrade(url)
        with private_redis(tmp / "redis") as redis_url:
            env = {
                **deployment_env(url, redis_url, tmp / "data"),
                "LEDGERQ_API_PORT": str(free_port()),
                "LEDGERQ_WORKER_METRICS_PORT": "0",
                "LEDGERQ_DB_POOL_SIZE": "8",
            }
            worker = Process("avail-worker", ["-m", "cli", "worker"], env, tmp)
            api = Process("avail-api", ["-m", "cli", "api"], env, tmp)
            engine = make_engine(url, pool_size=1)
            stack = Stack(
                pg, pg_dir, f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}", api, worker, engine, env
            )
            try:
                worker.start()
                api.start()
                wait_for_http(f"{stack.api_url}/health", api, timeout=60)
                worker.wait_for_log("ready", timeout=60)
                yield stack
            finally:
                api.stop()
                worker.stop()
                engine.dispose()
    finally:
        with contextlib.suppress(NameError):
            stack.pg.stop()
        pg.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=60) as http:
        yield http


def assert_unavailable(r: httpx.Response) -> None:
    """503 database_unavailable as an RFC 9457 problem, with Retry-After."""
    assert r.status_code == 503, (r.request.method, r.request.url.path, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    assert r.json()["code"] == "database_unavailable", r.text
    assert int(r.headers["Retry-After"]) >= 1


async def wait_final(user: LedgerClient, operation_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(12):
        r = await user.request(
            "GET", f"/api/v1/operations/{operation_id}", headers={"Prefer": "wait=10"}
        )
        assert r.status_code == 200, r.text
        body = dict(r.json())
        if body["status"] in TERMINAL:
            return body
    raise AssertionError(f"operation still {body.get('status')} after 120 s")


async def warm_pools(user: LedgerClient, account: str, http: httpx.AsyncClient) -> None:
    """Several connections in each of the API's pools (and the worker's), as under traffic."""
    reads = [user.request("GET", f"/api/v1/accounts/{account}") for _ in range(8)]
    lists = [user.request("GET", "/api/v1/operations", params={"limit": 5}) for _ in range(6)]
    probes = [http.get("/ready") for _ in range(3)]
    for r in await asyncio.gather(*reads, *lists, *probes):
        assert r.status_code == 200, r.text
    await user.deposit(account, "1.00")


async def first_requests_succeed(
    stack: Stack, http: httpx.AsyncClient, alice: LedgerClient, account: str
) -> None:
    """The first request of each kind after PostgreSQL is back: reads (the fast path and the
    autocommit pool), a token for credentials this process has not seen (the user lookup), a
    registration (a transaction), a submit that a worker applies, and readiness."""
    r = await alice.request("GET", f"/api/v1/accounts/{account}")
    assert r.status_code == 200, r.text
    r = await alice.request("GET", "/api/v1/operations", params={"limit": 5})
    assert r.status_code == 200, r.text
    newcomer = await LedgerClient.register(http, "after")
    r = await http.post("/api/v1/auth/token", auth=(newcomer.username, PASSWORD))
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    r = await http.get("/api/v1/accounts", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200, r.text
    r = await alice.submit(
        {"type": "deposit", "account_id": account, "amount": "2.00"}, **{"Prefer": "wait=10"}
    )
    assert r.status_code in (200, 202), r.text
    # The worker resumes on its own: the deposit is applied.
    assert (await wait_final(alice, r.json()["id"]))["status"] == "succeeded"
    r = await http.get("/ready")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["postgres"] == "ok"


async def test_first_requests_after_a_postgres_restart_succeed(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    """`pg_ctl restart -m fast` with no request in between: every pooled connection was cut, and
    none of them may answer a request (it used to: 500 AdminShutdown)."""
    alice = await LedgerClient.register(client, "alice")
    account = await alice.create_account()
    await warm_pools(alice, account, client)

    stack.restart_postgres()

    await first_requests_succeed(stack, client, alice, account)
    balance = await alice.balance(account)
    assert balance == "3.00", balance


async def test_outage_answers_503_with_retry_after_never_500_then_recovers(
    stack: Stack, client: httpx.AsyncClient
) -> None:
    alice = await LedgerClient.register(client, "alice")
    account = await alice.create_account()
    await warm_pools(alice, account, client)
    # Credentials the API has not verified yet: the login needs the users table.
    stranger = await LedgerClient.register(client, "stranger")
    operation = (await alice.request("GET", "/api/v1/operations", params={"limit": 1})).json()[
        "items"
    ][0]["id"]

    stack.stop_postgres()
    try:

        def attempts() -> list[Any]:
            return [
                alice.request("GET", f"/api/v1/accounts/{account}"),
                alice.request("GET", f"/api/v1/accounts/{account}/entries"),
                alice.request("GET", "/api/v1/accounts"),
                alice.request("GET", f"/api/v1/operations/{operation}"),
                alice.request(
                    "GET", f"/api/v1/operations/{operation}", headers={"Prefer": "wait=2"}
                ),
                alice.request("GET", "/api/v1/operations"),
                alice.submit({"type": "deposit", "account_id": account, "amount": "5.00"}),
                alice.request("DELETE", f"/api/v1/operations/{operation}"),
                client.post("/api/v1/auth/token", auth=(stranger.username, PASSWORD)),
                client.post(
                    "/api/v1/auth/register",
                    json={"username": f"x-{secrets.token_hex(4)}", "password": PASSWORD},
                ),
            ]

        # Twice: the first round meets the pools' broken connections, the second refused
        # connects; both answer 503, never 500.
        for _ in range(2):
            for r in await asyncio.gather(*attempts()):
                assert_unavailable(r)
        ready = await client.get("/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["status"] == "unavailable"
        assert ready.json()["checks"]["postgres"].startswith("error"), ready.text
        assert (await client.get("/health")).status_code == 200
    finally:
        stack.start_postgres()

    await first_requests_succeed(stack, client, alice, account)
    # Nothing refused during the outage was stored.
    assert await alice.balance(account) == "3.00"
    api_log = stack.api.log_text()
    assert "unhandled_error" not in api_log, api_log[-3000:]


def test_connections_stay_in_the_pools_bounds(stack: Stack) -> None:
    """LEDGERQ_DB_POOL_SIZE bounds every pool of a process: after the tests above, the API
    process holds at most that many connections, a worker process its share of it."""
    with stack.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT application_name, count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() GROUP BY application_name"
            )
        ).all()
    held = dict(rows)
    assert held.get("ledgerq-api", 0) <= int(stack.env["LEDGERQ_DB_POOL_SIZE"]), held
    assert held.get("ledgerq-api", 0) >= 1, held


# ----------------------------------------------------------------- Redis fails after a commit


def make_owner_and_account(engine: Engine) -> tuple[UUID, UUID]:
    user, account = new_id(), new_id()
    with engine.begin() as conn:
        conn.execute(
            sa.insert(users).values(id=user, username=f"u-{user}", password_hash="not-a-hash")
        )
        conn.execute(
            sa.insert(accounts).values(
                id=account, owner_id=user, name="main", kind="checking", currency="USD"
            )
        )
    return user, account


def test_drain_survives_redis_failing_after_the_commit_and_applies_once(
    server_urls: tuple[str, str],
    service_env: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis answers when the drain starts (it holds the bell) and is gone once the first batch
    has committed: publishing the completions and clearing the bell fail. The drain logs that and
    returns normally (it used to raise, and Celery logged the task "raised unexpected"); every
    operation is applied exactly once, and a second drain finds nothing to do."""
    from worker import tasks

    with migrated_database(server_urls[0], "ledgerq_drain") as url:
        engine = make_engine(normalize_database_url(url), pool_size=2)
        server = start_redis(tmp_path / "redis")
        client = redis.Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
        try:
            user, account = make_owner_and_account(engine)
            ids = insert_pending(engine, user, account, [100] * 40)
            partition = partition_for(account, 8)
            res = tasks.Resources(engine=engine, redis=client)
            monkeypatch.setattr(tasks, "resources", lambda: res)
            published: list[int] = []
            publish = tasks.publish_completions

            def publish_after_redis_died(client: redis.Redis, done: Any) -> None:
                if not published:
                    server.stop()  # the batch has committed; Redis dies before its events leave
                published.append(len(done))
                publish(client, done)

            monkeypatch.setattr(tasks, "publish_completions", publish_after_redis_died)
            applied = tasks._drain(partition)
            assert applied == 40
            assert sum(published) == 40
            statuses = wait_terminal(engine, ids, timeout=5)
            assert set(statuses.values()) == {"succeeded"}
            assert set(entry_counts(engine, ids).values()) == {2}
            # Delivered again (a redelivery, the sweeper): nothing left, nothing applied twice.
            assert tasks._drain(partition) == 0
            assert set(entry_counts(engine, ids).values()) == {2}
            assert_ledger_consistent(engine)
        finally:
            client.close()
            server.stop()
            engine.dispose()


# ----------------------------------------------------------------- followers without their event


@pytest.fixture(scope="module")
def quiet_api(
    server_urls: tuple[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    """An API process on a fresh database with no worker at all: operations are applied by the
    test, which publishes no completion event (as a worker whose Redis failed after the commit)."""
    tmp = tmp_path_factory.mktemp("quiet")
    with (
        private_redis(tmp / "redis") as redis_url,
        migrated_database(server_urls[0], "ledgerq_quiet") as url,
    ):
        env = {
            **deployment_env(url, redis_url, tmp / "data"),
            "LEDGERQ_API_PORT": str(free_port()),
            "LEDGERQ_DB_POOL_SIZE": "6",
            "LEDGERQ_FOLLOW_RECHECK": "1",
            "LEDGERQ_MAX_WAIT": "300",
        }
        api = Process("quiet-api", ["-m", "cli", "api"], env, tmp)
        engine = make_engine(normalize_database_url(url), pool_size=2)
        try:
            api.start()
            api_url = f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}"
            wait_for_http(f"{api_url}/health", api, timeout=60)
            yield api_url, engine
        finally:
            api.stop()
            engine.dispose()


def followers(api_url: str) -> dict[str, float]:
    text = httpx.get(f"{api_url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        if family.name == "ledgerq_followers":
            return {s.labels["kind"]: s.value for s in family.samples}
    raise AssertionError("no ledgerq_followers in /metrics")


async def test_followers_get_the_final_state_when_its_event_is_lost(
    quiet_api: tuple[str, Engine],
) -> None:
    """A `Prefer: wait=300` poll, a server-sent event stream and an account's WebSocket follow an
    operation that is applied without any completion event. Each still gets the final state
    (from PostgreSQL): the poll answers long before its 300 seconds (the client gives up after
    60), the stream sends the final event, the WebSocket the account with its new balance."""
    api_url, engine = quiet_api
    async with httpx.AsyncClient(base_url=api_url, timeout=60) as http:
        alice = await LedgerClient.register(http, "alice")
        account = await alice.create_account()
        [operation] = insert_pending(engine, alice.user_id, account, [700])
        url = f"/api/v1/operations/{operation}"

        async def poll() -> dict[str, Any]:
            r = await alice.request("GET", url, headers={"Prefer": "wait=300"})
            assert r.status_code == 200, r.text
            return dict(r.json())

        async def stream() -> list[dict[str, Any]]:
            seen: list[dict[str, Any]] = []
            async with http.stream("GET", f"{url}/events", auth=alice.auth) as response:
                assert response.status_code == 200
                async for event in sse_events(response):
                    seen.append(event["data"])
            return seen

        auth = base64.b64encode(f"{alice.username}:{PASSWORD}".encode()).decode()
        ws_url = api_url.replace("http://", "ws://") + f"/ws/accounts/{account}"
        async with websockets.connect(
            ws_url, additional_headers={"Authorization": f"Basic {auth}"}
        ) as ws:
            snapshot = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert (snapshot["type"], snapshot["account"]["balance"]) == ("account", "0.00")
            polled = asyncio.create_task(poll())
            streamed = asyncio.create_task(stream())
            for _ in range(300):  # until the poll and the stream are registered (30 s at most)
                if (await asyncio.to_thread(followers, api_url))["operation"] >= 2:
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"followers {followers(api_url)}")
            # Applied by a drain that publishes nothing: no follower hears of it from Redis.
            done = drain_partition(
                engine, partition_for(UUID(account), 8), 10, publish=lambda done: None
            )
            assert done.completed == 1
            assert (await polled)["status"] == "succeeded"
            events = await asyncio.wait_for(streamed, 60)
            assert [e["status"] for e in events] == ["pending", "succeeded"]
            update = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert update["type"] == "account", update
            assert update["account"]["balance"] == "7.00"
            assert update["account"]["id"] == account


# ----------------------------------------------------------------- the connection budget at start


def test_start_up_checks_the_pools_against_max_connections(stack: Stack, tmp_path: Path) -> None:
    """Each API process and each worker reads max_connections at start: the stack's fit (logged
    as connection_budget), an API whose pools could not (LEDGERQ_DB_POOL_SIZE 250 against this
    server's 200) says so, and so does a worker with more processes than slots."""
    from worker import tasks

    stack.api.wait_for_log("connection_budget", timeout=5)
    assert "connection_budget_exceeded" not in stack.api.log_text()
    assert "connection_budget" in stack.worker.log_text()
    assert "connection_budget_exceeded" not in stack.worker.log_text()

    env = {**stack.env, "LEDGERQ_API_PORT": str(free_port()), "LEDGERQ_DB_POOL_SIZE": "250"}
    greedy = Process("greedy-api", ["-m", "cli", "api"], env, tmp_path)
    greedy.start()
    try:
        wait_for_http(f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}/health", greedy, timeout=60)
        log = greedy.log_text()
        assert "connection_budget_exceeded" in log, log[-3000:]
        assert "max_connections=200" in log
        assert "1 API process(es) x LEDGERQ_DB_POOL_SIZE 250" in log
    finally:
        greedy.stop()

    settings = Settings.from_env({**stack.env, "LEDGERQ_DB_POOL_SIZE": "20"})
    assert tasks.check_connection_budget(settings, processes=1) is None
    warning = tasks.check_connection_budget(settings, processes=120)
    assert warning is not None and "240" in warning and "max_connections 200" in warning
