"""A whole ledgerq of its own: private PostgreSQL and Redis, migrations, API, two workers, beat.

The servers are private (embedded, on ports of their own) because the suite restarts and kills
them; the machine's PostgreSQL and Redis, which other tests use, are never touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from devserver import EmbeddedServer, free_port, start_postgres, start_redis
from tests.integration.support import Process
from worker.store.migrate import upgrade


@dataclass
class Stack:
    root: Path
    # Pending operations per partition above which submits answer 503 (the backpressure scenario).
    max_backlog: int = 400
    api_workers: int = 2
    pg: EmbeddedServer | None = None
    redis: EmbeddedServer | None = None
    pg_port: int = 0
    redis_port: int = 0
    api_port: int = 0
    env: dict[str, str] = field(default_factory=dict)
    api: Process | None = None
    workers: list[Process] = field(default_factory=list)
    beat: Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def database_url(self) -> str:
        assert self.pg is not None
        return self.pg.url

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "logs").mkdir(exist_ok=True)
        self.pg_port, self.redis_port, self.api_port = free_port(), free_port(), free_port()
        self.pg = start_postgres(self.root / "pg", port=self.pg_port, database="ledgerq")
        self.redis = start_redis(self.root / "redis", port=self.redis_port)
        upgrade(self.pg.url)
        self.env = {
            **os.environ,
            "LEDGERQ_DATABASE_URL": self.pg.url,
            "LEDGERQ_REDIS_URL": self.redis.url,
            "LEDGERQ_BROKER_URL": self.redis.url,
            "LEDGERQ_PARTITIONS": "8",
            "LEDGERQ_SWEEP_INTERVAL": "1",
            "LEDGERQ_SWEEP_AGE": "2",
            "LEDGERQ_MAX_BACKLOG": str(self.max_backlog),
            "LEDGERQ_RATE_LIMIT": "0",
            "LEDGERQ_API_HOST": "127.0.0.1",
            "LEDGERQ_API_PORT": str(self.api_port),
            "LEDGERQ_API_WORKERS": str(self.api_workers),
            "LEDGERQ_WORKER_METRICS_PORT": "0",
            "LEDGERQ_LOG_LEVEL": "WARNING",
            "LEDGERQ_DATA_DIR": str(self.root / "data"),
            "LEDGERQ_SECRET_KEY": secrets.token_urlsafe(32),
            "LEDGERQ_MASTER_KEY": secrets.token_urlsafe(32),
        }
        logs = self.root / "logs"
        self.api = Process("api", ["-m", "cli", "api"], self.env, logs)
        self.workers = [
            Process(f"worker-{i}", ["-m", "cli", "worker"], self.env, logs) for i in range(2)
        ]
        self.beat = Process("beat", ["-m", "cli", "beat"], self.env, logs)
        for child in (self.api, *self.workers, self.beat):
            child.start()
        self.wait_api()

    def wait_api(self, timeout: float = 60) -> None:
        assert self.api is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.api.assert_alive()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(
            f"the API did not answer in {timeout}s:\n{self.api.log_text()[-3000:]}"
        )

    def stop(self) -> None:
        for child in (self.api, *self.workers, self.beat):
            if child is not None:
                child.stop()
        for server in (self.redis, self.pg):
            if server is not None:
                server.stop()

    # ------------------------------------------------------------------ the faults

    def kill_worker(self, index: int = 0) -> None:
        self.workers[index].kill()

    def start_worker(self, index: int = 0) -> None:
        self.workers[index].start()

    def kill_redis(self) -> None:
        assert self.redis is not None
        os.kill(self.redis.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(self.redis.pid):
            time.sleep(0.05)

    def start_redis_empty(self) -> None:
        """Start Redis again on its port with nothing: no queued messages, bells or leases."""
        data = self.root / "redis"
        shutil.rmtree(data, ignore_errors=True)
        self.redis = start_redis(data, port=self.redis_port)

    def stop_postgres(self) -> None:
        assert self.pg is not None
        self.pg.stop()  # a fast shutdown: sessions are cut, as by `pg_ctl restart -m fast`

    def start_postgres(self) -> None:
        self.pg = start_postgres(self.root / "pg", port=self.pg_port, database="ledgerq")

    def kill_api(self) -> None:
        assert self.api is not None
        self.api.kill()

    def start_api(self) -> None:
        assert self.api is not None
        self.api.start()
        self.wait_api()

    def stop_workers(self) -> None:
        for worker in self.workers:
            worker.stop()

    def start_workers(self) -> None:
        for worker in self.workers:
            worker.start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
