"""Celery's worker consumer with one correction, for every ledgerq worker (partition workers and
the webhook dispatcher; worker/celeryconfig.py names it in `worker_consumer`).

Celery 5.7.0, on a lost broker connection, first collects the connection (which drops the
transport's reference to its client) and then closes it. With the Redis transport, closing the
channel restores the messages delivered but not yet acknowledged, and builds a client for that
from the reference just dropped: AttributeError ("'NoneType' object has no attribute
'hostname'"), logged as "Unrecoverable error", and the worker exits. That happens whenever a
task with late acknowledgement (a drain, a webhook dispatch) runs at the moment Redis goes away;
the task's own acknowledgement fails the same way later.

Closing without the collect is what Celery did before 5.7: the restore fails with a connection
error, which Celery ignores (the Redis broker gives unacknowledged messages back after the
visibility timeout, and a drain is idempotent anyway), and a late acknowledgement of a task still
running either reaches the new Redis or is logged as "Couldn't ack". The sockets are already
bounded by Celery's socket timeout before the close, so it cannot hang on them.

tests/integration/test_webhooks.py::test_the_dispatcher_outlives_a_redis_sigkill_with_a_delivery_
in_flight fails without this. Remove it once a Celery release passes that test on its own.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer


def _no_collect(socket_timeout: float | None = None) -> None:
    return None


class Consumer(CeleryConsumer):
    def on_connection_error_after_connected(self, exc: Exception) -> Any:
        if self.connection is not None:
            self.connection.collect = _no_collect
        return super().on_connection_error_after_connected(exc)
