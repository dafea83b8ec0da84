"""All Celery configuration in one place: broker behaviour, queues, routes and the beat schedule.

Loaded lazily by worker/celery_app.py, so importing the app reads no environment.
"""

from __future__ import annotations

from kombu import Queue

from worker.routing import (
    CONTROL_QUEUE,
    SWEEP_TASK,
    WEBHOOK_QUEUE,
    queue_for_partition,
    route_task,
)
from worker.settings import get_settings

_settings = get_settings()

broker_url = _settings.broker_url
broker_connection_retry_on_startup = True

# Why these broker settings:
# - acks_late: a doorbell is acknowledged only after its drain committed, so a worker that dies
#   mid-drain leaves the message to be delivered again (the drain is idempotent: it re-reads
#   PostgreSQL and finds only what is still pending).
# - reject_on_worker_lost: a pool child killed by a signal requeues its message instead of acking it.
# - prefetch_multiplier=1: a worker holds no doorbells of other partitions while it drains one.
# - visibility_timeout (Redis broker only; RabbitMQ requeues a dead consumer's unacked messages
#   when its channel closes): an unacked message of a vanished worker comes back after five
#   minutes; a drain slice lasts about a second, so a live worker never sees its own message twice.
#   The sweeper re-rings stale partitions within seconds, so this is a backstop, not the path.
# - cancel_long_running_tasks_on_connection_loss off (and said, to keep Celery from warning): a
#   drain running when the broker connection drops keeps going and commits its batches; the copy
#   the broker redelivers waits on the partition's advisory lock and finds only what is left.
#   Cancelling would kill the drain mid-transaction and redo the same work.
# With RabbitMQ, mind its consumer_timeout (30 min by default) only if a drain could run that long;
# a drain yields after about a second.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_cancel_long_running_tasks_on_connection_loss = False
# Celery's consumer, corrected so a lost Redis connection with a task running does not end the
# worker (Celery 5.7.0; see worker/consumer.py).
worker_consumer = "worker.consumer:Consumer"
broker_transport_options = (
    {"visibility_timeout": 300}
    if broker_url.startswith(("redis://", "rediss://", "unix://"))
    else {}
)

# Results live in PostgreSQL (the operation's status); no result backend.
task_ignore_result = True
task_serializer = "json"
accept_content = ["json"]
timezone = "UTC"
enable_utc = True
# Logging is ours (worker/logging_setup.py, configured from the setup_logging signal in
# worker/celery_app.py): Celery must neither replace the root logger's handlers nor turn stdout
# writes into "WARNING/MainProcess" log records.
worker_hijack_root_logger = False
worker_redirect_stdouts = False
# Task events off: publishing them cost the worker's main process about 16% of its time and the
# API (task-sent) about 10% of its CPU, for a monitor that usually is not there. Flower turns the
# workers' task events on when it runs (the enable_events control command, see cli/main.py); it
# needs no task-sent events (task-received names the task).
worker_send_task_events = False
task_send_sent_event = False

task_default_queue = CONTROL_QUEUE
task_queues = [
    Queue(CONTROL_QUEUE),
    *(Queue(queue_for_partition(p)) for p in range(_settings.partitions)),
    # Consumed by `ledgerq dispatcher` only (worker/webhooks.py).
    Queue(WEBHOOK_QUEUE),
]
task_routes = (route_task,)

beat_schedule = {
    "sweep-pending": {
        "task": SWEEP_TASK,
        "schedule": _settings.sweep_interval,
        # A sweep that waited longer than its interval is stale; the next one will come.
        "options": {"expires": _settings.sweep_interval},
    },
    # No ring of the webhook dispatcher: each dispatcher looks at PostgreSQL itself every
    # LEDGERQ_WEBHOOK_INTERVAL (worker/webhooks.py). Beat's rings piled up in the Redis broker
    # (expired messages leave a queue only when consumed) wherever no dispatcher ran.
}
