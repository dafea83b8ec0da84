"""The `ledgerq` command: run the API, workers, the webhook dispatcher, beat, Flower, migrations,
price imports; `dev` (cli/dev.py) runs everything at once and `bench` (bench/) load-tests a running
ledgerq."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from rich.table import Table

import api
from api.settings import VARIABLES, Settings
from bench import add_parser as add_bench_parser
from cli.common import (
    check_port_free,
    console,
    database_url,
    errors,
    explain_connection_errors,
)
from cli.common import settings as current_settings
from cli.dev import cmd_dev, follow_supervisor
from worker.routing import CONTROL_QUEUE, WEBHOOK_QUEUE, queue_for_partition
from worker.settings import SettingsError, mask_url, parse_worker_partitions


def _exec(argv: list[str]) -> NoReturn:
    """Replace this process, so signals from a supervisor (or `dev`) reach the server directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - argv is built here from fixed parts


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
GRANIAN_LOG_CONFIG = Path(api.__file__).with_name("granian_logging.json")
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


def dispatcher_command(settings: Settings, pid: int, concurrency: int | None = None) -> list[str]:
    """The webhook dispatcher: a Celery worker of its own app (worker.webhooks:app, which takes
    no partition leases) consuming only the webhook queue, with a thread per concurrent delivery
    (they wait on receivers, not on the CPU)."""
    return [
        sys.executable, "-m", "celery", "-A", "worker.webhooks:app", "worker",
        "-Q", WEBHOOK_QUEUE,
        "--pool", "threads",
        "--concurrency", str(concurrency or settings.webhook_concurrency),
        "--prefetch-multiplier", "1",
        "-n", f"ledgerq-dispatcher-{pid}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel", settings.log_level,
    ]  # fmt: skip


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

    url = database_url()
    with explain_connection_errors(url):
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

    url = database_url()
    try:
        text = Path(args.file).read_text(encoding="utf-8-sig")
    except OSError as exc:
        print(f"ledgerq: error: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 1
    engine = make_engine(url, pool_size=1)
    try:
        rows = parse_price_csv(text)
        with explain_connection_errors(url), engine.begin() as conn:
            count = import_prices(conn, rows)
    except PriceFileError as exc:
        print(f"ledgerq: error: {args.file}: {exc}; nothing was imported", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    console.print(f"imported {count} closes from {args.file}")
    return 0


def cmd_api(args: argparse.Namespace) -> int:
    settings = current_settings()
    if settings.api_server == "granian":
        # granian binds with SO_REUSEPORT: started on a port another granian serves, it would not
        # fail as uvicorn does but quietly take a share of that one's connections.
        check_port_free(settings.api_host, settings.api_port)
    _exec(api_command(settings))


def cmd_worker(args: argparse.Namespace) -> int:
    settings = current_settings()
    partitions = settings.worker_partitions
    if args.partitions is not None:
        # The worker process reads the mode (auto or fixed) from the environment, so pass it on.
        os.environ["LEDGERQ_WORKER_PARTITIONS"] = args.partitions
        partitions = parse_worker_partitions(args.partitions, settings.partitions)
    if args.concurrency > 1:
        # Correct either way (see DESIGN), but per-account FIFO needs one consumer per partition.
        errors.print("[yellow]warning:[/] --concurrency > 1 gives up per-account FIFO order")
    _exec(worker_command(settings, partitions, os.getpid(), args.pool, args.concurrency))


def cmd_dispatcher(args: argparse.Namespace) -> int:
    _exec(dispatcher_command(current_settings(), os.getpid(), args.concurrency))


def cmd_flower(args: argparse.Namespace) -> int:
    _exec(flower_command(current_settings()))


def cmd_beat(args: argparse.Namespace) -> int:
    settings = current_settings()
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
        help="run API, worker, webhook dispatcher and beat together (embedded PostgreSQL and "
        "Redis if no URLs are set)",
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

    dispatcher = sub.add_parser(
        "dispatcher",
        help="run the webhook dispatcher (Celery worker of the ledgerq.webhooks queue only)",
    )
    dispatcher.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="deliveries at once (threads; default LEDGERQ_WEBHOOK_CONCURRENCY)",
    )
    dispatcher.set_defaults(handler=cmd_dispatcher)

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
    follow_supervisor()
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except SettingsError as exc:
        print(f"ledgerq: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
