"""`ledgerq bench`: a load generator and verifier for a running ledgerq (options and wiring only).

Heavy imports (httpx, SQLAlchemy, matplotlib) happen in `bench.runner` when the command runs,
so `ledgerq api|worker|beat` do not pay for them. The bench's own packages are not the service's:
they are the `bench` extra (`pip install 'ledgerq[bench]'`; `uv sync` installs them with the dev
group). It reaches the database only through worker/store/ (bench.py there, and the ledger's
functions for the baseline).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from typing import Any

from worker.settings import SettingsError


class BenchError(Exception):
    """The bench cannot run as asked (target unreachable, bad credentials, missing URL)."""


# The drain's mixes (bench.workloads.DRAIN_MIXES; kept here so `ledgerq --help` imports nothing).
DRAIN_MIXES = ("ordinary", "holds")

WORKLOADS = ("spread", "hot", "transfers", "mixed", "read", "drain", "verify")

# Accounts per workload when --accounts is not given: hot is one account by definition.
DEFAULT_ACCOUNTS = {
    "spread": 10_000,
    "hot": 1,
    "transfers": 10_000,
    "mixed": 10_000,
    "read": 10_000,
    "drain": 10_000,
    "verify": 0,
}
# A throwaway user for load tests on a bench database; set LEDGERQ_BENCH_PASSWORD anywhere else.
DEFAULT_PASSWORD = "bench-password-not-secret"  # noqa: S105

EPILOG = """\
examples:
  ledgerq bench spread --rate 2000 --duration 20 --json spread.json --plot spread.png
  ledgerq bench hot --rate 0 --concurrency 64          # closed loop: as fast as it goes
  ledgerq bench hot --accounts 10 --rate 2000
  ledgerq bench drain --ops 100000 --baseline          # batched workers vs one transaction per op
  ledgerq bench drain --ops 20000 --mix holds          # a third of them holds and captures
  ledgerq bench spread --duration 0 --write-accounts accounts.txt   # setup only, for wrk
  ledgerq bench verify                                 # wait for pending work, check the ledger

The database URL is needed for setup, timestamps and verification; the Redis (broker) URL for
`drain`, which rings the partitions' doorbells itself. See bench/README.md (wrk alternative).
"""


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def _count(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {raw}")
    return value


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `bench` on the `ledgerq` subcommand parser."""
    bench: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="load-test a running ledgerq, then verify the ledger (spread, hot, transfers, read, drain)",
        description="Generate load against a running ledgerq, measure submit and apply rates and "
        "latencies, then verify that every operation is terminal and the ledger conserves money.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("workload", choices=WORKLOADS, help="what to run")
    target = bench.add_argument_group("target")
    target.add_argument("--url", default="http://127.0.0.1:8000", help="API base URL")
    target.add_argument("--username", default="bench", help="registered if it does not exist")
    target.add_argument(
        "--password",
        default=os.environ.get("LEDGERQ_BENCH_PASSWORD", DEFAULT_PASSWORD),
        help="(default $LEDGERQ_BENCH_PASSWORD or a fixed bench password)",
    )
    target.add_argument(
        "--api-key", help="send X-API-Key instead of HTTP Basic (needs a server that has API keys)"
    )
    target.add_argument(
        "--database-url",
        default=os.environ.get("LEDGERQ_DATABASE_URL"),
        help="PostgreSQL of the target, for setup, timestamps and verification "
        "(default $LEDGERQ_DATABASE_URL)",
    )
    target.add_argument(
        "--redis-url",
        default=os.environ.get("LEDGERQ_BROKER_URL") or os.environ.get("LEDGERQ_REDIS_URL"),
        help="Celery broker of the target, to ring partitions (drain, funding) "
        "(default $LEDGERQ_BROKER_URL or $LEDGERQ_REDIS_URL)",
    )
    target.add_argument(
        "--partitions",
        type=int,
        default=int(os.environ.get("LEDGERQ_PARTITIONS") or 8),
        help="the target's LEDGERQ_PARTITIONS (default $LEDGERQ_PARTITIONS or 8)",
    )

    load = bench.add_argument_group("load")
    load.add_argument(
        "--duration",
        type=_positive_float,
        default=20.0,
        metavar="S",
        help="seconds of load (0: set up, write --write-accounts, stop)",
    )
    load.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="in-flight HTTP requests = connections (default 64); baseline threads (default 4)",
    )
    load.add_argument(
        "--rate",
        type=_positive_float,
        default=1000.0,
        metavar="R",
        help="offered operations (or reads) per second, open loop: sends are scheduled at fixed "
        "intervals whatever the responses, and latency counts from the scheduled time. "
        "0 = closed loop, as fast as the connections go (default 1000)",
    )
    load.add_argument(
        "--accounts",
        type=int,
        default=None,
        metavar="N",
        help="accounts to spread over (default 10,000; hot: 1, try 10)",
    )
    load.add_argument(
        "--batch",
        type=_count,
        default=0,
        metavar="N",
        help="submit N operations per POST /api/v1/operations/batch instead of single POSTs",
    )
    load.add_argument(
        "--ops", type=_count, default=100_000, metavar="N", help="drain: operations to prefill"
    )
    load.add_argument(
        "--baseline",
        action="store_true",
        help="drain: also apply the same operations the classic way (one transaction per "
        "operation, --concurrency threads) and report both rates",
    )
    load.add_argument(
        "--mix",
        choices=DRAIN_MIXES,
        default="ordinary",
        help="drain: what to prefill: ordinary (deposits and withdrawals, 50/50) or holds (a "
        "third holds and captures of those holds, the rest as ordinary) (default ordinary)",
    )
    load.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    load.add_argument(
        "--settle-timeout",
        type=_positive_float,
        default=180.0,
        metavar="S",
        help="most seconds to wait after the load for every operation to be terminal",
    )

    out = bench.add_argument_group("output")
    out.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    out.add_argument("--plot", metavar="PNG", help="write a chart of throughput and latency")
    out.add_argument(
        "--write-accounts",
        metavar="FILE",
        help="write the bench's account ids, one per line (input of bench/wrk/submit.lua)",
    )
    bench.set_defaults(handler=_run)
    return bench


EXTRA = "bench"
# The distributions of the extra and the module each provides.
PACKAGES = {"httpx": "httpx", "psutil": "psutil", "matplotlib": "matplotlib"}


def missing_packages() -> list[str]:
    """The extra's distributions that cannot be imported here (none when it is installed)."""
    return [name for name, module in PACKAGES.items() if importlib.util.find_spec(module) is None]


def _run(args: argparse.Namespace) -> int:
    if absent := missing_packages():
        raise SettingsError(
            f"`ledgerq bench` needs the `{EXTRA}` extra ({', '.join(absent)} not installed): "
            f"`pip install 'ledgerq[{EXTRA}]'`, or `uv sync` in a checkout"
        )
    from bench.runner import run

    return run(args)
