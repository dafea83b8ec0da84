"""The live display: offered vs achieved rate, in-flight requests, errors and the server's backlog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from bench.load import Plan, Recorder

REFRESH = 0.5


@dataclass
class LoadView:
    """Renders a Recorder; `pending` is refreshed from PostgreSQL by the caller once a second."""

    workload: str
    plan: Plan
    rec: Recorder
    start: float
    pending: int | None = None
    phase: str = "load"
    _last: tuple[float, int] = (0.0, 0)
    _now_rate: float = 0.0
    _history: list[tuple[float, int]] = field(default_factory=list)

    def _rates(self) -> tuple[float, float]:
        now = time.monotonic() - self.start
        self._history.append((now, self.rec.ok))
        # Rate over the last second or so: the newest sample against one ~1 s older.
        while len(self._history) > 2 and now - self._history[1][0] >= 1.0:
            self._history.pop(0)
        t_old, ok_old = self._history[0]
        if now - t_old > 0.2:
            self._now_rate = (self.rec.ok - ok_old) / (now - t_old)
        average = self.rec.ok / now if now > 0 else 0.0
        return self._now_rate, average

    def render(self) -> Table:
        unit = "reads" if self.workload == "read" else "ops"
        elapsed = min(time.monotonic() - self.start, self.plan.duration)
        now_rate, average = self._rates()
        table = Table(title=f"ledgerq bench {self.workload}: {self.phase}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        table.add_row("elapsed", f"{elapsed:5.1f} / {self.plan.duration:g} s")
        offered = f"{self.plan.rate:,.0f} {unit}/s (open loop)" if self.plan.rate else "closed loop"
        table.add_row("offered", offered)
        style = ""
        if (
            self.plan.rate
            and self.phase == "load"
            and elapsed > 2
            and average < 0.9 * self.plan.rate
        ):
            style = "[yellow]"
        table.add_row("achieved", f"{style}{now_rate:,.0f} {unit}/s now, {average:,.0f} average")
        table.add_row("in flight", f"{self.rec.in_flight} / {self.plan.concurrency} connections")
        table.add_row(unit, f"{self.rec.ok:,} ok, {self.rec.failed:,} errors")
        if self.rec.errors:
            top = ", ".join(f"{k} x{v:,}" for k, v in self.rec.errors.most_common(4))
            table.add_row("errors", f"[red]{top}")
        if self.pending is not None:
            table.add_row("server pending", f"{self.pending:,} operations not yet applied")
        return table


async def show_load(
    console: Console, view: LoadView, done: asyncio.Event, pending: Callable[[], int]
) -> None:
    """Refresh the view until `done`; poll the server backlog in a thread once a second."""
    last_poll = 0.0
    with Live(view.render(), console=console, refresh_per_second=4, transient=False) as live:
        while not done.is_set():
            if time.monotonic() - last_poll >= 1.0:
                last_poll = time.monotonic()
                try:
                    view.pending = await asyncio.to_thread(pending)
                except Exception:
                    view.pending = None  # a failed poll only blanks the gauge
            live.update(view.render())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(done.wait(), REFRESH)
        live.update(view.render())
    console.print()  # a non-terminal console leaves the last render without its newline


def progress_bar(console: Console) -> Progress:
    """For drain and settle phases: done of total, with the rate so far."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=console,
    )
