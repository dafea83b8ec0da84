"""Runs one bench workload end to end: setup, load, settle, measure, verify, report."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import secrets
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit
from uuid import UUID

import httpx
from rich.console import Console
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from bench import DEFAULT_ACCOUNTS, BenchError
from bench.baseline import Progress as BaselineProgress
from bench.baseline import prepare_world, run_baseline
from bench.batches import BatchSizeProbe, counts_url
from bench.live import LoadView, progress_bar, show_load
from bench.load import Plan, Recorder, lane_clients, make_client, run_load
from bench.metrics import (
    applied_summary,
    drain_summary,
    drain_timeline,
    http_summary,
    http_timeline,
    memory_timeline,
)
from bench.monitor import Sampler, Target, cpu_seconds, cpu_used, database_key, machine
from bench.report import plot, print_report, write_json
from bench.setup import (
    Setup,
    auth_headers,
    prefill,
    prepare_through_api,
    prepare_through_sql,
    ring,
    wait_until_terminal,
)
from bench.verify import verify
from bench.workloads import CURRENCY, OpSpec, RequestFactory, drain_specs
from worker.settings import mask_url
from worker.store import bench as store
from worker.store.bench import OpTimes, Scope

console = Console(highlight=False)
T = TypeVar("T")

DEFAULT_CONCURRENCY = 64
DEFAULT_BASELINE_THREADS = 4
WRK_POINTER = (
    "bench/README.md shows the wrk alternative: `ledgerq bench spread --duration 0 "
    "--write-accounts accounts.txt`, then `wrk -t2 -c64 -d30s -s bench/wrk/submit.lua URL "
    "-- accounts.txt USER:PASSWORD`, then `ledgerq bench verify`."
)


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BenchError as exc:
        console.print(f"[red]ledgerq bench: {exc}[/]")
        return 2
    except DBAPIError as exc:
        console.print(f"[red]ledgerq bench: database error: {exc.orig or exc}[/]")
        return 2
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


def _run(args: argparse.Namespace) -> int:
    _check(args)
    _configure_environment(args)
    engine = store.connect(args.database_url, pool_size=_threads(args) + 2)
    try:
        if not store.has_schema(engine):
            raise BenchError(
                f"{mask_url(args.database_url)} has no ledgerq tables: is it the target's "
                "database (and migrated, `ledgerq migrate`)?"
            )
        report = _dispatch(args, engine)
    finally:
        engine.dispose()
    print_report(console, report)
    if args.json:
        write_json(args.json, report)
        console.print(f"report written to {args.json}")
    if args.plot and report.get("timeline"):
        plot(args.plot, report)
        console.print(f"chart written to {args.plot}")
    return 0 if report["verification"]["passed"] else 1


def _check(args: argparse.Namespace) -> None:
    if not args.database_url:
        raise BenchError(
            "no database URL: pass --database-url or set LEDGERQ_DATABASE_URL "
            "(the bench reads timestamps and verifies the ledger in SQL)"
        )
    if args.workload == "drain" and not args.redis_url:
        raise BenchError(
            "drain rings the workers itself: pass --redis-url or set LEDGERQ_BROKER_URL / "
            "LEDGERQ_REDIS_URL to the target's broker"
        )
    if args.baseline and args.workload != "drain":
        raise BenchError("--baseline goes with the drain workload")
    if args.mix != "ordinary" and args.workload != "drain":
        raise BenchError("--mix goes with the drain workload")
    if args.accounts is not None and args.accounts < 1:
        raise BenchError("--accounts must be at least 1")
    if args.workload in ("transfers", "mixed") and (args.accounts or 2) < 2:
        raise BenchError(f"{args.workload} needs --accounts of at least 2")


def _configure_environment(args: argparse.Namespace) -> None:
    """worker.tasks.ring builds its Celery app from LEDGERQ_* variables: point them at the target."""
    from worker.settings import get_settings

    os.environ["LEDGERQ_DATABASE_URL"] = args.database_url
    if args.redis_url:
        os.environ["LEDGERQ_BROKER_URL"] = args.redis_url
        os.environ.setdefault("LEDGERQ_REDIS_URL", args.redis_url)
    os.environ["LEDGERQ_PARTITIONS"] = str(args.partitions)
    get_settings.cache_clear()


def _batch_probe(args: argparse.Namespace, notes: list[str]) -> BatchSizeProbe:
    """Reads the workers' batch-size counts in the target's LEDGERQ_REDIS_URL (or a Redis broker)."""
    return BatchSizeProbe(counts_url(os.environ.get("LEDGERQ_REDIS_URL"), args.redis_url), notes)


def _finished(ops: Sequence[OpTimes]) -> int:
    return sum(1 for o in ops if o.status != "pending")


def _threads(args: argparse.Namespace) -> int:
    if args.workload != "drain":
        return 1
    return int(args.concurrency or DEFAULT_BASELINE_THREADS)


def _dispatch(args: argparse.Namespace, engine: Engine) -> dict[str, Any]:
    run_id = "bench" + secrets.token_hex(4)
    report: dict[str, Any] = {
        "bench": "ledgerq",
        "workload": args.workload,
        "run_id": run_id,
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "target": {
            "url": args.url,
            "database": "/".join(str(p) for p in database_key(args.database_url)),
            "partitions": args.partitions,
        },
        "options": _options(args),
        "machine": machine(),
        "notes": [],
    }
    if args.workload == "verify":
        report.update(_verify_only(args, engine))
    elif args.workload == "drain":
        report.update(_drain(args, engine, run_id, report["notes"]))
    else:
        report.update(_run_async(_http(args, engine, run_id, report["notes"])))
    report["finished_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return report


def _options(args: argparse.Namespace) -> dict[str, Any]:
    keep = (
        "duration",
        "concurrency",
        "rate",
        "accounts",
        "batch",
        "ops",
        "baseline",
        "mix",
        "seed",
    )
    options = {k: getattr(args, k) for k in keep}
    options["accounts"] = _accounts(args)
    options["concurrency"] = args.concurrency or (
        _threads(args) if args.workload == "drain" else DEFAULT_CONCURRENCY
    )
    return options


def _accounts(args: argparse.Namespace) -> int:
    return int(args.accounts or DEFAULT_ACCOUNTS[args.workload])


def _rng(args: argparse.Namespace) -> random.Random:
    return random.Random(args.seed)  # load generation, not secrets


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    """uvloop when available: the client's event loop is the bench's bottleneck before the server's."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    except ImportError:
        return asyncio.run(coro)


def _target(args: argparse.Namespace) -> Target:
    port = urlsplit(args.url).port or (443 if args.url.startswith("https") else 80)
    return Target(database_key(args.database_url), port)


def _write_accounts(path: str | None, accounts: list[UUID]) -> None:
    if path:
        Path(path).write_text("".join(f"{a}\n" for a in accounts))
        console.print(f"{len(accounts):,} account ids written to {path}")


def _setup_report(setup: Setup) -> dict[str, Any]:
    return {
        "accounts": len(setup.accounts),
        "funded": setup.funded,
        "seconds": round(setup.seconds, 2),
        "principal_id": str(setup.principal_id),
    }


# --------------------------------------------------------------------------- HTTP workloads


async def _http(
    args: argparse.Namespace, engine: Engine, run_id: str, notes: list[str]
) -> dict[str, Any]:
    concurrency = args.concurrency or DEFAULT_CONCURRENCY
    headers = auth_headers(args.username, args.password, args.api_key)
    count = _accounts(args)
    console.print(f"setting up {count:,} funded accounts for {args.username!r} ...")
    async with make_client(args.url, 4, headers) as client:
        try:
            setup = await prepare_through_api(
                client, engine, args.username, args.password, args.api_key,
                count, f"{run_id} {args.workload}", f"{run_id}-f-",
            )  # fmt: skip
        except httpx.TransportError as exc:
            raise BenchError(f"cannot reach the API at {args.url}: {exc!r}") from exc
    _write_accounts(args.write_accounts, setup.accounts)
    result: dict[str, Any] = {"setup": _setup_report(setup)}
    _tidy(engine, notes)  # before --duration 0 returns too: wrk runs next
    if args.duration == 0:
        result["verification"] = verify(
            engine, Scope(setup.principal_id, setup.after_seq)
        ).as_dict()
        return result
    # Fresh connections for the load: the server may have closed the setup's idle ones.
    async with lane_clients(args.url, concurrency, headers) as clients:
        factory = RequestFactory(
            args.workload, setup.accounts, f"{run_id}-s-", args.batch, _rng(args)
        )
        plan = Plan(args.duration, args.rate, concurrency, factory.units_per_request)
        load_mark = store.max_seq(engine)
        sampler = Sampler(_target(args))
        batches = _batch_probe(args, notes)
        batches.start()
        rec = Recorder()
        t0 = store.db_clock(engine)
        start = time.monotonic()
        sampler.start(start)
        view = LoadView(args.workload, plan, rec, start)
        done = asyncio.Event()
        display = asyncio.create_task(
            show_load(console, view, done, lambda: store.pending_total(engine))
        )
        try:
            await run_load(clients, plan, factory, rec, start)
        finally:
            done.set()
            await display
        elapsed = max((s.done for s in rec.samples), default=args.duration)
    run_scope = Scope(setup.principal_id, load_mark, f"{run_id}-s-")
    if args.workload != "read":
        _settle(engine, run_scope, args.settle_timeout, notes)
    sampler.stop()
    http = http_summary(rec, plan, elapsed)
    ops = store.operation_times(engine, run_scope) if args.workload != "read" else []
    memory = sampler.summary()
    result.update(
        http=http,
        applied=applied_summary(ops, t0) if args.workload != "read" else None,
        batch_sizes=batches.finish(_finished(ops)),
        memory=memory,
        timeline=http_timeline(rec, ops, t0, memory_timeline(sampler.times, memory)),
    )
    notes.extend(_bottleneck_notes(plan, http, sampler))
    console.print("verifying the ledger ...")
    expected = setup.funded + (rec.ok if args.workload != "read" else 0)
    result["verification"] = verify(
        engine, Scope(setup.principal_id, setup.after_seq), expected
    ).as_dict()
    return result


def _tidy(engine: Engine, notes: list[str]) -> None:
    if store.vacuum_without_autovacuum(engine):
        note = (
            "autovacuum is off on the target's PostgreSQL: ran VACUUM (ANALYZE) on "
            f"{', '.join(store.VACUUMED_TABLES)} before the load, as autovacuum would have"
        )
        console.print(f"[yellow]{note}[/]")
        notes.append(note)


def _settle(engine: Engine, scope: Scope, timeout: float, notes: list[str]) -> None:
    """Wait (bounded) until every operation of the run is terminal, showing the remaining count."""
    total = store.pending_in(engine, scope)
    if total == 0:
        return
    with progress_bar(console) as bar:
        task = bar.add_task("settling: applying what is pending", total=total, rate="")
        remaining = wait_until_terminal(
            engine, scope, timeout, lambda left: bar.update(task, completed=total - left)
        )
    if remaining:
        notes.append(f"{remaining:,} operations still pending after --settle-timeout {timeout:g}s")


def _bottleneck_notes(plan: Plan, http: dict[str, Any], sampler: Sampler) -> list[str]:
    """Say who limited the achieved rate when it fell short of the offered one."""
    notes: list[str] = []
    if any(key.startswith("429") for key in http["errors"]):
        notes.append(
            "the target rate-limits the bench's principal (429): start its API with "
            "LEDGERQ_RATE_LIMIT=0 for benchmarks, or use an API key with a high limit (--api-key)."
        )
    if not plan.rate or http["achieved_rate"] >= 0.9 * plan.rate:
        return notes
    if http["failed"] > 0.01 * max(1, http["ok"] + http["failed"]):
        notes.append(
            f"achieved {http['achieved_rate']:,.0f} of {plan.rate:,.0f} offered/s with "
            f"{http['failed']:,} errors: the server is refusing or failing work (see errors)."
        )
        return notes
    service = http["service_ms"]["mean"] or 0.0
    lanes_needed = plan.rate / plan.units_per_request * service / 1000
    cpu = sampler.mean_cpu("bench")
    note = (
        f"achieved {http['achieved_rate']:,.0f} of {plan.rate:,.0f} offered/s without server "
        f"errors (mean service time {service:.1f} ms, bench process CPU {cpu:.0f}% of one core). "
    )
    if cpu >= 80:
        note += "The Python client is the bottleneck on this machine. "
    elif lanes_needed > 0.9 * plan.concurrency:
        note += (
            f"All {plan.concurrency} connections were busy (the offered rate needs about "
            f"{lanes_needed:,.0f} at that service time): either the server is saturated (its "
            "service time grew with the load) or --concurrency is too low. "
        )
    else:
        note += "The Python client could not keep the schedule: it is the bottleneck here. "
    notes.append(note + WRK_POINTER)
    return notes


# --------------------------------------------------------------------------- drain (+ baseline)


def _drain(
    args: argparse.Namespace, engine: Engine, run_id: str, notes: list[str]
) -> dict[str, Any]:
    count = _accounts(args)
    console.print(f"setting up {count:,} funded accounts for {args.username!r} in SQL ...")
    setup = prepare_through_sql(
        engine, args.username, args.password, count, f"{run_id} drain", f"{run_id}-f-",
        args.partitions,
    )  # fmt: skip
    _write_accounts(args.write_accounts, setup.accounts)
    specs = drain_specs(_rng(args), setup.accounts, args.ops, args.mix)
    sampler = Sampler(_target(args))
    result: dict[str, Any] = {"setup": _setup_report(setup)}

    _tidy(engine, notes)
    mark = store.max_seq(engine)
    batches = _batch_probe(args, notes)
    batches.start()
    console.print(f"prefilling {args.ops:,} pending operations in one transaction (COPY) ...")
    filled = prefill(engine, setup.principal_id, specs, f"{run_id}-d-", args.partitions)
    sampler.start()
    cpu_before = cpu_seconds(_target(args))
    ring(filled.partitions)
    scope = Scope(setup.principal_id, mark, f"{run_id}-d-")
    _watch_drain(engine, scope, args.ops, filled.committed_at, args.settle_timeout, notes)
    cpu = cpu_used(cpu_before, cpu_seconds(_target(args)))
    batched = store.operation_times(engine, scope)
    result["prefill"] = {
        "mix": args.mix,
        "types": dict(sorted(Counter(spec.type for spec in specs).items())),
        "operations": filled.count,
        "seconds": round(filled.seconds, 2),
        "rows_per_s": round(filled.count / filled.seconds, 0) if filled.seconds else None,
        "partitions": filled.partitions,
    }
    result["drain"] = drain_summary(batched, filled.committed_at)
    # CPU the drain cost, from the ring until the bench saw the last operation applied: less
    # sensitive than the rate to other load on the machine.
    result["drain"]["cpu_s"] = cpu
    result["drain"]["cpu_ms_per_op"] = {
        group: round(1000 * seconds / max(1, filled.count), 3) for group, seconds in cpu.items()
    }
    result["batch_sizes"] = batches.finish(_finished(batched))

    baseline_ops: list[OpTimes] = []
    baseline_start: float | None = None
    if args.baseline:
        baseline_ops, baseline_start, result["baseline"] = _baseline(
            args, engine, setup, specs, run_id, notes
        )
        if result["baseline"]["rate"]:
            result["speedup"] = round(result["drain"]["rate"] / result["baseline"]["rate"], 2)
    sampler.stop()
    memory = sampler.summary()
    result["memory"] = memory
    result["timeline"] = drain_timeline(
        batched, filled.committed_at, baseline_ops, baseline_start,
        memory_timeline(sampler.times, memory),
    )  # fmt: skip
    console.print("verifying the ledger ...")
    expected = setup.funded + args.ops * (2 if args.baseline else 1)
    result["verification"] = verify(
        engine, Scope(setup.principal_id, setup.after_seq), expected
    ).as_dict()
    return result


def _watch_drain(
    engine: Engine, scope: Scope, total: int, since: float, timeout: float, notes: list[str]
) -> None:
    with progress_bar(console) as bar:
        task = bar.add_task("batched workers", total=total, rate="")

        def tick(left: int) -> None:
            done = total - left
            seconds = max(time.time() - since, 1e-3)  # DB and local clocks: same machine, close
            bar.update(task, completed=done, rate=f"{done / seconds:,.0f} ops/s")

        remaining = wait_until_terminal(engine, scope, timeout, tick, poll=0.05)
    if remaining:
        notes.append(f"drain: {remaining:,} operations still pending after {timeout:g}s")


def _baseline(
    args: argparse.Namespace,
    engine: Engine,
    setup: Setup,
    specs: list[OpSpec],
    run_id: str,
    notes: list[str],
) -> tuple[list[OpTimes], float, dict[str, Any]]:
    threads = args.concurrency or DEFAULT_BASELINE_THREADS
    prepare_world(engine, range(args.partitions), CURRENCY)
    mark = store.max_seq(engine)
    progress = BaselineProgress()
    # Paused from before the prefill to the end: no sweeper ring can let a worker take these.
    with store.partitions_held(engine, range(args.partitions)):
        console.print(f"baseline: prefilling the same {len(specs):,} operations again ...")
        filled = prefill(engine, setup.principal_id, specs, f"{run_id}-b-", args.partitions)
        start = store.db_clock(engine)
        # Captures after their holds: one thread per account (plain deposits need no order).
        keys = (
            [spec.account_id for spec in specs] if any(s.hold is not None for s in specs) else None
        )
        elapsed = _baseline_with_progress(engine, filled.ids, threads, progress, keys)
    if progress.taken_by_workers:
        notes.append(
            f"baseline: {progress.taken_by_workers:,} operations were applied by the workers "
            "(a batch was running when the baseline paused them); they are outside its rate"
        )
    scope = Scope(setup.principal_id, mark, f"{run_id}-b-")
    _settle(engine, scope, args.settle_timeout, notes)  # what the workers took, if any
    ops = store.operation_times(engine, scope)
    mine = progress.applied + sum(progress.failed.values())
    return (
        ops,
        start,
        {
            "operations": len(specs),
            "threads": threads,
            "applied": progress.applied,
            "failed": dict(progress.failed),
            "taken_by_workers": progress.taken_by_workers,
            "retries": progress.retries,
            "elapsed_s": round(elapsed, 3),
            # Operations this baseline finished (succeeded or failed) per second of its run.
            "rate": round(mine / elapsed, 1) if elapsed else None,
        },
    )


def _baseline_with_progress(
    engine: Engine,
    ids: list[UUID],
    threads: int,
    progress: BaselineProgress,
    keys: list[UUID] | None = None,
) -> float:
    """Run the baseline threads from a helper thread while this one draws the progress bar."""
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["seconds"] = run_baseline(engine, ids, threads, progress, keys)
        except BaseException as exc:  # re-raised below, in the main thread
            outcome["error"] = exc

    runner = threading.Thread(target=work, name="baseline", daemon=True)
    with progress_bar(console) as bar:
        task = bar.add_task(f"one tx per operation ({threads} threads)", total=len(ids), rate="")
        wall = time.monotonic()
        runner.start()
        while runner.is_alive():
            runner.join(0.2)
            seconds = max(time.monotonic() - wall, 1e-3)
            bar.update(
                task, completed=progress.done, rate=f"{progress.applied / seconds:,.0f} ops/s"
            )
    if "error" in outcome:
        raise outcome["error"]
    return float(outcome["seconds"])


# --------------------------------------------------------------------------- verify


def _verify_only(args: argparse.Namespace, engine: Engine) -> dict[str, Any]:
    """Wait until nothing is pending anywhere, then check the whole ledger (e.g. after wrk)."""
    everything = Scope(None, 0)
    notes: list[str] = []
    _settle(engine, everything, args.settle_timeout, notes)
    console.print("verifying the whole ledger ...")
    return {"verification": verify(engine, everything).as_dict(), "notes": notes}
