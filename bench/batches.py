"""Batch sizes over a run: the workers' cumulative per-size counts in Redis (worker.metrics), read
before and after the load; the report holds the difference.

The counts are the whole deployment's: anything else the workers apply meanwhile (another client,
the sweeper's stragglers) is in them too. On a dedicated bench target that is only the run.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import redis

from worker.metrics import BatchSizes, read_batch_sizes

REDIS_SCHEMES = ("redis", "rediss", "unix")


def counts_url(*candidates: str | None) -> str | None:
    """The first Redis URL among the candidates (LEDGERQ_REDIS_URL, then the broker's): the
    workers count in LEDGERQ_REDIS_URL, and a broker URL is it only when it is Redis too."""
    for url in candidates:
        if url and urlsplit(url).scheme in REDIS_SCHEMES:
            return url
    return None


class BatchSizeProbe:
    """start() before the load, finish() once the run's operations are final."""

    def __init__(self, url: str | None, notes: list[str]) -> None:
        self._notes = notes
        self._client = redis.Redis.from_url(url, socket_timeout=5) if url else None
        self._before: BatchSizes | None = None
        if url is None:
            notes.append(
                "batch sizes not measured: no Redis URL (set LEDGERQ_REDIS_URL to the target's, "
                "where its workers count them)"
            )

    def _read(self) -> BatchSizes | None:
        if self._client is None:
            return None
        try:
            return read_batch_sizes(self._client)
        except redis.RedisError as exc:
            self._notes.append(f"batch sizes not measured: Redis: {exc}")
            self._client = None
            return None

    def start(self) -> None:
        self._before = self._read()

    def finish(self, operations: int, wait: float = 3.0) -> dict[str, Any] | None:
        """The batches counted since start(). A worker counts a batch just after its commit, so
        wait (at most `wait` s) until the counts hold the `operations` the run saw finish."""
        try:
            return self._finish(operations, wait)
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _finish(self, operations: int, wait: float) -> dict[str, Any] | None:
        if self._before is None:
            return None
        deadline = time.monotonic() + wait
        while True:
            after = self._read()
            if after is None:
                return None
            sizes = after.since(self._before)
            if sizes.operations >= operations or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if sizes.operations < operations:
            self._notes.append(
                f"batch sizes: the workers counted {sizes.operations:,} operations of the "
                f"{operations:,} the run finished (a worker older than the counts, or Redis "
                "errors: see its recent_count_failed logs)"
            )
        return sizes.as_dict()
