"""`ledgerq api` under granian (LEDGERQ_API_SERVER=granian) does what it does under uvicorn: several
worker processes, the request edge, the app's lifespan, proxy headers, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from devserver import free_port
from tests.integration.support import (
    LedgerClient,
    Process,
    failed_login_addresses,
    insert_pending,
    wait_for_http,
)

# Well past what a clean stop takes, well short of granian's --workers-kill-timeout (40 s).
STOP_DEADLINE = 20


@pytest.fixture
def granian_api(
    service_env: dict[str, str], logs_dir: Path, worker: Process, beat: Process
) -> Iterator[tuple[Process, str]]:
    port = free_port()
    env = {
        **service_env,
        "LEDGERQ_API_SERVER": "granian",
        "LEDGERQ_API_WORKERS": "2",
        "LEDGERQ_API_PORT": str(port),
        # Proxy headers are believed from 127.0.0.1 only (none are by default: test_access.py).
        "LEDGERQ_TRUSTED_PROXIES": "127.0.0.1",
    }
    process = Process(f"api-granian-{port}", ["-m", "cli", "api"], env, logs_dir)
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.stop()


def abandoned_sessions(engine: Engine) -> int:
    """Connections to the test database that ended without a goodbye (their process died)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text(
                    "SELECT sessions_abandoned FROM pg_stat_database "
                    "WHERE datname = current_database()"
                )
            ).scalar_one()
        )


def stop_group(process: Process) -> int:
    """SIGTERM to the whole process group (as a terminal or a container runtime may send it);
    the exit status, which must come before STOP_DEADLINE."""
    assert process.proc is not None
    started = time.monotonic()
    os.killpg(process.proc.pid, signal.SIGTERM)
    try:
        code = process.proc.wait(STOP_DEADLINE)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running {STOP_DEADLINE}s after SIGTERM:\n{process.log_text()[-3000:]}"
        ) from None
    assert time.monotonic() - started < STOP_DEADLINE
    return code


async def test_granian_serves_the_api_and_stops_gracefully(
    granian_api: tuple[Process, str], service_env: dict[str, str], engine: Engine
) -> None:
    process, url = granian_api
    abandoned_before = abandoned_sessions(engine)
    process.start()
    wait_for_http(f"{url}/health", process, timeout=60)

    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        # granian answers, not uvicorn, through the request edge (X-Request-ID), errors included.
        r = await http.get("/health", headers={"X-Request-ID": "granian-edge-1"})
        assert r.status_code == 200
        assert r.headers["server"] == "granian"
        assert r.headers["X-Request-ID"] == "granian-edge-1"
        r = await http.get("/no/such/path", headers={"X-Request-ID": "granian-edge-2"})
        assert (r.status_code, r.headers["X-Request-ID"]) == (404, "granian-edge-2")

        # The lifespan started the app's services: a submit is stored, rung and applied.
        alice = await LedgerClient.register(http, "granian")
        account = await alice.create_account()
        applied = await alice.deposit(account, "12.50")
        assert applied["status"] == "succeeded"
        assert await alice.balance(account) == "12.50"

        # Proxy headers as uvicorn reads them: X-Forwarded-For believed from the trusted proxy
        # 127.0.0.1 (its port dropped), not from another address. The failed-login limiter counts by that address.
        trusted = f"203.0.113.{secrets.randbelow(250) + 1}"
        r = await http.get(
            "/api/v1/accounts",
            auth=(alice.username, "wrong-password"),
            headers={"X-Forwarded-For": f"{trusted}:4567", "X-Forwarded-Proto": "https"},
        )
        assert r.status_code == 401
        untrusted = f"198.51.100.{secrets.randbelow(250) + 1}"
        other = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
        async with httpx.AsyncClient(base_url=url, timeout=30, transport=other) as outsider:
            r = await outsider.get(
                "/api/v1/accounts",
                auth=(alice.username, "wrong-password"),
                headers={"X-Forwarded-For": untrusted},
            )
            assert r.status_code == 401
        addresses = failed_login_addresses(service_env["LEDGERQ_REDIS_URL"])
        assert trusted in addresses and "127.0.0.2" in addresses
        assert f"{trusted}:4567" not in addresses and untrusted not in addresses

        # Graceful shutdown: a request running when SIGTERM comes still gets its answer. An
        # operation stored without a doorbell stays pending until the sweeper rings (2-3 s).
        [pending] = insert_pending(engine, alice.user_id, account, [100])
        poll = asyncio.create_task(
            alice.request("GET", f"/api/v1/operations/{pending}", headers={"Prefer": "wait=10"})
        )
        await asyncio.sleep(0.5)
        assert not poll.done()
        code = await asyncio.to_thread(stop_group, process)
        answer = await poll
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] in ("pending", "succeeded")

    log = process.log_text()
    assert code == 0, log[-3000:]
    assert "Killing worker" not in log and "Unexpected exit" not in log
    assert "Granian shutdown completed" in log
    # Each worker's lifespan shutdown closed its connection pools: had a worker been killed, its
    # PostgreSQL connections would count as abandoned.
    await asyncio.sleep(0.5)
    assert abandoned_sessions(engine) == abandoned_before


def test_granian_stops_promptly_when_told_while_starting(
    granian_api: tuple[Process, str],
) -> None:
    process, _ = granian_api
    process.start()
    # granian's parent is up and has forked the workers, which take seconds to import the app.
    process.wait_for_log("Spawning worker-2", timeout=30)
    assert stop_group(process) == 0, process.log_text()[-3000:]
    assert "Killing worker" not in process.log_text()
