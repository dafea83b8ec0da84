"""CPU seconds by component while a command runs, for wrk runs the bench does not drive.

    uv run python -m bench.cpu_split -- wrk -t2 -c64 -d20s -s bench/wrk/submit.lua URL -- ...

ledgerq's processes are told apart as the bench's monitor does (api, worker, beat, with their
children); the rest by process name: postgres, redis, rabbitmq, wrk, other. Processes that start
and end within the run are missed (a short-lived PostgreSQL backend, say): the figures are a floor.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import psutil

from bench.monitor import classify

_BY_NAME = (("postgres", "postgres"), ("redis-server", "redis"), ("beam", "rabbitmq"))
_REPORTED = frozenset({"api", "worker", "beat", "postgres", "redis", "rabbitmq", "wrk"})


def component(proc: psutil.Process) -> str:
    for candidate in (proc, *proc.parents()):
        group = classify(candidate.cmdline())
        if group is not None:
            return group
    name = proc.name()
    return next((label for prefix, label in _BY_NAME if name.startswith(prefix)), name)


def cpu_seconds() -> dict[int, tuple[str, float]]:
    seen: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter():
        try:
            times = proc.cpu_times()
            seen[proc.pid] = (component(proc), times.user + times.system)
        except psutil.Error:
            continue
    return seen


def main(argv: list[str]) -> int:
    command = argv[argv.index("--") + 1 :] if "--" in argv else argv
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    before, started = cpu_seconds(), time.monotonic()
    child = subprocess.Popen(command)  # noqa: S603 - the operator's own command line
    # Sample while the child still exists, so its own CPU is counted too.
    last = cpu_seconds()
    while child.poll() is None:
        time.sleep(0.5)
        if child.poll() is None:
            last = cpu_seconds()
    code = child.wait()
    after, elapsed = {**last, **cpu_seconds()}, time.monotonic() - started
    totals: dict[str, float] = defaultdict(float)
    for pid, (name, used) in after.items():
        label = name if name in _REPORTED else "other"
        totals[label] += used - before.get(pid, (name, 0.0))[1]
    total = sum(totals.values())
    print(f"cpu over {elapsed:.1f} s: {total:.1f} s ({total / elapsed:.2f} cores)")
    for name, used in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {name:9s} {used:6.1f} s  {used / elapsed:5.2f} cores")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
