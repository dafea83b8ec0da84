"""Present a finished report: a rich summary table, the JSON file, and the PNG chart."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from worker.metrics import BATCH_OVERFLOW


def _ms(d: dict[str, Any] | None) -> str:
    if not d or not d.get("count"):
        return "-"
    return f"p50 {d['p50']:,.1f}  p90 {d['p90']:,.1f}  p99 {d['p99']:,.1f}  max {d['max']:,.1f} ms"


def _rate(value: float | None, unit: str = "ops/s") -> str:
    return "-" if value is None else f"{value:,.0f} {unit}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in counts.items()) or "none"


def _http_rows(table: Table, report: dict[str, Any]) -> None:
    http = report["http"]
    unit = "reads/s" if report["workload"] == "read" else "ops/s"
    offered = _rate(http["offered_rate"], unit) if http["offered_rate"] else "closed loop"
    table.add_row("offered", f"{offered}, {http['concurrency']} connections")
    table.add_row(
        "achieved",
        f"{_rate(http['achieved_rate'], unit)} ({http['ok']:,} ok in {http['elapsed_s']:.1f} s)",
    )
    errors = f"{http['failed']:,}: {_counts(http['errors'])}" if http["failed"] else "none"
    table.add_row("errors", errors)
    if http["missed_requests"]:
        table.add_row("not sent", f"{http['missed_requests']:,} requests due but no free lane")
    table.add_row("HTTP latency", _ms(http["latency_ms"]))
    table.add_row("  service time", _ms(http["service_ms"]))


def _applied_rows(table: Table, applied: dict[str, Any]) -> None:
    table.add_row(
        "applied",
        f"{_rate(applied['rate'])} sustained, peak {_rate(applied['peak_rate'])}/1s "
        f"({applied['applied']:,} of {applied['operations']:,} in {applied['elapsed_s']:.1f} s)",
    )
    table.add_row("statuses", _counts(applied["statuses"]))
    if applied["failure_codes"]:
        table.add_row("failure codes", _counts(applied["failure_codes"]))
    table.add_row("submit->applied", _ms(applied["latency_ms"]))


def _drain_rows(table: Table, report: dict[str, Any]) -> None:
    drain = report["drain"]
    prefill = report["prefill"]
    table.add_row(
        "prefill",
        f"{prefill['operations']:,} pending operations in one transaction, "
        f"{prefill['seconds']:.1f} s ({prefill['rows_per_s']:,.0f} rows/s)",
    )
    if prefill.get("types"):
        table.add_row(f"  mix {prefill.get('mix', 'ordinary')}", _counts(prefill["types"]))
    table.add_row(
        "batched workers",
        f"[bold]{_rate(drain['rate'])}[/] ({drain['applied']:,} in {drain['elapsed_s']:.2f} s "
        f"after the commit), peak {_rate(drain['peak_rate'])}/1s",
    )
    table.add_row("  statuses", _counts(drain["statuses"]))
    if drain.get("cpu_ms_per_op"):
        table.add_row(
            "  CPU per operation",
            ", ".join(f"{group} {ms:.3f} ms" for group, ms in drain["cpu_ms_per_op"].items())
            + f" (total {sum(drain['cpu_ms_per_op'].values()):.3f} ms)",
        )
    table.add_row("  commit->applied", _ms(drain["latency_from_commit_ms"]))
    base = report.get("baseline")
    if base:
        table.add_row(
            "one tx per operation",
            f"[bold]{_rate(base['rate'])}[/] ({base['applied']:,} by {base['threads']} threads "
            f"in {base['elapsed_s']:.2f} s; {base['taken_by_workers']:,} taken by workers, "
            f"{base['retries']:,} retries)",
        )
        if report.get("speedup"):
            table.add_row("batching buys", f"[bold]{report['speedup']:.1f}x[/]")


BAR_WIDTH = 30


def bucket_label(field: str, previous: str | None) -> str:
    """A batch-size bucket as the sizes it holds: "1", "3-4", "257-500", ">500"."""
    if field == BATCH_OVERFLOW:
        return f">{previous}"
    low = int(previous) + 1 if previous is not None else 1
    return field if low == int(field) else f"{low}-{field}"


def batch_histogram(sizes: dict[str, Any], bar: str = "#") -> list[tuple[str, str]]:
    """One (label, bar and count) line per non-empty bucket of a report's batch_sizes."""
    buckets: dict[str, int] = sizes["buckets"]
    widest = max(buckets.values(), default=0)
    total = sum(buckets.values())
    lines: list[tuple[str, str]] = []
    previous: str | None = None
    for field, count in buckets.items():
        if count:
            width = max(1, round(BAR_WIDTH * count / widest))
            lines.append(
                (
                    bucket_label(field, previous),
                    f"{bar * width:<{BAR_WIDTH}} {count:,} ({100 * count / total:.0f}%)",
                )
            )
        previous = field
    return lines


def _size(value: int | None) -> str:
    return "-" if value is None else f"<={value:,}"


def _batch_rows(table: Table, sizes: dict[str, Any], bar: str) -> None:
    if not sizes["batches"]:
        table.add_row("batch sizes", "no batches counted")
        return
    table.add_row(
        "batch sizes",
        f"{sizes['batches']:,} batches, {sizes['operations']:,} operations, mean "
        f"{sizes['mean']:,.1f}, p50 {_size(sizes['p50'])}, p90 {_size(sizes['p90'])}, "
        f"p99 {_size(sizes['p99'])}",
    )
    for label, line in batch_histogram(sizes, bar):
        table.add_row(f"  {label} ops", line)


def _memory_rows(table: Table, memory: dict[str, Any]) -> None:
    for group, m in memory.items():
        pids = ",".join(str(p) for p in m["pids"][:6]) + ("..." if len(m["pids"]) > 6 else "")
        table.add_row(
            f"memory {group}",
            f"RSS start {m['rss_start_mb']:,.0f} MB, end {m['rss_end_mb']:,.0f} MB, "
            f"peak {m['rss_peak_mb']:,.0f} MB; CPU mean {m['cpu_mean_percent']:.0f}% "
            f"[dim](pids {pids})[/]",
        )


def print_report(console: Console, report: dict[str, Any]) -> None:
    table = Table(title=f"ledgerq bench {report['workload']}", show_header=False, expand=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    setup = report.get("setup")
    if setup:
        table.add_row(
            "setup",
            f"{setup['accounts']:,} account(s), {setup['funded']:,} funding deposits, "
            f"{setup['seconds']:.1f} s",
        )
    if report.get("http"):
        _http_rows(table, report)
    if report.get("applied"):
        _applied_rows(table, report["applied"])
    if report.get("drain"):
        _drain_rows(table, report)
    if report.get("batch_sizes"):
        encoding = (console.encoding or "").lower()
        _batch_rows(table, report["batch_sizes"], "\u2588" if encoding.startswith("utf") else "#")
    _memory_rows(table, report.get("memory") or {})
    if table.row_count:
        console.print(table)
    for note in report.get("notes", []):
        console.print(f"[yellow]note:[/] {note}")
    print_verification(console, report["verification"])


def print_verification(console: Console, verification: dict[str, Any]) -> None:
    table = Table(title="verification", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for check in verification["checks"]:
        mark = "[green]PASS[/]" if check["passed"] else "[red]FAIL[/]"
        table.add_row(mark, check["name"], check["detail"])
    console.print(table)
    if verification["passed"]:
        console.print("[bold green]PASS[/]: every operation terminal, money conserved")
    else:
        console.print("[bold red]FAIL[/]: the ledger does not verify (see above)")


def write_json(path: str, report: dict[str, Any]) -> None:
    Path(path).write_text(json.dumps(report, indent=1, default=str) + "\n")


def plot(path: str, report: dict[str, Any]) -> None:
    """Throughput and latency over time (and memory), one panel each, 1-second buckets; the
    batch-size histogram when the workers counted batches."""
    import matplotlib

    matplotlib.use("Agg")  # no display: render straight to the file
    import matplotlib.pyplot as plt

    timeline = report["timeline"]
    drain = report.get("drain") is not None
    sizes = report.get("batch_sizes")
    histogram = bool(sizes and sizes["batches"])
    panels = (2 if drain else 3) + histogram
    fig, axes = plt.subplots(panels, 1, figsize=(10, 3.2 * panels), sharex=False)
    title = f"ledgerq bench {report['workload']}"
    if not drain and report.get("http"):
        offered = report["http"]["offered_rate"]
        title += f" (offered {offered:,.0f}/s)" if offered else " (closed loop)"
    fig.suptitle(title)
    t = timeline["t"]
    ax = axes[0]
    if drain:
        ax.plot(t, timeline["applied"], label="batched workers: applied/s")
        if timeline.get("baseline_applied") is not None:
            ax.plot(t, timeline["baseline_applied"], label="one tx per operation: applied/s")
        ax.set_xlabel("seconds since the phase started")
    else:
        label = "reads/s" if report["workload"] == "read" else "accepted/s (HTTP)"
        ax.plot(t, timeline["ok"], label=label)
        if report["workload"] != "read":
            ax.plot(t, timeline["applied"], label="applied/s")
        if any(timeline["failed"]):
            ax.plot(t, timeline["failed"], label="errors/s", color="red")
        ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("per second")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    if not drain:
        ax = axes[1]
        if report["workload"] != "read":
            ax.plot(t, timeline["e2e_p50_ms"], label="submit->applied p50")
            ax.plot(t, timeline["e2e_p99_ms"], label="submit->applied p99")
        ax.plot(t, timeline["http_p99_ms"], label="HTTP p99", linestyle="--")
        ax.set_ylabel("ms")
        ax.set_yscale("log")
        ax.set_xlabel("seconds since the load started (latency by submit time)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(loc="best")
    if sizes and histogram:
        _plot_batch_sizes(axes[-2], sizes)
    ax = axes[-1]
    memory = timeline["memory"]
    for group, values in memory.items():
        if group != "t" and values:
            ax.plot(memory["t"], values, label=f"{group} RSS")
    ax.set_ylabel("MB")
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_batch_sizes(ax: Any, sizes: dict[str, Any]) -> None:
    labels: list[str] = []
    previous: str | None = None
    for field in sizes["buckets"]:
        labels.append(bucket_label(field, previous))
        previous = field
    counts = list(sizes["buckets"].values())
    if not counts[-1]:  # the overflow bucket, empty unless LEDGERQ_BATCH_SIZE > 500
        labels, counts = labels[:-1], counts[:-1]
    ax.bar(labels, counts)
    ax.set_xlabel("operations per batch")
    ax.set_ylabel("batches")
    ax.set_title(
        f"batch sizes: {sizes['batches']:,} batches, mean {sizes['mean']:,.1f}, "
        f"p50 {_size(sizes['p50'])}, p90 {_size(sizes['p90'])}",
        fontsize="medium",
    )
    ax.grid(alpha=0.3, axis="y")
