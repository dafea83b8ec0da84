"""Integration fixtures: real PostgreSQL, Redis, Celery worker, beat and API processes.

Servers come from LEDGERQ_TEST_DATABASE_URL / LEDGERQ_TEST_REDIS_URL when set (CI points them at
the machine's services); otherwise the same embedded servers as `ledgerq dev` are started. Each
session gets its own database, migrated from empty with Alembic.

The suite runs in parallel processes (pytest-xdist, `-n` in pyproject.toml; a test file stays in
one process): each process is a session of its own, with its own database, its own Redis
database (the given one, then the ones below it: /15, /14, ...) and its own embedded servers.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import Engine

from devserver import EmbeddedServer, free_port, start_postgres, start_redis
from tests.integration.devrun import run_processes
from tests.integration.isolated import kill_all
from tests.integration.support import LedgerClient, Process, wait_for_http
from worker.settings import get_settings, normalize_database_url
from worker.store.db import make_engine
from worker.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[2]
# "gw0", "gw1", ... in a process of pytest-xdist; empty in a run without it (-p no:xdist, -n 0).
XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
EMBEDDED_DIR = ROOT / ".ledgerq" / "test" / (XDIST_WORKER or "main")


def own_redis_database(url: str) -> str:
    """The given Redis URL for the first (or only) test process, the databases below its own for
    the others: parallel sessions never see each other's queues, bells or leases."""
    index = int(XDIST_WORKER[2:]) if XDIST_WORKER.startswith("gw") else 0
    parts = urlsplit(url)
    given = int(parts.path.strip("/") or 0)
    return urlunsplit(parts._replace(path=f"/{(given - index) % 16}"))


def _plain(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """(postgres server URL, redis URL): given by the environment or embedded."""
    started: list[EmbeddedServer] = []
    pg_url = os.environ.get("LEDGERQ_TEST_DATABASE_URL")
    redis_url = os.environ.get("LEDGERQ_TEST_REDIS_URL")
    if not pg_url:
        EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
        server = start_postgres(EMBEDDED_DIR / "postgres", database="postgres")
        started.append(server)
        pg_url = server.url
    if not redis_url:
        EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
        server = start_redis(EMBEDDED_DIR / "redis")
        started.append(server)
        redis_url = server.url
    yield pg_url, own_redis_database(redis_url)
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def database_url(server_urls: tuple[str, str]) -> Iterator[str]:
    """A fresh database for this session on the test server, migrated to head."""
    server_url = _plain(server_urls[0])
    name = f"ledgerq_test_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    base, _, _ = server_url.rpartition("/")
    url = normalize_database_url(f"{base}/{name}")
    upgrade(url)
    yield url
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    url = server_urls[1]
    # The test Redis belongs to the tests: start without queued messages or bells of an earlier run.
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def service_env(
    database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment for every process of the system under test (and for this process)."""
    env = {
        "LEDGERQ_DATABASE_URL": database_url,
        "LEDGERQ_REDIS_URL": redis_url,
        "LEDGERQ_BROKER_URL": os.environ.get("LEDGERQ_TEST_BROKER_URL", redis_url),
        "LEDGERQ_PARTITIONS": "8",
        "LEDGERQ_SWEEP_INTERVAL": "1",
        "LEDGERQ_SWEEP_AGE": "2",
        "LEDGERQ_DATA_DIR": str(tmp_path_factory.mktemp("ledgerq-data")),
        "LEDGERQ_LOG_LEVEL": "INFO",
        "LEDGERQ_API_HOST": "127.0.0.1",
        "LEDGERQ_SECRET_KEY": secrets.token_urlsafe(32),
        "LEDGERQ_MASTER_KEY": secrets.token_urlsafe(32),
        # The suite sends hundreds of requests per user and every failed login comes from
        # 127.0.0.1: the limits themselves are tested on API processes of their own.
        "LEDGERQ_RATE_LIMIT": "1000000",
        "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
    }
    os.environ.update(env)
    get_settings.cache_clear()
    return env


@pytest.fixture(scope="session")
def engine(service_env: dict[str, str]) -> Iterator[Engine]:
    engine = make_engine(service_env["LEDGERQ_DATABASE_URL"], pool_size=4)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def worker(service_env: dict[str, str], logs_dir: Path) -> Iterator[Process]:
    """One real Celery worker process owning every partition, as `ledgerq worker` starts it."""
    process = Process("worker", ["-m", "cli", "worker"], service_env, logs_dir)
    process.start()
    process.wait_for_log("ready", timeout=60)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def beat(service_env: dict[str, str], logs_dir: Path) -> Iterator[Process]:
    process = Process("beat", ["-m", "cli", "beat"], service_env, logs_dir)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def api_url(
    service_env: dict[str, str], logs_dir: Path, worker: Process, beat: Process
) -> Iterator[str]:
    """A real API process (uvicorn), with the worker and beat running behind it."""
    port = free_port()
    env = {**service_env, "LEDGERQ_API_PORT": str(port)}
    process = Process("api", ["-m", "cli", "api"], env, logs_dir)
    process.start()
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process, timeout=60)
    yield url
    process.stop()


@pytest.fixture
async def http(api_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
    async with httpx.AsyncClient(base_url=api_url, timeout=60, limits=limits) as client:
        yield client


@pytest.fixture
async def alice(http: httpx.AsyncClient) -> LedgerClient:
    return await LedgerClient.register(http, "alice")


@pytest.fixture
async def bob(http: httpx.AsyncClient) -> LedgerClient:
    return await LedgerClient.register(http, "bob")


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A `ledgerq dev` run's data folder (tests/integration/devrun.py); whatever of its runs a
    failing test leaves is killed afterwards."""
    path = tmp_path / "data"
    try:
        yield path
    finally:
        kill_all(run_processes(path))
