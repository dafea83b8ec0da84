"""The Celery application (composition root of worker processes)."""

from __future__ import annotations

from celery import Celery

app = Celery("ledgerq", include=["worker.tasks"])
app.config_from_object("worker.celeryconfig")
