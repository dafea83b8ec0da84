"""The `ledgerq` command: run the API, workers, beat, migrations, or everything at once with `dev`."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import secrets
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, NoReturn
from urllib.parse import urlsplit, urlunsplit

from rich.console import Console
from rich.table import Table

from api.bench import add_parser as add_bench_parser
from worker.routing import CONTROL_QUEUE, queue_for_partition
from worker.settings import (
    VARIABLES,
    Settings,
    SettingsError,
    get_settings,
    normalize_database_url,
    parse_worker_partitions,
)

if TYPE_CHECKING:
    from worker.devservers import EmbeddedServer

DEFAULT_DATA_DIR = ".ledgerq"
# `ledgerq dev` holds an exclusive lock on this file in the data folder while it runs.
DEV_LOCK_NAME = "dev.lock"
# Set by `dev` for its children (api, worker, beat): the pid they must not outlive.
SUPERVISOR_ENV = "_LEDGERQ_DEV_SUPERVISOR_PID"
# What a child of `dev` gets from the kernel when dev dies: each stops gracefully, and takes its
# own subprocesses (uvicorn/granian workers, the Celery pool) down with it.
CHILD_DEATH_SIGNAL = signal.SIGTERM
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
# Children stop in this order: no new requests first, then no new sweeps, then the worker drains.
STOP_ORDER = ("api", "beat", "worker")
COLOURS = {"api": "36", "worker": "35", "beat": "33", "dev": "1"}

console = Console(highlight=False)
errors = Console(highlight=False, stderr=True)


# --------------------------------------------------------------------------- shared helpers


def _exec(argv: list[str]) -> NoReturn:
    """Replace this process, so signals from a supervisor (or `dev`) reach the server directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - argv is built here from fixed parts


def _settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


def _database_url() -> str:
    # Migrations need only the database, so do not demand the other variables here.
    url = os.environ.get("LEDGERQ_DATABASE_URL")
    if not url:
        raise SettingsError(
            "LEDGERQ_DATABASE_URL is not set (see the configuration table in README.md)"
        )
    return normalize_database_url(url)


@contextlib.contextmanager
def _explain_connection_errors(url: str) -> Iterator[None]:
    """Turn "cannot connect" into one line naming the variable instead of a long traceback."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        raise SettingsError(
            f"LEDGERQ_DATABASE_URL: cannot use {mask_url(url)}: {exc.orig or exc}"
        ) from exc


def mask_url(value: str) -> str:
    """Hide the password of a URL (postgresql://u:secret@h/db -> postgresql://u:***@h/db)."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def partitions_label(partitions: Sequence[int]) -> str:
    """A compact, node-name-safe label: (0,1,2,3,6) -> p0-3_6."""
    runs: list[str] = []
    start = prev = None
    for p in sorted(partitions):
        if prev is not None and p == prev + 1:
            prev = p
            continue
        if start is not None:
            runs.append(f"{start}-{prev}" if start != prev else f"{start}")
        start = prev = p
    if start is not None:
        runs.append(f"{start}-{prev}" if start != prev else f"{start}")
    return "p" + "_".join(runs)


# --------------------------------------------------------------------------- child command lines


def api_command(settings: Settings) -> list[str]:
    """The API server's command line: LEDGERQ_API_SERVER picks uvicorn or granian."""
    if settings.api_server == "granian":
        return granian_command(settings)
    return uvicorn_command(settings)


def uvicorn_command(settings: Settings) -> list[str]:
    # Proxy headers: uvicorn by default believes X-Forwarded-For/-Proto from 127.0.0.1 (or
    # FORWARDED_ALLOW_IPS), so a local client could pick its own address for the failed-login and
    # rate limits. Only LEDGERQ_TRUSTED_PROXIES are trusted, none when it is empty.
    # uvicorn's other defaults that matter: on SIGTERM it stops accepting, lets running requests
    # end (no time limit), then runs the app's lifespan shutdown; with --workers > 1 its parent
    # process replaces a worker that dies.
    return [
        sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory",
        "--host", settings.api_host,
        "--port", str(settings.api_port),
        "--workers", str(settings.api_workers),
        "--loop", "uvloop",
        "--http", "httptools",
        "--no-access-log",
        *proxy_header_options(settings),
    ]  # fmt: skip


def proxy_header_options(settings: Settings) -> list[str]:
    """uvicorn's options for LEDGERQ_TRUSTED_PROXIES (explicit either way: its defaults trust
    127.0.0.1, and FORWARDED_ALLOW_IPS would otherwise still be read)."""
    if not settings.trusted_proxies:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", settings.trusted_proxies]


# granian's own loggers write through ledgerq's handler (worker/logging_setup.py granian_handler).
GRANIAN_LOG_CONFIG = Path(__file__).with_name("granian_logging.json")
GRANIAN_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# A worker still busy this long after SIGTERM beyond the longest `Prefer: wait` is killed.
GRANIAN_KILL_MARGIN = 10


def granian_command(settings: Settings) -> list[str]:
    """granian, set up to behave as uvicorn does above.

    - Proxy headers: granian has no such option; it serves api.granian_app:create_app, the app
      behind uvicorn's own proxy-header middleware trusting LEDGERQ_TRUSTED_PROXIES (not wrapped
      at all when that is empty). See there for why not granian's wrapper.
    - Graceful shutdown: on SIGTERM granian's parent process passes it on to each worker, which
      stops accepting, closes idle connections, lets running requests end and then runs the app's
      lifespan shutdown, as uvicorn does (a SIGTERM that comes while a worker is still starting is
      held until it can be obeyed, see api/granian_app.py). uvicorn sets no time limit; granian's
      parent kills a worker still running --workers-kill-timeout seconds later: LEDGERQ_MAX_WAIT
      (the longest `Prefer: wait` poll) plus GRANIAN_KILL_MARGIN, so no request uvicorn would
      finish is cut, yet an event stream cannot hold the process forever.
    - Workers: granian always runs a parent process and LEDGERQ_API_WORKERS worker processes
      (uvicorn runs one process when it is 1). A worker that dies stops the server (exit status
      1, the other workers shut down gracefully) for the process supervisor to restart; uvicorn
      with --workers > 1 would replace it. Not --respawn-failed-workers: granian's guard against
      a crash loop misses workers that fail in turn, so an API that cannot start (a bad setting)
      was respawned for minutes instead of exiting.
    - HTTP/1.1 only (as httptools), the same listen backlog as uvicorn (2048; granian also lets
      each worker hold at most backlog/workers connections at once), uvloop, no access log
      (requests log themselves, api/logging.py), granian's own lines in ledgerq's log format.
    """
    level = settings.log_level.lower()
    return [
        sys.executable, "-m", "api.granian_app", "api.granian_app:create_app", "--factory",
        "--interface", "asgi",
        "--host", settings.api_host,
        "--port", str(settings.api_port),
        "--workers", str(settings.api_workers),
        "--workers-kill-timeout", str(settings.max_wait + GRANIAN_KILL_MARGIN),
        "--loop", "uvloop",
        "--http", "1",
        "--backlog", "2048",
        "--no-access-log",
        "--log-level", level if level in GRANIAN_LOG_LEVELS else "info",
        "--log-config", str(GRANIAN_LOG_CONFIG),
    ]  # fmt: skip


def worker_command(
    settings: Settings,
    partitions: Sequence[int] | None,
    pid: int,
    pool: str | None = None,
    concurrency: int = 1,
) -> list[str]:
    """partitions None: `auto`, the worker starts on the control queue and leases its partitions'
    queues at run time (worker/leases.py)."""
    queues = [CONTROL_QUEUE, *(queue_for_partition(p) for p in partitions or ())]
    label = "auto" if partitions is None else partitions_label(partitions)
    argv = [
        sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "worker",
        "-Q", ",".join(queues),
        "--concurrency", str(concurrency),
        "--prefetch-multiplier", "1",
        # Celery expands %h to the host name; the pid survives the exec, so names stay unique.
        "-n", f"ledgerq-{label}-{pid}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel", settings.log_level,
        # No -E: task events cost the worker's main process CPU for every task, and usually no
        # monitor listens. A monitor turns them on with the enable_events control command (Flower
        # does, see flower_command). That needs remote control (on) and the event dispatcher,
        # which without -E and gossip exists only for heartbeats: no --without-heartbeat.
    ]  # fmt: skip
    if pool is not None:
        argv += ["--pool", pool]
    return argv


def flower_command(settings: Settings) -> list[str]:
    # Flower follows the workers through task events and asks them with `celery inspect`; it
    # needs only the broker. Workers send no task events until a monitor asks (no -E, see
    # worker_command): --enable_events (Flower's default, explicit because we depend on it) makes
    # Flower broadcast the enable_events control command every 5 seconds from its start, so workers
    # started before or after it report their tasks. A worker keeps sending them after Flower
    # stops, until it restarts or is told `celery control disable_events`. On the command line,
    # this also overrides FLOWER_ENABLE_EVENTS and a flowerconfig.py.
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "flower",
        f"--address={settings.flower_host}",
        f"--port={settings.flower_port}",
        "--logging=" + settings.log_level.lower(),
        "--enable_events=True",
    ]  # fmt: skip


def beat_command(settings: Settings) -> list[str]:
    schedule = Path(settings.data_dir) / "celerybeat-schedule"
    return [
        sys.executable, "-m", "celery", "-A", "worker.celery_app:app", "beat",
        "--schedule", str(schedule),
        "--loglevel", settings.log_level,
    ]  # fmt: skip


# --------------------------------------------------------------------------- simple subcommands


def cmd_migrate(args: argparse.Namespace) -> int:
    # Imported here so `ledgerq api|worker|beat` do not pay for Alembic before they exec.
    from worker.store import migrate

    url = _database_url()
    with _explain_connection_errors(url):
        before = migrate.current_revision(url)
        if args.downgrade is not None:
            migrate.downgrade(url, args.downgrade)
        else:
            migrate.upgrade(url)
        after = migrate.current_revision(url)
    console.print(
        f"database {mask_url(url)}: revision {before or 'base'} -> {after or 'base'}",
        soft_wrap=True,
    )
    if (warning := migrate.check_autovacuum(url)) is not None:
        errors.print(f"[yellow]warning:[/] {warning}")
    return 0


def cmd_import_prices(args: argparse.Namespace) -> int:
    """Daily closes from a CSV (`ticker,date,close`): every row is checked first, then all are
    written in one transaction; a bad file imports nothing and names the line."""
    from worker.store.db import make_engine
    from worker.store.investments import PriceFileError, import_prices, parse_price_csv

    url = _database_url()
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        print(f"ledgerq: error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    engine = make_engine(url, pool_size=1)
    try:
        rows = parse_price_csv(text)
        with _explain_connection_errors(url), engine.begin() as conn:
            count = import_prices(conn, rows)
    except PriceFileError as exc:
        print(f"ledgerq: error: {args.file}: {exc}; nothing was imported", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    console.print(f"imported {count} closes from {args.file}")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    settings = _settings()
    if settings.api_server == "granian":
        # granian binds with SO_REUSEPORT: started on a port another granian serves, it would not
        # fail as uvicorn does but quietly take a share of that one's connections.
        _check_port_free(settings.api_host, settings.api_port)
    _exec(api_command(settings))


def cmd_worker(args: argparse.Namespace) -> int:
    settings = _settings()
    partitions = settings.worker_partitions
    if args.partitions is not None:
        # The worker process reads the mode (auto or fixed) from the environment, so pass it on.
        os.environ["LEDGERQ_WORKER_PARTITIONS"] = args.partitions
        partitions = parse_worker_partitions(args.partitions, settings.partitions)
    if args.concurrency > 1:
        # Correct either way (see DESIGN), but per-account FIFO needs one consumer per partition.
        errors.print("[yellow]warning:[/] --concurrency > 1 gives up per-account FIFO order")
    _exec(worker_command(settings, partitions, os.getpid(), args.pool, args.concurrency))


def cmd_flower(args: argparse.Namespace) -> int:
    _exec(flower_command(_settings()))


def cmd_beat(args: argparse.Namespace) -> int:
    settings = _settings()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    _exec(beat_command(settings))


def cmd_config(args: argparse.Namespace) -> int:
    table = Table(title="ledgerq configuration (LEDGERQ_* environment variables)")
    table.add_column("variable", no_wrap=True, style="bold")
    table.add_column("value", overflow="fold")
    table.add_column("meaning")
    for var in VARIABLES:
        raw = os.environ.get(var.name)
        if raw and var.secret:
            value = "[dim](set, hidden)[/]"
        elif raw:
            value = mask_url(raw)
        elif var.default is not None:
            value = f"[dim]{var.default} (default)[/]"
        else:
            value = "[dim](unset)[/]"
        table.add_row(var.name, value, var.help)
    console.print(table)
    try:
        Settings.from_env()
    except SettingsError as exc:
        errors.print(f"[red]problem:[/] {exc}")
        if not (os.environ.get("LEDGERQ_DATABASE_URL") or os.environ.get("LEDGERQ_REDIS_URL")):
            errors.print("[dim]`ledgerq dev` starts embedded servers when both URLs are unset.[/]")
        return 1
    return 0


# --------------------------------------------------------------------------- dev: everything at once


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


def _spawn(name: str, args: list[str]) -> _Child:
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        [sys.executable, "-m", "api.cli", name, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        # A terminal Ctrl-C goes to the foreground process group: only us, so we stop them in order.
        process_group=0,
        # The child ties its life to ours before it execs the server (_follow_supervisor).
        env={**os.environ, SUPERVISOR_ENV: str(os.getpid())},
    )
    return _Child(name, proc)


def _follow_supervisor() -> None:
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
    from worker.devservers import start_postgres, start_redis

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


def _probe_host(host: str) -> str:
    # A wildcard listen address is reachable on loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if sock.connect_ex((_probe_host(host), port)) == 0:
            raise SettingsError(
                f"LEDGERQ_API_PORT: something already listens on {host}:{port}; "
                "stop it or choose another port"
            )


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
    base = f"http://{_url_host(_probe_host(settings.api_host))}:{settings.api_port}"
    with _output_lock:
        console.print(
            f"\n[bold green]ledgerq is ready[/]\n"
            f"  API   {base}\n"
            f"  docs  {base}/docs\n"
            f"  data  {data_dir}\n"
            f"  Ctrl-C stops everything.\n"
        )


def _supervise(settings: Settings, data_dir: Path, stop: _Stop) -> int:
    """Run api, worker and beat until a signal (exit 0) or until one of them exits (exit 1)."""
    children: dict[str, _Child] = {}
    try:
        # `auto`: the worker leases every partition (it is alone), as a deployed worker would.
        for name, args in (("worker", ["--partitions", "auto"]), ("beat", []), ("api", [])):
            if stop.requested:
                break
            children[name] = _spawn(name, args)
        health = f"http://{_url_host(_probe_host(settings.api_host))}:{settings.api_port}/health"
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
        _say("dev", "stopping (api, beat, worker)")
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
    # Children's lines should reach us as they are written, not when a buffer fills.
    os.environ["PYTHONUNBUFFERED"] = "1"
    return _settings()


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
                _check_port_free(settings.api_host, settings.api_port)
                if stop.requested:
                    return 0
                _say("dev", "migrating the database to the latest revision")
                with _explain_connection_errors(settings.database_url):
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


# --------------------------------------------------------------------------- argument parsing


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ledgerq",
        description="Queue-backed transaction processor. Configuration: LEDGERQ_* variables "
        "(`ledgerq config` lists them).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    dev = sub.add_parser(
        "dev",
        help="run API, worker and beat together (embedded PostgreSQL and Redis if no URLs are set)",
    )
    dev.set_defaults(handler=cmd_dev)

    mig = sub.add_parser("migrate", help="upgrade the database schema to the latest revision")
    mig.add_argument(
        "--downgrade",
        nargs="?",
        const="-1",
        metavar="REV",
        help="downgrade instead: to REV (`base` removes everything), one revision if omitted",
    )
    mig.set_defaults(handler=cmd_migrate)

    api = sub.add_parser("api", help="serve the HTTP API (uvicorn or granian: LEDGERQ_API_SERVER)")
    api.set_defaults(handler=cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker for some or all partitions")
    worker.add_argument(
        "--partitions",
        metavar="SPEC",
        help="partitions to consume: `auto` (leased fair share), `all` or like `0-3,6` "
        "(default LEDGERQ_WORKER_PARTITIONS)",
    )
    worker.add_argument("--pool", choices=("prefork", "solo", "threads"), help="Celery pool")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=1,
        metavar="N",
        help="processes or threads (default 1: one consumer per partition keeps FIFO order)",
    )
    worker.set_defaults(handler=cmd_worker)

    flower = sub.add_parser(
        "flower",
        help="run Flower (Celery monitoring UI) on LEDGERQ_FLOWER_HOST:LEDGERQ_FLOWER_PORT",
    )
    flower.set_defaults(handler=cmd_flower)

    beat = sub.add_parser("beat", help="run Celery beat (the sweeper schedule)")
    beat.set_defaults(handler=cmd_beat)

    config = sub.add_parser("config", help="show every LEDGERQ_* variable and its current value")
    config.set_defaults(handler=cmd_config)

    prices = sub.add_parser(
        "import-prices",
        help="import daily closes from a CSV file (ticker,date,close); all or nothing",
    )
    prices.add_argument("file", help="CSV with a header line: ticker,date,close")
    prices.set_defaults(handler=cmd_import_prices)

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    _follow_supervisor()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        print(f"ledgerq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
