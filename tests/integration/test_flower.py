"""Flower shows the tasks of workers that send no task events by themselves: `ledgerq worker` runs
without -E (and worker_send_task_events is off), and `ledgerq flower` turns the workers' task
events on with Celery's enable_events control command.

Runs a deployment of its own (private Redis as broker, its own database): Flower's enable_events
reaches every worker on its broker and stays on, so it must not reach the session's worker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from celery import Celery

from devserver import free_port
from tests.integration.isolated import deployment_env, migrated_database, private_redis
from tests.integration.support import Process, wait_for_http
from worker.routing import DRAIN_TASK, queue_for_partition

PARTITIONS = 8
# Not a timing assertion: how long to wait for Flower to show a task before calling it a failure.
DEADLINE = 60.0
# A drain task is sent again this often while Flower shows none, in case one raced Flower's
# event receiver binding its queue.
RESEND_EVERY = 3.0


@pytest.fixture
def deployment(server_urls: tuple[str, str], tmp_path: Path) -> Iterator[dict[str, str]]:
    with (
        private_redis(tmp_path / "redis") as redis_url,
        migrated_database(server_urls[0], "ledgerq_flower") as database_url,
    ):
        yield deployment_env(database_url, redis_url, tmp_path / "data")


def _command_line(process: Process) -> list[str]:
    """The process's argv as the kernel has it: `ledgerq worker` has exec'd into celery by now."""
    assert process.proc is not None
    raw = Path(f"/proc/{process.proc.pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0") if part]


def _drains_shown(flower_url: str) -> list[dict[str, object]]:
    r = httpx.get(f"{flower_url}/api/tasks", params={"taskname": DRAIN_TASK}, timeout=10)
    assert r.status_code == 200, r.text
    return [t for t in r.json().values() if t["name"] == DRAIN_TASK and t["state"] == "SUCCESS"]


@pytest.mark.timeout(150)
def test_flower_turns_on_task_events_and_shows_the_tasks(
    deployment: dict[str, str], tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    worker = Process("worker", ["-m", "cli", "worker"], deployment, logs)
    port = free_port()
    flower_env = {
        **deployment,
        "LEDGERQ_FLOWER_HOST": "127.0.0.1",
        "LEDGERQ_FLOWER_PORT": str(port),
        # Flower 2 answers its JSON API only with a login configured or this set.
        "FLOWER_UNAUTHENTICATED_API": "true",
    }
    flower = Process("flower", ["-m", "cli", "flower"], flower_env, logs)
    flower_url = f"http://127.0.0.1:{port}"
    probe = Celery("ledgerq-flower-probe", broker=deployment["LEDGERQ_BROKER_URL"])
    try:
        worker.start()
        worker.wait_for_log("ready", timeout=60)
        argv = _command_line(worker)
        assert "celery" in argv and "worker" in argv and "-Q" in argv, argv
        assert "-E" not in argv and "--task-events" not in argv, argv

        flower.start()
        wait_for_http(f"{flower_url}/healthcheck", flower, timeout=60)
        # Celery logs this only when the worker had task events off and a remote command turned
        # them on: Flower's enable_events broadcast.
        worker.wait_for_log("Events of group {task} enabled by remote", timeout=DEADLINE)

        deadline = time.monotonic() + DEADLINE
        sent: list[str] = []
        shown: list[dict[str, object]] = []
        next_send = 0.0
        while not shown:
            worker.assert_alive()
            flower.assert_alive()
            now = time.monotonic()
            if now > deadline:
                raise AssertionError(
                    f"Flower showed no {DRAIN_TASK} within {DEADLINE:.0f}s of {len(sent)} sent\n"
                    f"flower log:\n{flower.log_text()[-3000:]}\n"
                    f"worker log:\n{worker.log_text()[-3000:]}"
                )
            if now >= next_send:
                partition = len(sent) % PARTITIONS
                result = probe.send_task(
                    DRAIN_TASK, args=[partition], queue=queue_for_partition(partition)
                )
                sent.append(result.id)
                next_send = now + RESEND_EVERY
            time.sleep(0.2)
            shown = [t for t in _drains_shown(flower_url) if t["uuid"] in sent]
        assert worker.proc is not None
        assert str(shown[0]["worker"]).startswith(f"ledgerq-auto-{worker.proc.pid}@"), shown
    finally:
        probe.close()
        flower.stop()
        worker.stop()
