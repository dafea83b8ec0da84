"""`ledgerq dev` stops cleanly whenever SIGINT and SIGTERM arrive, and its signal handler never
blocks. (Apart from test_dev_supervisor.py so the two files run in parallel processes.)"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devserver import free_port
from tests.integration.devrun import READY_WITHIN, ROOT, Dev, describe, dev_env, run_processes
from tests.integration.isolated import descendants, live

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
        dev = Dev(dev_env(data_dir, free_port()), tmp_path / f"dev-{n}.log")
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
        assert not left, f"{context}: left running: {describe(left)}\n{dev.output()[-3000:]}"


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
