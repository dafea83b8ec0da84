"""The Celery application (composition root of worker processes)."""

from __future__ import annotations

from typing import Any

from celery import Celery, signals

# Connects the worker_ready/worker_shutdown handlers that run partition leases in `auto` mode.
import worker.leases  # noqa: F401

app = Celery("ledgerq", include=["worker.tasks"])
app.config_from_object("worker.celeryconfig")


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    """Worker and beat log like the API (a receiver here also keeps Celery's own setup away)."""
    # Imported here: importing the Celery app must not read the environment.
    from worker.logging_setup import configure_logging
    from worker.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)


def _serve_metrics() -> None:
    from worker.metrics import serve_metrics
    from worker.settings import get_settings

    settings = get_settings()
    serve_metrics(settings.worker_metrics_host, settings.worker_metrics_port)


@signals.worker_process_init.connect
def _metrics_in_pool_child(**_: Any) -> None:
    """Prefork pool: tasks, and so the metrics, live in the pool child; it serves them."""
    _serve_metrics()


@signals.worker_ready.connect
def _warn_without_autovacuum(**_: Any) -> None:
    import structlog

    from worker.settings import get_settings
    from worker.store.migrate import check_autovacuum

    warning = check_autovacuum(get_settings().database_url)
    if warning is not None:
        structlog.get_logger(__name__).warning("autovacuum_off", detail=warning)


@signals.worker_ready.connect
def _metrics_in_main_process(sender: Any = None, **_: Any) -> None:
    """Solo and thread pools run tasks in the main process: serve the metrics from there."""
    pool = getattr(sender, "pool", None)
    if pool is not None and "prefork" not in type(pool).__module__:
        _serve_metrics()
