"""Lets a request wait for an operation to finish: fed by the worker's completion events on Redis."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")


class CompletionWaiters:
    """In-process registry of requests waiting on operation ids.

    The event only wakes the waiter; the answer is always re-read from PostgreSQL, so a lost or
    duplicated event can delay an answer but never change it.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}

    def dispatch(self, payload: bytes | str) -> None:
        try:
            events = json.loads(payload)
        except ValueError:
            log.warning("completion_event_malformed")
            return
        for event in events:
            for waiter in self._waiting.get(str(event.get("id")), ()):
                waiter.set()

    async def wait_until(
        self,
        operation_id: str,
        seconds: float,
        read: Callable[[], Awaitable[T]],
        done: Callable[[T], bool],
    ) -> T:
        """Read, and if not done, wait up to `seconds` for a completion event, then read again."""
        event = asyncio.Event()
        self._waiting.setdefault(operation_id, set()).add(event)
        try:
            # Registered before reading, so a completion between the read and the wait is not missed.
            current = await read()
            if done(current) or seconds <= 0:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
            return await read()
        finally:
            waiters = self._waiting.get(operation_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiting[operation_id]
