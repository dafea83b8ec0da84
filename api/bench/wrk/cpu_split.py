"""CPU seconds by component while a command runs (Linux /proc), for wrk runs the bench does not drive.

    python api/bench/wrk/cpu_split.py -- wrk -t2 -c64 -d20s -s api/bench/wrk/submit.lua URL -- ...

Components are told apart by process name and command line: api (uvicorn), worker (celery
worker), beat, postgres, redis, rabbitmq, wrk, other. Processes that start and end within the
run are missed (a short-lived PostgreSQL backend, say); the figures are a floor.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

_TICK = os.sysconf("SC_CLK_TCK")


def component(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        with open(f"/proc/{pid}/comm") as f:
            comm = f.read().strip()
    except OSError:
        return None
    if comm.startswith("postgres"):
        return "postgres"
    if comm.startswith("redis-server"):
        return "redis"
    if comm == "wrk":
        return "wrk"
    if comm.startswith("beam"):
        return "rabbitmq"
    if "uvicorn" in cmd or "spawn_main" in cmd:
        return "api"
    if "celery" in cmd:
        return "beat" if " beat" in cmd else "worker"
    return "other"


def cpu_seconds() -> dict[int, float]:
    seconds: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seconds[int(entry)] = (int(fields[11]) + int(fields[12])) / _TICK
    return seconds


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
    totals: dict[str, float] = collections.defaultdict(float)
    for pid, used in after.items():
        name = component(pid) or ("wrk" if pid == child.pid else None)
        if name is not None:
            totals[name] += used - before.get(pid, 0.0)
    total = sum(totals.values())
    print(f"cpu over {elapsed:.1f} s: {total:.1f} s ({total / elapsed:.2f} cores)")
    for name, used in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {name:9s} {used:6.1f} s  {used / elapsed:5.2f} cores")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
