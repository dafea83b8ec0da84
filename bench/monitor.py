"""Memory and CPU of the ledgerq processes on this machine, sampled every second with psutil."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psutil

# Groups reported, in display order. "bench" is this process: it shows when the client is the limit.
GROUPS = ("api", "worker", "beat", "bench")
_MB = 1024 * 1024


@dataclass(frozen=True)
class Target:
    """What identifies the ledgerq under test: its database and its API port."""

    database: tuple[str, int, str]
    api_port: int


def database_key(url: str) -> tuple[str, int, str]:
    """(host, port, database name) of a PostgreSQL URL, whatever its driver prefix."""
    # The scheme may name a driver (postgresql+psycopg); only the authority and path matter here.
    parts = urlsplit("postgresql://" + url.split("://", 1)[-1])
    host = parts.hostname or "localhost"
    if host in ("localhost", "::1"):
        host = "127.0.0.1"
    return host, parts.port or 5432, parts.path.lstrip("/")


def classify(cmdline: list[str]) -> str | None:
    """Which ledgerq process a command line is: `ledgerq api` execs uvicorn, worker and beat celery."""
    if any("uvicorn" in part for part in cmdline[:3]) and any(
        part.startswith("api.app") for part in cmdline
    ):
        return "api"
    if "worker.celery_app:app" in cmdline or "worker.celery_app" in cmdline:
        if "worker" in cmdline:
            return "worker"
        if "beat" in cmdline:
            return "beat"
    return None


def _serves(proc: psutil.Process, group: str, target: Target) -> bool:
    """True unless the process's environment says it serves another database or port.

    Other ledgerq stacks (test suites, other benches) may run on the same machine; an unreadable
    environment counts as ours, since there is nothing better to go on.
    """
    try:
        env = proc.environ()
    except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
        return True
    url = env.get("LEDGERQ_DATABASE_URL")
    if url and database_key(url) != target.database:
        return False
    return not (group == "api" and int(env.get("LEDGERQ_API_PORT") or 8000) != target.api_port)


def find_processes(target: Target) -> dict[str, list[psutil.Process]]:
    """The target's processes by group, each with its children (uvicorn and celery pool processes)."""
    found: dict[str, dict[int, psutil.Process]] = {g: {} for g in GROUPS}
    me = psutil.Process()
    found["bench"][me.pid] = me
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        group = classify(cmdline)
        if group is None or not _serves(proc, group, target):
            continue
        found[group][proc.pid] = proc
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                found[group][child.pid] = child
    return {g: list(procs.values()) for g, procs in found.items()}


@dataclass
class GroupSeries:
    pids: list[int] = field(default_factory=list)
    rss_mb: list[float] = field(default_factory=list)
    cpu_percent: list[float] = field(default_factory=list)


@dataclass
class Sampler:
    """A daemon thread sampling RSS (sum over a group's processes) and CPU every `interval` s."""

    target: Target
    interval: float = 1.0
    times: list[float] = field(default_factory=list)
    series: dict[str, GroupSeries] = field(
        default_factory=lambda: {g: GroupSeries() for g in GROUPS}
    )
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _procs: dict[str, list[psutil.Process]] = field(default_factory=dict)
    _t0: float = 0.0

    def start(self, t0: float | None = None) -> None:
        """Start sampling; sample times count from t0 (time.monotonic(), default now)."""
        self._t0 = time.monotonic() if t0 is None else t0
        self._refresh()
        self._sample()  # primes cpu_percent and gives a "start" value before the load
        self._thread = threading.Thread(target=self._loop, name="bench-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()

    def _refresh(self) -> None:
        self._procs = find_processes(self.target)
        for group, procs in self._procs.items():
            series = self.series[group]
            series.pids = sorted({*series.pids, *(p.pid for p in procs)})

    def _loop(self) -> None:
        ticks = 0
        while not self._stop.wait(self.interval):
            ticks += 1
            if ticks % 10 == 0:  # catch pool processes that were replaced (max-tasks, crashes)
                self._refresh()
            self._sample()

    def _sample(self) -> None:
        self.times.append(time.monotonic() - self._t0)
        for group in GROUPS:
            rss = cpu = 0.0
            for proc in self._procs.get(group, []):
                with contextlib.suppress(psutil.Error):
                    rss += proc.memory_info().rss / _MB
                    cpu += proc.cpu_percent(None)
            self.series[group].rss_mb.append(round(rss, 1))
            self.series[group].cpu_percent.append(round(cpu, 1))

    def found(self, group: str) -> bool:
        return bool(self._procs.get(group))

    def summary(self) -> dict[str, dict[str, object]]:
        """Per group: pids, start/end/peak RSS in MB, mean CPU % (100 = one core), and the samples."""
        out: dict[str, dict[str, object]] = {}
        for group, s in self.series.items():
            if not s.pids:
                continue
            # The first CPU sample is psutil's priming call (always 0): leave it out of the mean.
            cpu = s.cpu_percent[1:] or [0.0]
            out[group] = {
                "pids": s.pids,
                "rss_start_mb": s.rss_mb[0] if s.rss_mb else None,
                "rss_end_mb": s.rss_mb[-1] if s.rss_mb else None,
                "rss_peak_mb": max(s.rss_mb, default=None),
                "cpu_mean_percent": round(sum(cpu) / len(cpu), 1),
                "cpu_peak_percent": max(cpu),
                "rss_mb": s.rss_mb,
                "cpu_percent": s.cpu_percent,
            }
        return out

    def mean_cpu(self, group: str) -> float:
        cpu = self.series[group].cpu_percent[1:]
        return sum(cpu) / len(cpu) if cpu else 0.0


def _postgres_backend_of(cmdline: list[str], database: str) -> bool:
    """A PostgreSQL backend serving `database` (its title: "postgres: 15/main: USER DB HOST ...")."""
    title = " ".join(cmdline)
    return title.startswith("postgres:") and f" {database} " in f"{title} "


def cpu_seconds(target: Target) -> dict[str, dict[int, float]]:
    """CPU seconds (user + system) so far of the target's workers (pool children included) and of
    the PostgreSQL backends serving its database, per pid: two snapshots bracket a phase."""
    out: dict[str, dict[int, float]] = {"worker": {}, "postgres": {}}
    for proc in find_processes(target)["worker"]:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            out["worker"][proc.pid] = times.user + times.system
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if _postgres_backend_of(proc.info.get("cmdline") or [], target.database[2]):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out["postgres"][proc.pid] = times.user + times.system
    return out


def cpu_used(
    before: dict[str, dict[int, float]], after: dict[str, dict[int, float]]
) -> dict[str, float]:
    """CPU seconds per group between two snapshots (a process new in `after` counts from 0; one
    that ended in between is missed, so the figures are a floor)."""
    return {
        group: round(sum(t - before.get(group, {}).get(pid, 0.0) for pid, t in pids.items()), 3)
        for group, pids in after.items()
    }


def machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "memory_mb": round(psutil.virtual_memory().total / _MB),
        "platform": os.uname().sysname + " " + os.uname().release,
    }
