"""Embedded PostgreSQL and Valkey start, keep their data across restarts, and stop cleanly."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psycopg
import pytest
import redis

from devserver import EmbeddedServer, free_port, start_postgres, start_redis

pytestmark = pytest.mark.timeout(60)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        # A zombie is as good as gone: it holds no port and no files.
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state != "Z"


def _assert_gone(server: EmbeddedServer) -> None:
    deadline = time.monotonic() + 5
    while _alive(server.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(server.pid), f"{server.name} pid {server.pid} still running after stop()"


def _pg_connect(server: EmbeddedServer) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(server.url.replace("postgresql+psycopg://", "postgresql://"))


def test_postgres_survives_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "pg"
    server = start_postgres(data_dir)
    try:
        assert server.name == "postgres"
        assert server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
        assert server.url.endswith("/ledgerq")
        assert (data_dir / "PG_VERSION").exists()
        with _pg_connect(server) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            assert conn.execute("show max_connections").fetchone() == ("200",)
            conn.execute("create table entries (id int primary key, amount numeric not null)")
            conn.execute("insert into entries values (1, 12.34)")
        # A second start on a live data dir reuses the running server, and says it did not start it.
        again = start_postgres(data_dir)
        assert (again.pid, again.url) == (server.pid, server.url)
        assert server.started and not again.started
    finally:
        server.stop()
    _assert_gone(server)
    server.stop()  # idempotent

    port = free_port()
    restarted = start_postgres(data_dir, port=port)
    try:
        assert restarted.pid != server.pid
        assert f"127.0.0.1:{port}/" in restarted.url
        with _pg_connect(restarted) as conn:
            row = conn.execute("select id, amount::text from entries").fetchall()
        assert row == [(1, "12.34")]
    finally:
        restarted.stop()
    _assert_gone(restarted)


def test_redis_survives_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "redis"
    server = start_redis(data_dir)
    try:
        assert server.name == "redis"
        assert server.url.startswith("redis://127.0.0.1:")
        assert server.url.endswith("/0")
        client = redis.Redis.from_url(server.url)
        client.set("ledgerq:test", "kept")
        assert client.get("ledgerq:test") == b"kept"
        client.close()
        again = start_redis(data_dir)
        assert (again.pid, again.url) == (server.pid, server.url)
        assert server.started and not again.started
    finally:
        server.stop()
    _assert_gone(server)
    server.stop()  # idempotent

    restarted = start_redis(data_dir)
    try:
        assert restarted.pid != server.pid
        client = redis.Redis.from_url(restarted.url)
        assert client.get("ledgerq:test") == b"kept"
        client.close()
    finally:
        restarted.stop()
    _assert_gone(restarted)
