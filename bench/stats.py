"""Percentiles and 1-second timelines over the bench's samples. Pure, no I/O."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Distribution:
    """Latency summary in milliseconds (nearest-rank percentiles)."""

    count: int
    p50: float | None
    p90: float | None
    p99: float | None
    max: float | None
    mean: float | None

    @classmethod
    def of_seconds(cls, values: Iterable[float]) -> Distribution:
        ordered = sorted(values)
        if not ordered:
            return cls(0, None, None, None, None, None)
        ms = [v * 1000.0 for v in ordered]
        return cls(
            count=len(ms),
            p50=_rank(ms, 0.50),
            p90=_rank(ms, 0.90),
            p99=_rank(ms, 0.99),
            max=ms[-1],
            mean=sum(ms) / len(ms),
        )


def _rank(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile: the smallest value with at least q of the values at or below it."""
    index = max(0, math.ceil(q * len(ordered)) - 1)
    return ordered[index]


def percentile(values: Iterable[float], q: float) -> float | None:
    ordered = sorted(values)
    return _rank(ordered, q) if ordered else None


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def buckets(times: Iterable[float], width: float = 1.0) -> dict[int, int]:
    """How many of `times` (seconds since the start) fall in each `width`-second bucket."""
    counts: dict[int, int] = {}
    for t in times:
        key = math.floor(t / width)
        counts[key] = counts.get(key, 0) + 1
    return counts


def bucketed_values(
    pairs: Iterable[tuple[float, float]], width: float = 1.0
) -> dict[int, list[float]]:
    """Group (time, value) pairs by the time's bucket."""
    grouped: dict[int, list[float]] = {}
    for t, value in pairs:
        grouped.setdefault(math.floor(t / width), []).append(value)
    return grouped


def peak(counts: dict[int, int], width: float = 1.0) -> float:
    """The busiest bucket, as a rate per second."""
    return max(counts.values(), default=0) / width
