"""The `ledgerq` command: config listing, migrations up and down, child command lines, `ledgerq dev`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.settings import VARIABLES, Settings
from cli.main import api_command, beat_command, worker_command
from devserver import free_port
from tests.integration.devrun import Dev
from tests.integration.isolated import descendants, fresh_database, processes
from worker.store import migrate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def dev_redis_url(server_urls: tuple[str, str]) -> str:
    """A Redis database of its own, so a running `ledgerq dev` never eats the pipeline tests' doorbells."""
    return server_urls[1].rpartition("/")[0] + "/14"


@pytest.fixture
def throwaway_database(server_urls: tuple[str, str]) -> Iterator[str]:
    """A new, empty database on the test server (plain postgresql:// URL), dropped afterwards."""
    with fresh_database(server_urls[0], "ledgerq_cli") as url:
        yield url


def _clean_env(**overrides: str) -> dict[str, str]:
    """This process's environment without LEDGERQ_* (other fixtures set some), plus overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERQ_")}
    return {**env, "PYTHONUNBUFFERED": "1", **overrides}


def _ledgerq(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------- config


def test_config_lists_every_variable_and_hides_passwords() -> None:
    env = _clean_env(
        LEDGERQ_DATABASE_URL="postgresql://ledger:s3cret-pw@db.internal:5432/ledgerq",
        LEDGERQ_REDIS_URL="redis://:r3dis-pw@cache.internal:6379/0",
        LEDGERQ_PARTITIONS="16",
        COLUMNS="200",
    )
    result = _ledgerq("config", env=env)
    assert result.returncode == 0, result.stderr
    for var in VARIABLES:
        assert var.name in result.stdout
    assert "s3cret-pw" not in result.stdout
    assert "r3dis-pw" not in result.stdout
    assert "postgresql://ledger:***@db.internal:5432/ledgerq" in result.stdout
    assert "16" in result.stdout


def test_config_names_a_bad_variable() -> None:
    env = _clean_env(
        LEDGERQ_DATABASE_URL="postgresql://postgres@127.0.0.1/x",
        LEDGERQ_REDIS_URL="redis://127.0.0.1:6379/0",
        LEDGERQ_API_PORT="eighty",
    )
    result = _ledgerq("config", env=env)
    assert result.returncode == 1
    assert "LEDGERQ_API_PORT" in result.stderr


# --------------------------------------------------------------------------- migrations


def test_migrate_command_upgrades_and_downgrades(throwaway_database: str) -> None:
    env = _clean_env(LEDGERQ_DATABASE_URL=throwaway_database)
    up = _ledgerq("migrate", env=env)
    assert up.returncode == 0, up.stderr
    assert migrate.current_revision(throwaway_database) == migrate.head_revision()

    down = _ledgerq("migrate", "--downgrade", "base", env=env)
    assert down.returncode == 0, down.stderr
    assert migrate.current_revision(throwaway_database) is None


def test_migrate_without_database_url_names_the_variable() -> None:
    result = _ledgerq("migrate", env=_clean_env())
    assert result.returncode == 2
    assert "LEDGERQ_DATABASE_URL" in result.stderr


# --------------------------------------------------------------------------- child command lines


def _settings(**env: str) -> Settings:
    base = {
        "LEDGERQ_DATABASE_URL": "postgresql://postgres@127.0.0.1/ledgerq",
        "LEDGERQ_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    return Settings.from_env({**base, **env})


def test_worker_consumes_control_and_its_partitions_one_at_a_time() -> None:
    argv = worker_command(_settings(LEDGERQ_LOG_LEVEL="debug"), (0, 1, 2, 3, 6), pid=4242)
    assert argv[:6] == [sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker"]
    assert argv[argv.index("-Q") + 1] == (
        "ledgerq.control,ledgerq.p0,ledgerq.p1,ledgerq.p2,ledgerq.p3,ledgerq.p6"
    )
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert argv[argv.index("--prefetch-multiplier") + 1] == "1"
    assert argv[argv.index("-n") + 1] == "ledgerq-p0-3_6-4242@%h"
    assert argv[argv.index("--loglevel") + 1] == "DEBUG"
    assert {"--without-gossip", "--without-mingle"} <= set(argv)
    # No task events unless a monitor asks for them (Flower does, with enable_events).
    assert "-E" not in argv


def test_api_and_beat_command_lines(tmp_path: Path) -> None:
    settings = _settings(
        LEDGERQ_API_SERVER="uvicorn",  # granian's: tests/unit/test_api_server.py
        LEDGERQ_API_HOST="0.0.0.0",
        LEDGERQ_API_PORT="9001",
        LEDGERQ_API_WORKERS="3",
        LEDGERQ_DATA_DIR=str(tmp_path),
    )
    assert api_command(settings) == [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", "0.0.0.0", "--port", "9001", "--workers", "3",
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--no-proxy-headers",
    ]  # fmt: skip
    beat = beat_command(settings)
    assert beat[beat.index("--schedule") + 1] == str(tmp_path / "celerybeat-schedule")


# --------------------------------------------------------------------------- dev


def test_dev_refuses_when_only_one_url_is_set(tmp_path: Path) -> None:
    env = _clean_env(
        LEDGERQ_DATABASE_URL="postgresql://postgres@127.0.0.1/x", LEDGERQ_DATA_DIR=str(tmp_path)
    )
    result = _ledgerq("dev", env=env)
    assert result.returncode == 2
    assert "LEDGERQ_REDIS_URL is not set" in result.stderr
    assert not (tmp_path / "postgres").exists()


def _descendant_groups(root: int) -> set[int]:
    """Process groups of every live descendant of root, except root's own group."""
    procs = processes()
    return {procs[pid][1] for pid in descendants(root) if pid in procs} - {procs[root][1]}


def _live_in_groups(groups: set[int]) -> list[int]:
    # A zombie holds no port and runs no code; where pid 1 does not reap, some linger.
    return [pid for pid, (_, pgid, state) in processes().items() if pgid in groups and state != "Z"]


@pytest.mark.timeout(150)
def test_dev_runs_everything_and_stops_cleanly_on_ctrl_c(
    throwaway_database: str, dev_redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    env = _clean_env(
        LEDGERQ_DATABASE_URL=throwaway_database,
        LEDGERQ_REDIS_URL=dev_redis_url,
        LEDGERQ_API_PORT=str(port),
        LEDGERQ_DATA_DIR=str(tmp_path / "data"),
        LEDGERQ_SWEEP_INTERVAL="1",
    )
    groups: set[int] = set()
    dev = Dev(env, tmp_path / "dev.log")
    log_path = dev.log_path
    try:
        deadline = time.monotonic() + 90
        while True:
            assert dev.proc.poll() is None, (
                f"ledgerq dev exited early:\n{log_path.read_text()[-4000:]}"
            )
            # The banner comes after dev's own probe; a signal before it would skip the banner.
            if "ledgerq is ready" in log_path.read_text():
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
            assert time.monotonic() < deadline, f"no /health 200:\n{log_path.read_text()[-4000:]}"
            time.sleep(0.2)
        assert migrate.current_revision(throwaway_database) == migrate.head_revision()
        # The banner advertises the docs URL; it must be real.
        assert httpx.get(f"http://127.0.0.1:{port}/docs", timeout=5).status_code == 200
        groups = _descendant_groups(dev.pid)
        assert len(groups) >= 3, f"expected api, worker and beat groups, got {groups}"

        dev.proc.send_signal(signal.SIGINT)
        assert dev.wait_exit(20) == 0, log_path.read_text()[-4000:]
        output = log_path.read_text()
        assert f"http://127.0.0.1:{port}/docs" in output
        assert "stopping (api, beat, worker)" in output
        assert _live_in_groups(groups) == [], output[-4000:]
    finally:
        if dev.proc.poll() is None:
            dev.proc.kill()
            dev.proc.wait()
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
