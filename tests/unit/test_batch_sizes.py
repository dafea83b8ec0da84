"""Batch sizes without I/O: the workers' per-size buckets, reading and differencing the Redis hash,
the bench's summary numbers and its text histogram."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from bench.batches import counts_url
from bench.report import batch_histogram, bucket_label
from worker import metrics
from worker.apply_loop import Completion
from worker.metrics import BATCH_FIELDS, BatchSizes, batch_bucket, parse_batch_sizes


@pytest.mark.parametrize(
    ("size", "field"),
    [
        (1, "1"),
        (2, "2"),
        (3, "4"),
        (4, "4"),
        (5, "8"),
        (16, "16"),
        (17, "32"),
        (129, "256"),
        (256, "256"),
        (257, "500"),
        (500, "500"),
        (501, "inf"),
        (10_000, "inf"),
    ],
)
def test_a_batch_counts_in_the_smallest_bucket_that_holds_it(size: int, field: str) -> None:
    assert batch_bucket(size) == field


def test_an_empty_batch_has_no_bucket() -> None:
    with pytest.raises(ValueError, match="at least one"):
        batch_bucket(0)


def counted(*sizes: int) -> dict[bytes, bytes]:
    """The hash the workers' script leaves after counting these batches (as HGETALL answers)."""
    fields = Counter(batch_bucket(s) for s in sizes)
    fields[metrics.BATCH_OPERATIONS] = sum(sizes)
    return {k.encode(): str(v).encode() for k, v in fields.items()}


def test_the_hash_parses_to_every_bucket_in_order_and_the_operations() -> None:
    raw: dict[Any, Any] = {**counted(1, 1, 3, 500, 700), b"junk": b"9", "8": 2}
    sizes = parse_batch_sizes(raw)
    assert list(sizes.buckets) == list(BATCH_FIELDS)
    assert sizes.buckets["1"] == 2 and sizes.buckets["4"] == 1 and sizes.buckets["8"] == 2
    assert sizes.buckets["500"] == 1 and sizes.buckets["inf"] == 1
    assert sizes.batches == 7
    assert sizes.operations == 1205
    assert parse_batch_sizes({}) == BatchSizes.empty()


def test_a_run_is_the_difference_of_two_snapshots() -> None:
    before = parse_batch_sizes(counted(1, 2, 200))
    after = parse_batch_sizes(counted(1, 2, 200, 5, 6, 7, 1))
    run = after.since(before)
    assert run.buckets["8"] == 3 and run.buckets["1"] == 1 and run.buckets["256"] == 0
    assert (run.batches, run.operations) == (4, 19)
    assert after.since(after) == BatchSizes.empty()


def test_counts_that_went_down_mean_a_reset_so_everything_after_is_new() -> None:
    before = parse_batch_sizes(counted(100, 100, 100))
    after = parse_batch_sizes(counted(3))  # Redis restarted empty in between
    assert after.since(before) == after


def test_mean_is_exact_and_percentiles_are_bucket_bounds() -> None:
    # 5 batches of 1, 3 of 3-4, 2 of 5-8.
    sizes = parse_batch_sizes(counted(1, 1, 1, 1, 1, 3, 4, 4, 6, 8))
    assert sizes.mean == pytest.approx(30 / 10)
    assert sizes.percentile(0.5) == 1  # the 5th batch
    assert sizes.percentile(0.6) == 4  # the 6th
    assert sizes.percentile(0.9) == 8
    assert sizes.percentile(1.0) == 8
    assert sizes.percentile(0.0) == 1
    assert BatchSizes.empty().percentile(0.5) is None
    assert BatchSizes.empty().mean is None
    # Above the last bound there is no bound to give.
    assert parse_batch_sizes(counted(600)).percentile(0.5) is None


def test_the_report_shape_is_plain_json() -> None:
    report = parse_batch_sizes(counted(2, 5, 5, 5, 40)).as_dict()
    assert json.loads(json.dumps(report)) == report
    assert report["buckets"] == {f: 0 for f in BATCH_FIELDS} | {"2": 1, "8": 3, "64": 1}
    assert (report["batches"], report["operations"], report["mean"]) == (5, 57, 11.4)
    assert (report["p50"], report["p90"], report["p99"]) == (8, 64, 64)


def test_the_text_histogram_has_a_line_per_non_empty_bucket() -> None:
    assert [bucket_label(f, p) for f, p in [("1", None), ("2", "1"), ("8", "4")]] == [
        "1",
        "2",
        "5-8",
    ]
    assert bucket_label("500", "256") == "257-500" and bucket_label("inf", "500") == ">500"
    sizes = parse_batch_sizes(counted(*[1] * 10, 3, 3, 3, 3, 3, 100)).as_dict()
    lines = batch_histogram(sizes)
    assert [label for label, _ in lines] == ["1", "3-4", "65-128"]
    bars = [line.split()[0] for _, line in lines]
    assert [len(b) for b in bars] == [30, 15, 3]
    assert lines[0][1].endswith("10 (62%)") and lines[2][1].endswith("1 (6%)")


def test_the_bench_reads_counts_only_from_a_redis_url() -> None:
    assert counts_url(None, "redis://h:6379/3") == "redis://h:6379/3"
    assert counts_url("redis://a/1", "redis://b/2") == "redis://a/1"
    assert counts_url("amqp://guest@rabbit//", "rediss://r/0") == "rediss://r/0"
    assert counts_url("amqp://guest@rabbit//", None) is None


class FakeRedis:
    """Records what count_recent hands the script; no server."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def register_script(self, source: str) -> Any:
        assert "HINCRBY', KEYS[2]" in source

        def run(keys: list[str], args: list[Any]) -> int:
            self.calls.append({"keys": keys, "args": args})
            return 0

        return run


def completion(status: str = "succeeded") -> Completion:
    return Completion(
        id="op", status=status, error_code=None, type="deposit", account_id="a", to_account_id=None
    )


def test_a_batch_is_counted_by_size_in_the_recent_counts_round_trip() -> None:
    client: Any = FakeRedis()
    metrics.count_recent(client, 3, [completion()] * 4 + [completion("failed")] * 2)
    metrics.count_recent(client, 3, [])  # nothing to count, no round trip
    assert client.calls == [
        {
            "keys": [metrics.RECENT_PREFIX, metrics.BATCH_SIZES_KEY],
            "args": [3, 4, 2, metrics.RECENT_WINDOW * 2, "8", metrics.BATCH_OPERATIONS],
        }
    ]
