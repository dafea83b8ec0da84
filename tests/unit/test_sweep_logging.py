"""Routine sweeps log at DEBUG: beat and the worker would otherwise write three INFO lines every
LEDGERQ_SWEEP_INTERVAL seconds. A sweep that rang partitions stays at INFO."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from worker.logging_setup import configure_logging
from worker.routing import DRAIN_TASK, SWEEP_TASK


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)


def _celery_lines(task: str, return_value: str) -> None:
    """What Celery logs for one scheduled task, the way it logs it (celery/beat.py,
    celery/worker/strategy.py, celery/app/trace.py)."""
    logging.getLogger("celery.beat").info("Scheduler: Sending due task %s (%s)", "sweep", task)
    received: dict[str, Any] = {"id": "t-1", "name": task, "args": "()", "kwargs": "{}"}
    logging.getLogger("celery.worker.strategy").info(
        "Task %(name)s[%(id)s] received", received, extra={"data": received}
    )
    done: dict[str, Any] = {
        "id": "t-1",
        "name": task,
        "return_value": return_value,
        "runtime": 0.01,
    }
    logging.getLogger("celery.app.trace").info(
        "Task %(name)s[%(id)s] succeeded in %(runtime)ss: %(return_value)s",
        done,
        extra={"data": done},
    )


def _lines(level: str, task: str, return_value: str) -> list[dict[str, Any]]:
    out = io.StringIO()
    configure_logging("json", level, stream=out)
    _celery_lines(task, return_value)
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_sweep_that_found_nothing_is_not_logged_at_info(restore_logging: None) -> None:
    assert _lines("INFO", SWEEP_TASK, "[]") == []


def test_a_sweep_that_rang_partitions_says_so_at_info(restore_logging: None) -> None:
    lines = _lines("INFO", SWEEP_TASK, "[2, 5]")
    assert [(line["logger"], line["level"]) for line in lines] == [("celery.app.trace", "info")]
    assert lines[0]["event"].endswith(": [2, 5]")


def test_routine_sweeps_show_at_debug(restore_logging: None) -> None:
    lines = _lines("DEBUG", SWEEP_TASK, "[]")
    assert [line["level"] for line in lines] == ["debug", "debug", "debug"]


def test_other_tasks_keep_their_info_lines(restore_logging: None) -> None:
    lines = _lines("INFO", DRAIN_TASK, "0")
    assert [line["level"] for line in lines] == ["info", "info", "info"]


def test_configuring_twice_adds_one_filter(restore_logging: None) -> None:
    configure_logging("json", "INFO", stream=io.StringIO())
    configure_logging("json", "INFO", stream=io.StringIO())
    assert len(logging.getLogger("celery.app.trace").filters) == 1
