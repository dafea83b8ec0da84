"""A deployment of its own for tests that run several workers, Procfiles or another broker.

The session's worker leases partitions in the session's Redis; a test that starts workers of its own
must not share that Redis (broker and leases) or that database with it, or the two sets of
workers would compete. So: a private embedded Redis and a fresh database, migrated to head.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import redis
from celery import Celery
from psycopg import sql

from devserver import start_redis
from worker.leases import lease_key
from worker.store.migrate import upgrade


@contextlib.contextmanager
def fresh_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new database on the test server, migrated to head; dropped afterwards. Plain URL."""
    server_url = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"{prefix}_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{server_url.rpartition('/')[0]}/{name}"
    try:
        yield url
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@contextlib.contextmanager
def migrated_database(server_url: str, prefix: str) -> Iterator[str]:
    with fresh_database(server_url, prefix) as url:
        upgrade(url)
        yield url


@contextlib.contextmanager
def private_redis(data_dir: Path) -> Iterator[str]:
    server = start_redis(data_dir)
    try:
        yield server.url
    finally:
        server.stop()


def deployment_env(
    database_url: str, redis_url: str, data_dir: Path, broker_url: str | None = None
) -> dict[str, str]:
    """Every variable the processes need, overriding whatever the session put in os.environ."""
    return {
        "LEDGERQ_DATABASE_URL": database_url,
        "LEDGERQ_REDIS_URL": redis_url,
        "LEDGERQ_BROKER_URL": broker_url or redis_url,
        "LEDGERQ_PARTITIONS": "8",
        "LEDGERQ_WORKER_PARTITIONS": "auto",
        "LEDGERQ_SWEEP_INTERVAL": "1",
        "LEDGERQ_SWEEP_AGE": "2",
        "LEDGERQ_DATA_DIR": str(data_dir),
        "LEDGERQ_LOG_LEVEL": "INFO",
        "LEDGERQ_API_HOST": "127.0.0.1",
        "LEDGERQ_SECRET_KEY": secrets.token_urlsafe(32),
        "LEDGERQ_RATE_LIMIT": "1000000",
        "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS": "100000",
        "PYTHONUNBUFFERED": "1",
    }


def lease_holders(redis_url: str, partitions: int = 8) -> dict[int, str | None]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        values = client.mget([lease_key(p) for p in range(partitions)])
    finally:
        client.close()
    return dict(enumerate(values))


def active_partition_queues(broker_url: str, timeout: float = 1.5) -> dict[str, set[str]]:
    """`celery inspect active_queues`: worker name -> the queues it consumes right now."""
    probe = Celery("ledgerq-probe", broker=broker_url)
    try:
        replies = probe.control.inspect(timeout=timeout).active_queues() or {}
    finally:
        probe.close()
    return {worker: {q["name"] for q in queues} for worker, queues in replies.items()}


def wait_until(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]) -> float:
    """Poll until predicate() holds; returns the seconds it took, or fails saying what was seen."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout}s: {what()}")
        time.sleep(0.1)
    return time.monotonic() - started


# --------------------------------------------------------------------------- process trees


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) for every process we can see."""
    found: dict[int, tuple[int, int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
            found[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return found


def descendants(root: int) -> set[int]:
    procs = processes()
    family: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - family
        family |= frontier
    return family


def live(pids: set[int]) -> list[int]:
    """Those still running (a zombie runs no code; where pid 1 does not reap, some linger)."""
    procs = processes()
    return sorted(pid for pid in pids if pid in procs and procs[pid][2] != "Z")


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
