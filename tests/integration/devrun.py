"""`ledgerq dev` runs started by tests (test_dev_supervisor.py, test_dev_signals.py): the
process, its environment, and the processes that belong to a run.

A process belongs to a run when its environment carries that run's LEDGERQ_DATA_DIR (api,
worker, beat and the servers inherit it) or its working directory lies in that folder (the
servers run there).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.integration.isolated import descendants, processes

ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 150.0
STOP_WITHIN = 60.0


def dev_env(data_dir: Path, port: int) -> dict[str, str]:
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


def cmdline(pid: int) -> str:
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


def describe(pids: set[int] | list[int]) -> str:
    return "; ".join(f"{pid}: {cmdline(pid)[:160]}" for pid in sorted(pids)) or "none"


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
                f"its processes: {describe(descendants(self.pid))}\n{self.output()[-4000:]}"
            ) from None
