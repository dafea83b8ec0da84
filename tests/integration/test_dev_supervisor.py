"""`ledgerq dev` as a supervisor: one run per data folder, a clean stop on SIGINT/SIGTERM however
they arrive, and nothing of a run left behind when it is killed hard.

Every run here starts its own embedded PostgreSQL and Redis in a temporary data folder. A process
belongs to a run when its environment carries that run's LEDGERQ_DATA_DIR (api, worker, beat and
the servers inherit it) or its working directory lies in that folder (the servers run there).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from devserver import free_port, start_postgres
from tests.integration.isolated import descendants, kill_all, live, processes, wait_until

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 150.0
STOP_WITHIN = 60.0


def _dev_env(data_dir: Path, port: int) -> dict[str, str]:
    """No LEDGERQ_DATABASE_URL / LEDGERQ_REDIS_URL: the run starts embedded servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEDGERQ_")}
    return {
        **env,
        "LEDGERQ_DATA_DIR": str(data_dir),
        "LEDGERQ_API_PORT": str(port),
        "LEDGERQ_API_HOST": "127.0.0.1",
        "LEDGERQ_SWEEP_INTERVAL": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _cmdline(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return "(gone)"


def run_processes(data_dir: Path) -> set[int]:
    """Live processes of the run using data_dir (see the module docstring), other than us."""
    marker = f"LEDGERQ_DATA_DIR={data_dir}\0".encode()
    found: set[int] = set()
    for pid, (_, _, state) in processes().items():
        if pid == os.getpid() or state == "Z":
            continue
        with contextlib.suppress(OSError):
            if marker in Path(f"/proc/{pid}/environ").read_bytes() + b"\0":
                found.add(pid)
                continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(data_dir):
                found.add(pid)
    return found


def _describe(pids: set[int] | list[int]) -> str:
    return "; ".join(f"{pid}: {_cmdline(pid)[:160]}" for pid in sorted(pids)) or "none"


class Dev:
    """One `ledgerq dev` process, its output in a file (a pipe nobody reads would stall it)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self.port = int(env["LEDGERQ_API_PORT"])
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", "dev"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_output(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output():
            assert self.proc.poll() is None, f"ledgerq dev exited early:\n{self.output()[-4000:]}"
            assert time.monotonic() < deadline, f"no {needle!r}:\n{self.output()[-4000:]}"
            time.sleep(0.05)

    def wait_ready(self) -> None:
        self.wait_output("ledgerq is ready", READY_WITHIN)
        assert httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=5).status_code == 200

    def wait_exit(self, timeout: float = STOP_WITHIN) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"ledgerq dev (pid {self.pid}) still running {timeout:.0f}s after the stop; "
                f"its processes: {_describe(descendants(self.pid))}\n{self.output()[-4000:]}"
            ) from None


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """The run's data folder; whatever of its runs a failing test leaves is killed afterwards."""
    path = tmp_path / "data"
    try:
        yield path
    finally:
        kill_all(run_processes(path))


def _server_pid(path: Path) -> int:
    return int(path.read_text().split()[0])


def _roles(dev_pid: int) -> dict[str, set[int]]:
    """The run's api, worker and beat processes (with their subprocesses), found by command line:
    `python -m cli NAME` until it execs the server, then uvicorn/granian or celery."""
    roles: dict[str, set[int]] = {"api": set(), "worker": set(), "beat": set()}
    for pid in descendants(dev_pid):
        cmd = _cmdline(pid)
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
    first = Dev(_dev_env(data_dir, port), tmp_path / "first.log")
    first.wait_ready()
    pg_pid = _server_pid(data_dir / "postgres" / "postmaster.pid")
    redis_pid = _server_pid(data_dir / "redis" / "valkey.pid")
    roles = _roles(first.pid)
    assert all(roles.values()), f"api, worker and beat of the first run: {roles}"

    # The same port (the first run's API holds it), then another port: both refused alike.
    for attempt, other_port in enumerate((port, free_port())):
        second = Dev(_dev_env(data_dir, other_port), tmp_path / f"second-{attempt}.log")
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
        beats = [p for p in run_processes(data_dir) if " beat " in _cmdline(p)]
        assert sorted(beats) == sorted(roles["beat"]), _describe(beats)

    first.proc.send_signal(signal.SIGINT)
    assert first.wait_exit() == 0, first.output()[-4000:]
    wait_until(
        lambda: not run_processes(data_dir),
        15,
        lambda: f"left running: {_describe(run_processes(data_dir))}",
    )


@pytest.mark.timeout(300)
def test_dev_leaves_running_a_server_it_did_not_start(data_dir: Path, tmp_path: Path) -> None:
    """A PostgreSQL already running in the data folder (here started by hand) is used, and still
    runs after dev stops; the Redis dev started itself is stopped."""
    found = start_postgres(data_dir / "postgres")
    try:
        dev = Dev(_dev_env(data_dir, free_port()), tmp_path / "dev.log")
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
    dev = Dev(_dev_env(data_dir, free_port()), tmp_path / "dev.log")
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
    again = Dev(_dev_env(data_dir, free_port()), tmp_path / "again.log")
    wait_until(lambda: not live(watched), 60, lambda: f"left running: {_describe(live(watched))}")

    again.wait_ready()
    said = again.output()
    assert "already running" not in said, said
    again.proc.send_signal(signal.SIGTERM)
    assert again.wait_exit() == 0, again.output()[-4000:]
    assert not run_processes(data_dir), _describe(run_processes(data_dir))


# --------------------------------------------------------------------------- signals at any moment


@pytest.mark.timeout(900)
def test_dev_stops_cleanly_on_sigint_and_sigterm_at_random_moments(
    data_dir: Path, tmp_path: Path
) -> None:
    """Each round starts dev and sends it a few SIGINTs and SIGTERMs, the first at a random moment
    from its first line (handlers installed) to a little after it is ready; dev must exit 0 and
    leave nothing running. The first round also measures how long startup takes."""
    seed = int(os.environ.get("LEDGERQ_TEST_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    rounds = 6
    startup = 0.0
    for n in range(rounds):
        dev = Dev(_dev_env(data_dir, free_port()), tmp_path / f"dev-{n}.log")
        plan: list[tuple[float, signal.Signals]] = []
        dev.wait_output("dev    |", READY_WITHIN)
        started = time.monotonic()
        if n == 0:
            dev.wait_ready()
            startup = time.monotonic() - started
        else:
            time.sleep(rng.uniform(0, startup * 1.3))
        for _ in range(rng.randint(1, 5)):
            kind = rng.choice((signal.SIGINT, signal.SIGTERM))
            plan.append((round(time.monotonic() - started, 3), kind))
            with contextlib.suppress(ProcessLookupError):
                os.kill(dev.pid, kind)
            time.sleep(rng.choice((0, 0.001, 0.05, 0.3, 1.0)))
        context = f"seed {seed}, round {n}, signals {plan}"
        seen = descendants(dev.pid)
        code = dev.wait_exit()
        assert code == 0, f"{context}: exit code {code}\n{dev.output()[-4000:]}"
        left = set(live(seen)) | run_processes(data_dir)
        assert not left, f"{context}: left running: {_describe(left)}\n{dev.output()[-3000:]}"


# --------------------------------------------------------------------------- the stop signal handler

FLOODED = """
import os, sys
from cli.dev import _Stop

stop = _Stop()
stop.install()
print("installed", flush=True)
while not os.path.exists(sys.argv[1]):
    stop.wait(0.0001)
print("received", stop.received, flush=True)
"""


@pytest.mark.timeout(120)
def test_stop_signals_never_block_the_thread_waiting_for_them(tmp_path: Path) -> None:
    """The supervisor's wait, called in a tight loop, under a flood of SIGINT and SIGTERM: the
    handler must never block (a handler that set a threading.Event deadlocked when the signal
    came while the main thread held the event's lock inside Event.wait) nor fail."""
    for trial in range(3):
        done = tmp_path / f"done-{trial}"
        proc = subprocess.Popen(
            [sys.executable, "-c", FLOODED, str(done)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        assert proc.stdout.readline() == "installed\n"
        sent = 0
        until = time.monotonic() + 2
        while time.monotonic() < until:
            os.kill(proc.pid, (signal.SIGINT, signal.SIGTERM)[sent % 2])
            sent += 1
            time.sleep(0.002)
        done.touch()
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"trial {trial}: hung after {sent} signals") from None
        assert proc.returncode == 0, f"trial {trial}, {sent} signals: {err[-3000:]}"
        assert out.startswith("received ") and int(out.split()[1]) >= 1, out
