"""The Procfile under honcho: release migrates, then web, two workers, the webhook dispatcher, beat
and Flower run against PostgreSQL and Redis, apply operations submitted over HTTP, and all stop
cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devserver import free_port
from tests.integration.isolated import (
    deployment_env,
    descendants,
    fresh_database,
    kill_all,
    lease_holders,
    live,
    private_redis,
    wait_until,
)
from tests.integration.support import LedgerClient
from worker.store import migrate

ROOT = Path(__file__).resolve().parents[2]
FLOWER_LOGIN = ("ops", "flower-password")


@pytest.fixture
def procfile_env(server_urls: tuple[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    with (
        private_redis(tmp_path / "redis") as redis_url,
        fresh_database(server_urls[0], "ledgerq_procfile") as database_url,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERQ_")}
        env.update(deployment_env(database_url, redis_url, tmp_path / "data"))
        env.update(
            LEDGERQ_API_PORT=str(free_port()),
            LEDGERQ_FLOWER_PORT=str(free_port()),
            # As docs/operating.md advises before exposing Flower; it also opens Flower's JSON API.
            FLOWER_BASIC_AUTH=":".join(FLOWER_LOGIN),
            # The Procfile names `ledgerq`: the project's console script, in this interpreter's bin.
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        yield env


def _honcho(*args: str, env_file: Path) -> list[str]:
    # An empty env file of our own: a developer's .env in the repository must not leak in.
    return [
        sys.executable, "-m", "honcho", "-f", str(ROOT / "Procfile"), "-d", str(ROOT),
        "-e", str(env_file), *args,
    ]  # fmt: skip


async def _transfers_in_a_ring(api: str) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        alice = await LedgerClient.register(http, "procfile")
        accounts = [await alice.create_account() for _ in range(4)]
        await asyncio.gather(*(alice.deposit(a, "50.00") for a in accounts))
        ops = [
            await alice.submit_ok(
                {
                    "type": "transfer",
                    "account_id": accounts[i],
                    "to_account_id": accounts[(i + 1) % 4],
                    "amount": "20.00",
                }
            )
            for i in range(4)
        ]
        results = await alice.wait_all(ops, within=30)
        assert {r["status"] for r in results} == {"succeeded"}
        assert [await alice.balance(a) for a in accounts] == ["50.00"] * 4


def events_enabled(honcho_output: str) -> set[str]:
    """Process names (`worker.1`) whose worker logged that a remote command enabled task events."""
    return {
        line.split("|", 1)[0].split()[-1]
        for line in honcho_output.splitlines()
        if "Events of group {task} enabled by remote" in line and "|" in line
    }


@pytest.mark.timeout(150)
def test_procfile_runs_the_service_and_stops_cleanly(
    procfile_env: dict[str, str], tmp_path: Path
) -> None:
    env = procfile_env
    env_file = tmp_path / "empty.env"
    env_file.write_text("")

    release = subprocess.run(
        _honcho("start", "release", env_file=env_file),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert release.returncode == 0, release.stdout + release.stderr
    assert migrate.current_revision(env["LEDGERQ_DATABASE_URL"]) == migrate.head_revision()

    log_path = tmp_path / "honcho.log"
    with log_path.open("wb") as log:
        honcho = subprocess.Popen(
            _honcho(
                "start",
                "-c",
                "worker=2",
                "web",
                "worker",
                "dispatcher",
                "beat",
                "flower",
                env_file=env_file,
            ),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    family: set[int] = set()
    api = f"http://127.0.0.1:{env['LEDGERQ_API_PORT']}"
    flower = f"http://127.0.0.1:{env['LEDGERQ_FLOWER_PORT']}"

    def output() -> str:
        return log_path.read_text(errors="replace")[-4000:]

    def answers(url: str) -> bool:
        assert honcho.poll() is None, f"honcho exited early:\n{output()}"
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(lambda: answers(f"{api}/health"), 60, output)
        wait_until(lambda: answers(f"{flower}/healthcheck"), 60, output)
        # Workers send no task events until Flower asks (every 5 s from its start): wait until
        # both obeyed, or the drains below could run unseen by Flower.
        both = {"worker.1", "worker.2"}
        wait_until(lambda: events_enabled(log_path.read_text(errors="replace")) >= both, 60, output)
        # The two workers of the Procfile share the partitions by leases.
        redis_url = env["LEDGERQ_REDIS_URL"]
        wait_until(
            lambda: sorted(Counter(lease_holders(redis_url).values()).values()) == [4, 4],
            30,
            lambda: f"leases {lease_holders(redis_url)}\n{output()}",
        )

        asyncio.run(_transfers_in_a_ring(api))

        # Flower asks the workers (celery inspect) and follows their task events.
        assert httpx.get(f"{flower}/api/workers", timeout=10).status_code == 401
        workers = httpx.get(f"{flower}/api/workers?refresh=1", auth=FLOWER_LOGIN, timeout=20)
        assert workers.status_code == 200, workers.text
        consumed = {
            name: {q["name"] for q in info.get("active_queues") or []}
            for name, info in workers.json().items()
        }
        # The dispatcher consumes the webhook queue, and nothing else; the workers never it.
        dispatchers = [n for n, queues in consumed.items() if n.startswith("ledgerq-dispatcher-")]
        assert len(dispatchers) == 1, consumed
        assert consumed.pop(dispatchers[0]) == {"ledgerq.webhooks"}
        assert len(consumed) == 2, consumed
        partition_queues = [names - {"ledgerq.control"} for names in consumed.values()]
        assert [len(q) for q in partition_queues] == [4, 4], consumed
        assert set().union(*partition_queues) == {f"ledgerq.p{p}" for p in range(8)}

        def drains_seen() -> bool:
            tasks = httpx.get(f"{flower}/api/tasks", auth=FLOWER_LOGIN, timeout=10).json()
            return any(
                t["name"] == "ledgerq.drain_partition" and t["state"] == "SUCCESS"
                for t in tasks.values()
            )

        wait_until(drains_seen, 15, lambda: "Flower saw no successful drain task event")

        family = descendants(honcho.pid)
        assert len(family) >= 6, family

        honcho.send_signal(signal.SIGTERM)
        returncode = honcho.wait(30)
        assert returncode in (0, 143), f"honcho exited {returncode}:\n{output()}"
        text = log_path.read_text(errors="replace")
        for name in ("web.1", "worker.1", "worker.2", "dispatcher.1", "beat.1", "flower.1"):
            assert f"{name} stopped" in text, text[-4000:]
        # Children exit with honcho; pool processes may take a moment after their parent.
        wait_until(lambda: live(family) == [], 10, lambda: f"still running: {live(family)}")
        # The workers stopped warmly: they gave their leases back instead of letting them expire.
        assert set(lease_holders(redis_url).values()) == {None}
    finally:
        if honcho.poll() is None:
            family |= descendants(honcho.pid)
            honcho.kill()
            honcho.wait()
        kill_all(set(live(family)))
