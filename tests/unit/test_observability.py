"""Observability without I/O: completion routing to followers, worker metric helpers, log
rendering with bound context, request ids."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from api.logging import request_id_from
from api.waiters import CompletionWaiters
from worker import metrics
from worker.apply_loop import Completion
from worker.logging_setup import configure_logging
from worker.store.queries import new_id


def event(
    op: str, account: str, to: str | None = None, status: str = "succeeded"
) -> dict[str, Any]:
    return {
        "id": op,
        "status": status,
        "error_code": None,
        "account_id": account,
        "to_account_id": to,
        "type": "transfer" if to else "deposit",
    }


async def test_completions_reach_operation_waiters_and_both_accounts_of_a_transfer() -> None:
    waiters = CompletionWaiters()
    with (
        waiters.watching("op-1") as done,
        waiters.following("acc-a") as a,
        waiters.following("acc-b") as b,
        waiters.following("acc-c") as c,
    ):
        assert waiters.counts() == (1, 3)
        batch = [event("op-1", "acc-a", to="acc-b"), event("op-2", "acc-a")]
        waiters.dispatch(json.dumps(batch))
        assert done.is_set()
        # One list per batch, holding only the events touching the account, in order.
        assert [e["id"] for e in a.get_nowait()] == ["op-1", "op-2"]
        assert [e["id"] for e in b.get_nowait()] == ["op-1"]
        assert c.empty() and a.empty()
        waiters.dispatch(b"not json")  # ignored, logged
    assert waiters.counts() == (0, 0)


async def test_a_follower_far_behind_loses_events_not_the_others() -> None:
    waiters = CompletionWaiters()
    with waiters.following("acc") as slow:
        for i in range(slow.maxsize + 5):
            waiters.dispatch(json.dumps([event(f"op-{i}", "acc")]))
        assert slow.qsize() == slow.maxsize
        with waiters.following("acc") as fresh:
            waiters.dispatch(json.dumps([event("late", "acc")]))
            assert fresh.get_nowait()[0]["id"] == "late"
    assert waiters.counts() == (0, 0)


async def test_wait_until_reads_again_after_the_completion() -> None:
    waiters = CompletionWaiters()
    state = {"status": "pending"}

    async def read() -> str:
        return state["status"]

    async def complete() -> None:
        await asyncio.sleep(0.01)
        state["status"] = "succeeded"
        waiters.dispatch(json.dumps([event("op", "acc")]))

    task = asyncio.create_task(complete())
    assert await waiters.wait_until("op", 30, read, lambda s: s != "pending") == "succeeded"
    await task
    assert waiters.counts() == (0, 0)


# ----------------------------------------------------------------- worker metrics


def test_submit_time_comes_from_the_uuid7_operation_id() -> None:
    before = time.time()
    stamp = metrics.submitted_at(str(new_id()))
    assert stamp is not None and before - 0.002 <= stamp <= time.time() + 0.002
    assert metrics.submitted_at(str(uuid.uuid4())) is None
    assert metrics.submitted_at("not-an-id") is None


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_batch_counts_outcomes_latency_and_size() -> None:
    ops = [
        Completion(str(new_id()), "succeeded", None, "a", None, "deposit"),
        Completion(str(new_id()), "succeeded", None, "a", "b", "transfer"),
        Completion(str(new_id()), "failed", "insufficient_funds", "a", None, "withdrawal"),
    ]
    before = {
        "deposit": sample("ledgerq_operations_applied_total", type="deposit"),
        "failed": sample(
            "ledgerq_operations_failed_total", type="withdrawal", code="insufficient_funds"
        ),
        "latency": sample("ledgerq_operation_latency_seconds_count"),
        "batches": sample("ledgerq_batch_size_count"),
        "sizes": sample("ledgerq_batch_size_sum"),
    }
    metrics.record_batch(ops, time.time() + 1.0)
    assert sample("ledgerq_operations_applied_total", type="deposit") == before["deposit"] + 1
    assert (
        sample("ledgerq_operations_failed_total", type="withdrawal", code="insufficient_funds")
        == before["failed"] + 1
    )
    assert sample("ledgerq_operation_latency_seconds_count") == before["latency"] + 3
    assert sample("ledgerq_batch_size_count") == before["batches"] + 1
    assert sample("ledgerq_batch_size_sum") == before["sizes"] + 3


def test_recent_counts_are_read_back_per_partition() -> None:
    flat: list[bytes | str | int] = [b"a3", 5, b"f3", 2, "a0", 7, b"junk", 1]
    assert metrics.parse_recent(flat) == {3: (5, 2), 0: (7, 0)}


# ----------------------------------------------------------------- logs and request ids


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_logs_merge_bound_context_and_render_stdlib_lines_alike(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    with structlog.contextvars.bound_contextvars(request_id="r-1", operation_id="op-9"):
        structlog.get_logger("test").info("operation_accepted", type="deposit")
    structlog.get_logger("test").debug("hidden")
    logging.getLogger("celery.worker").info("worker %s ready.", "w1")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 2
    assert lines[0]["event"] == "operation_accepted"
    assert (lines[0]["request_id"], lines[0]["operation_id"]) == ("r-1", "op-9")
    assert lines[0]["level"] == "info" and lines[0]["timestamp"].endswith("Z")
    assert lines[1]["event"] == "worker w1 ready."
    assert (lines[1]["logger"], lines[1]["level"]) == ("celery.worker", "info")


def test_console_logs_are_readable_lines(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging("console", "DEBUG", stream=out)
    structlog.get_logger("test").debug("batch_applied", size=3)
    text = out.getvalue()
    assert "batch_applied" in text and "size=3" in text and not text.startswith("{")


@pytest.mark.parametrize(
    ("header", "kept"),
    [
        (b"abc-123", True),
        (b"4bf92f3577b34da6a3ce929d0e0e4736", True),
        (b"with space", False),
        (b"x" * 129, False),
        (b"", False),
    ],
)
def test_request_id_is_the_clients_when_safe(header: bytes, kept: bool) -> None:
    scope: Any = {"type": "http", "headers": [(b"x-request-id", header)]}
    request_id = request_id_from(scope)
    assert (request_id == header.decode()) is kept
    assert request_id_from(scope) == request_id  # one id for the whole request
    assert request_id_from({"type": "http", "headers": []}) != request_id  # type: ignore[typeddict-item]


def test_tracebacks_never_show_local_variables(restore_logging: None) -> None:
    for log_format in ("console", "json"):
        out = io.StringIO()
        configure_logging(log_format, "INFO", stream=out)
        password = "hunter2-correct-horse"
        try:
            raise ValueError("boom")
        except ValueError:
            structlog.get_logger("test").exception("unhandled_error")
        assert "boom" in out.getvalue() and password not in out.getvalue()
