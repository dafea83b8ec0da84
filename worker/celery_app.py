"""The Celery application (composition root of worker processes)."""

from __future__ import annotations

from celery import Celery

# Connects the worker_ready/worker_shutdown handlers that run partition leases in `auto` mode.
import worker.leases  # noqa: F401

app = Celery("ledgerq", include=["worker.tasks"])
app.config_from_object("worker.celeryconfig")
