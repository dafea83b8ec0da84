"""`ledgerq dev` as a supervisor: one run per data folder, a clean stop on SIGINT/SIGTERM however
they arrive, and nothing of a run left behind when it is killed hard.

Every run here starts its own embedded PostgreSQL and Redis in a temporary data folder; which
processes belong to a run: tests/integration/devrun.py.
"""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import psycopg
import pytest

from devserver import free_port, start_postgres
from tests.integration.devrun import Dev, cmdline, describe, dev_env, run_processes
from tests.integration.isolated import descendants, live, wait_until


def _server_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _roles(dev_pid: int) -> dict[str, set[int]]:
    """The run's api, worker and beat processes (with their subprocesses), found by command line:
    `python -m cli NAME` until it execs the server, then uvicorn/granian or celery."""
    roles: dict[str, set[int]] = {"api": set(), "worker": set(), "beat": set()}
    for pid in descendants(dev_pid):
        cmd = cmdline(pid)
        if "uvicorn" in cmd or "granian" in cmd or "-m cli api " in cmd:
            roles["api"].add(pid)
        elif ("celery" in cmd or "-m cli " in cmd) and " worker " in cmd:
            roles["worker"].add(pid)
        elif ("celery" in cmd and " beat " in cmd) or cmd.endswith("-m cli beat "):
            roles["beat"].add(pid)
    return roles


# --------------------------------------------------------------------------- one run per data folder


@pytest.mark.timeout(400)
def test_a_second_dev_on_the_same_data_folder_is_refused_and_the_first_keeps_running(
    data_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    first = Dev(dev_env(data_dir, port), tmp_path / "first.log")
    first.wait_ready()
    pg_pid = _server_pid(data_dir / "postgres" / "postmaster.pid")
    redis_pid = _server_pid(data_dir / "redis" / "valkey.pid")
    roles = _roles(first.pid)
    assert all(roles.values()), f"api, worker and beat of the first run: {roles}"

    # The same port (the first run's API holds it), then another port: both refused alike.
    for attempt, other_port in enumerate((port, free_port())):
        second = Dev(dev_env(data_dir, other_port), tmp_path / f"second-{attempt}.log")
        code = second.wait_exit()
        said = second.output()
        assert code == 2, said
        assert "another `ledgerq dev`" in said and f"pid {first.pid}" in said, said
        assert str(data_dir) in said, said
        # Refused before touching anything: no server started, attached to or stopped.
        assert "embedded" not in said, said
        assert first.proc.poll() is None, first.output()[-4000:]
        assert live({pg_pid, redis_pid}) == sorted({pg_pid, redis_pid})
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert _roles(first.pid)["beat"] == roles["beat"]
        beats = [p for p in run_processes(data_dir) if " beat " in cmdline(p)]
        assert sorted(beats) == sorted(roles["beat"]), describe(beats)

    first.proc.send_signal(signal.SIGINT)
    assert first.wait_exit() == 0, first.output()[-4000:]
    wait_until(
        lambda: not run_processes(data_dir),
        15,
        lambda: f"left running: {describe(run_processes(data_dir))}",
    )


@pytest.mark.timeout(300)
def test_dev_leaves_running_a_server_it_did_not_start(data_dir: Path, tmp_path: Path) -> None:
    """A PostgreSQL already running in the data folder (here started by hand) is used, and still
    runs after dev stops; the Redis dev started itself is stopped."""
    found = start_postgres(data_dir / "postgres")
    try:
        dev = Dev(dev_env(data_dir, free_port()), tmp_path / "dev.log")
        dev.wait_ready()
        said = dev.output()
        assert f"embedded postgres (pid {found.pid}) was already running" in said, said
        redis_pid = _server_pid(data_dir / "redis" / "valkey.pid")

        dev.proc.send_signal(signal.SIGTERM)
        assert dev.wait_exit() == 0, dev.output()[-4000:]
        assert live({found.pid}) == [found.pid], dev.output()[-4000:]
        with psycopg.connect(found.url.replace("postgresql+psycopg", "postgresql")) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        assert not live({redis_pid})
        assert run_processes(data_dir) <= {found.pid, *descendants(found.pid)}
    finally:
        found.stop()


# --------------------------------------------------------------------------- killed hard


@pytest.mark.timeout(400)
def test_dev_killed_hard_leaves_no_process_of_its_run(data_dir: Path, tmp_path: Path) -> None:
    """SIGKILL: api, worker, beat, PostgreSQL and Redis of the run end too (checked by pid); a new
    run started at once in the same folder (its servers may still be shutting down) works."""
    dev = Dev(dev_env(data_dir, free_port()), tmp_path / "dev.log")
    dev.wait_ready()
    roles = _roles(dev.pid)
    assert all(roles.values()), f"api, worker and beat: {roles}"
    servers = {
        "postgres": _server_pid(data_dir / "postgres" / "postmaster.pid"),
        "redis": _server_pid(data_dir / "redis" / "valkey.pid"),
    }
    watched = {*descendants(dev.pid), *servers.values()}
    assert set(live(set(servers.values()))) == set(servers.values())

    dev.proc.kill()
    dev.proc.wait()
    again = Dev(dev_env(data_dir, free_port()), tmp_path / "again.log")
    wait_until(lambda: not live(watched), 60, lambda: f"left running: {describe(live(watched))}")

    again.wait_ready()
    said = again.output()
    assert "already running" not in said, said
    again.proc.send_signal(signal.SIGTERM)
    assert again.wait_exit() == 0, again.output()[-4000:]
    assert not run_processes(data_dir), describe(run_processes(data_dir))
