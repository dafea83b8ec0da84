"""Turn raw observations (HTTP samples, operation timestamps) into the report's numbers and timelines."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from bench.load import Plan, Recorder
from bench.stats import Distribution, bucketed_values, buckets, peak, percentile, rate
from worker.store.bench import OpTimes


def distribution(values: Sequence[float]) -> dict[str, Any]:
    d = asdict(Distribution.of_seconds(values))
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()}


def http_summary(rec: Recorder, plan: Plan, elapsed: float) -> dict[str, Any]:
    """What the client saw. Latency counts from each request's due time; service time from its send."""
    samples = rec.samples
    units_sent = sum(s.ok + s.failed for s in samples)
    return {
        "requests": len(samples),
        "units_per_request": plan.units_per_request,
        "units_sent": units_sent,
        "ok": rec.ok,
        "failed": rec.failed,
        "missed_requests": rec.missed,
        "offered_rate": plan.rate or None,
        "achieved_rate": round(rate(rec.ok, elapsed), 1),
        "elapsed_s": round(elapsed, 3),
        "concurrency": plan.concurrency,
        "errors": dict(rec.errors.most_common()),
        "latency_ms": distribution([s.done - s.due for s in samples]),
        "service_ms": distribution([s.done - s.sent for s in samples]),
    }


def applied_summary(ops: Sequence[OpTimes], t0: float) -> dict[str, Any]:
    """What PostgreSQL recorded for the run's operations; t0 is the load's start on the DB clock."""
    statuses = Counter(o.status for o in ops)
    codes = Counter(o.error_code for o in ops if o.error_code)
    applied = [o for o in ops if o.applied is not None]
    last = max((o.applied for o in applied if o.applied is not None), default=t0)
    per_second = buckets(o.applied - t0 for o in applied if o.applied is not None)
    return {
        "operations": len(ops),
        "statuses": dict(statuses),
        "failure_codes": dict(codes),
        "applied": len(applied),
        # From the load's start to the last operation applied: the rate the whole pipeline sustained.
        "rate": round(rate(len(applied), last - t0), 1),
        "peak_rate": peak(per_second),
        "elapsed_s": round(last - t0, 3),
        "accepted_rate_server": round(
            rate(len(ops), max((o.created for o in ops), default=t0) - t0), 1
        ),
        "latency_ms": distribution(
            [o.applied - o.created for o in applied if o.applied is not None]
        ),
    }


def drain_summary(ops: Sequence[OpTimes], committed_at: float) -> dict[str, Any]:
    """Applied/s = operations / (last applied_at - commit time); latency counts from the commit."""
    applied = [o.applied for o in ops if o.applied is not None]
    last = max(applied, default=committed_at)
    first = min(applied, default=committed_at)
    per_second = buckets(t - committed_at for t in applied)
    return {
        "operations": len(ops),
        "statuses": dict(Counter(o.status for o in ops)),
        "failure_codes": dict(Counter(o.error_code for o in ops if o.error_code)),
        "applied": len(applied),
        "elapsed_s": round(last - committed_at, 3),
        "rate": round(rate(len(applied), last - committed_at), 1),
        "peak_rate": peak(per_second),
        "first_applied_after_ms": round((first - committed_at) * 1000, 1),
        "latency_from_commit_ms": distribution([t - committed_at for t in applied]),
    }


def _series(counts: dict[int, int], seconds: int) -> list[int]:
    return [counts.get(i, 0) for i in range(seconds)]


def _quantile_series(grouped: dict[int, list[float]], q: float, seconds: int) -> list[float | None]:
    out: list[float | None] = []
    for i in range(seconds):
        value = percentile(grouped.get(i, []), q)
        out.append(round(value * 1000, 2) if value is not None else None)
    return out


def http_timeline(
    rec: Recorder, ops: Sequence[OpTimes], t0: float, memory: dict[str, Any]
) -> dict[str, Any]:
    """Per 1-second bucket since the load started: client side by response time, server side by
    the operations' own timestamps (applied by applied_at, latency by created_at)."""
    end = max((s.done for s in rec.samples), default=0.0)
    end = max(end, *(o.applied - t0 for o in ops if o.applied is not None), 0.0)
    seconds = math.floor(end) + 1
    done = [(s.done, s) for s in rec.samples]
    ok = buckets(t for t, s in done for _ in range(s.ok))
    failed = buckets(t for t, s in done for _ in range(s.failed))
    http = bucketed_values((t, s.done - s.due) for t, s in done)
    applied = buckets(o.applied - t0 for o in ops if o.applied is not None)
    e2e = bucketed_values(
        (o.created - t0, o.applied - o.created) for o in ops if o.applied is not None
    )
    return {
        "t": list(range(seconds)),
        "ok": _series(ok, seconds),
        "failed": _series(failed, seconds),
        "http_p50_ms": _quantile_series(http, 0.5, seconds),
        "http_p99_ms": _quantile_series(http, 0.99, seconds),
        "applied": _series(applied, seconds),
        "e2e_p50_ms": _quantile_series(e2e, 0.5, seconds),
        "e2e_p99_ms": _quantile_series(e2e, 0.99, seconds),
        "memory": memory,
    }


def drain_timeline(
    batched: Sequence[OpTimes],
    committed_at: float,
    baseline: Sequence[OpTimes],
    baseline_start: float | None,
    memory: dict[str, Any],
) -> dict[str, Any]:
    """Applied per second since each phase started (the commit, or the baseline threads' start)."""
    applied = buckets(o.applied - committed_at for o in batched if o.applied is not None)
    base: dict[int, int] = {}
    if baseline_start is not None:
        base = buckets(o.applied - baseline_start for o in baseline if o.applied is not None)
    seconds = max([*applied, *base, 0]) + 1
    return {
        "t": list(range(seconds)),
        "applied": _phase_series(applied, seconds),
        "baseline_applied": _phase_series(base, seconds) if baseline_start is not None else None,
        "memory": memory,
    }


def _phase_series(counts: dict[int, int], seconds: int) -> list[int | None]:
    """Counts up to the phase's last busy second, None after it (a finished phase draws no line)."""
    last = max(counts, default=-1)
    return [counts.get(i, 0) if i <= last else None for i in range(seconds)]


def memory_timeline(sampler_times: Sequence[float], summary: dict[str, Any]) -> dict[str, Any]:
    """RSS per group over time (for the plot); the sampler runs once a second."""
    return {
        "t": [round(t, 2) for t in sampler_times],
        **{group: s["rss_mb"] for group, s in summary.items()},
    }
