"""Logging for every ledgerq process (API, worker, beat): structlog, JSON lines or readable console.

structlog's own lines are rendered directly (fast path); lines from the standard library's loggers
(uvicorn, granian, Celery, SQLAlchemy, kombu) go through the same processors and renderer, so a
process writes one format only. Context bound with `structlog.contextvars` (the request id, an
operation id) is merged into every structlog line of that context.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

import structlog
from structlog.typing import Processor

from worker.routing import SWEEP_TASK, WEBHOOK_DISPATCH_TASK

# Beat sends these every second or two; a run that found nothing is not news.
ROUTINE_TASKS = (SWEEP_TASK, WEBHOOK_DISPATCH_TASK)

# Loggers that are chatty at INFO and say nothing an operator needs at that level.
_QUIET = {"kombu": logging.WARNING, "amqp": logging.WARNING, "urllib3": logging.WARNING}


# Celery's loggers of the lines each routine run writes at INFO (the sweep every
# LEDGERQ_SWEEP_INTERVAL seconds, the webhook dispatcher's ring every LEDGERQ_WEBHOOK_INTERVAL):
# beat sending the task, a worker receiving it (or discarding it, expired), and its success with
# the return value.
_SWEEP_LOGGERS = (
    "celery.beat",
    "celery.worker.strategy",
    "celery.app.trace",
    "celery.worker.request",
)
# What a run that found nothing returns: no partition rung, no delivery attempted.
_NOTHING_DONE = ("[]", "0")


def _routine_sweep(record: logging.LogRecord) -> bool:
    """A line of a routine run that found nothing: beat's "Sending due task", the worker's
    "received" (or "Discarding revoked task", an expired ring), and "succeeded" with nothing done.
    A run that did something keeps its "succeeded" line at INFO; failures are not INFO lines."""
    if record.levelno != logging.INFO:
        return False
    args = record.args
    if record.name == "celery.beat":
        return (
            isinstance(args, tuple)
            and len(args) == 2
            and args[1] in ROUTINE_TASKS
            and str(record.msg).startswith("Scheduler: Sending due task")
        )
    if record.name == "celery.worker.request":
        return (
            isinstance(args, tuple)
            and len(args) >= 1
            and args[0] in ROUTINE_TASKS
            and str(record.msg).startswith("Discarding revoked task")
        )
    data = getattr(record, "data", None)
    if not isinstance(data, dict) or data.get("name") not in ROUTINE_TASKS:
        return False
    if record.name == "celery.worker.strategy":
        return True
    return record.name == "celery.app.trace" and data.get("return_value") in _NOTHING_DONE


class RoutineSweepFilter(logging.Filter):
    """Logs routine runs (sweeps, webhook rings) at DEBUG: otherwise beat, the worker and the
    dispatcher write INFO lines every second or two and `ledgerq dev` shows little else."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _routine_sweep(record):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


def _renderer(log_format: str, stream: TextIO) -> Processor:
    if log_format == "json":
        return structlog.processors.JSONRenderer()
    # Plain tracebacks: a rich one prints each frame's local variables, passwords and keys included.
    return structlog.dev.ConsoleRenderer(
        colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
    )


def _shared_processors(log_format: str) -> list[Processor]:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if log_format == "json":
        # The console renderer prints tracebacks itself (prettier); JSON needs them as a string.
        shared.append(structlog.processors.format_exc_info)
    return shared


def _stdlib_handler(log_format: str, stream: TextIO) -> logging.Handler:
    """Renders the standard library's records like structlog's own lines."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_shared_processors(log_format)],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _renderer(log_format, stream),
            ],
        )
    )
    return handler


def granian_handler() -> logging.Handler:
    """The handler of granian's own loggers until the app configures logging (named by
    api/granian_logging.json, granian's --log-config): granian's supervisor process never builds
    the app, so its lines ("Listening at", a worker that died) would otherwise be granian's plain
    lines on stdout. Reads LEDGERQ_LOG_FORMAT itself; `ledgerq api` has checked it."""
    return _stdlib_handler(os.environ.get("LEDGERQ_LOG_FORMAT") or "console", sys.stderr)


def configure_logging(log_format: str, log_level: str, stream: TextIO | None = None) -> None:
    """Configure structlog and the root logger of this process (idempotent: safe to call twice)."""
    stream = stream or sys.stderr
    level = logging.getLevelNamesMapping().get(log_level.upper(), logging.INFO)
    structlog.configure(
        processors=[*_shared_processors(log_format), _renderer(log_format, stream)],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=True,
    )

    handler = _stdlib_handler(log_format, stream)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(max(quiet, level))
    for name in _SWEEP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RoutineSweepFilter) for f in logger.filters):
            logger.addFilter(RoutineSweepFilter())
    # uvicorn and granian configure their own handlers before the app exists; send their lines to
    # ours. (Their access logs stay as they were told: `ledgerq api` turns them off, requests log
    # themselves.)
    for name in ("uvicorn", "_granian", "granian.access"):
        server = logging.getLogger(name)
        server.handlers.clear()
        server.propagate = True
