"""Lets requests wait for operations and follow accounts: fed by the worker's completion events.

One Redis subscription per API process (api/state.py) feeds this registry; requests register here,
never with Redis, so a thousand followers cost one subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import structlog

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Completion events queued for one account follower before newer ones are dropped (a follower
# that far behind re-reads the balance anyway; the events only say what changed).
ACCOUNT_QUEUE_SIZE = 1000


class CompletionWaiters:
    """In-process registry of requests waiting on operation ids and of account followers.

    The event only wakes the waiter; the answer is always re-read from PostgreSQL, so a lost or
    duplicated event can delay an answer but never change it.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, set[asyncio.Event]] = {}
        self._following: dict[str, set[asyncio.Queue[list[dict[str, Any]]]]] = {}

    def dispatch(self, payload: bytes | str) -> None:
        if not self._waiting and not self._following:
            return  # nobody here is waiting: every batch of every worker arrives, skip the decode
        try:
            events = json.loads(payload)
        except ValueError:
            log.warning("completion_event_malformed")
            return
        touched: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            for waiter in self._waiting.get(str(event.get("id")), ()):
                waiter.set()
            if self._following:
                for account in {event.get("account_id"), event.get("to_account_id")}:
                    if account is not None and str(account) in self._following:
                        touched.setdefault(str(account), []).append(event)
        for account, account_events in touched.items():
            for queue in self._following.get(account, ()):
                try:
                    queue.put_nowait(account_events)
                except asyncio.QueueFull:
                    log.warning("account_follower_behind", account_id=account)

    @contextlib.contextmanager
    def watching(self, operation_id: str) -> Iterator[asyncio.Event]:
        """An event set when the operation's completion is announced, registered while inside."""
        event = asyncio.Event()
        self._waiting.setdefault(operation_id, set()).add(event)
        try:
            yield event
        finally:
            waiters = self._waiting.get(operation_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiting[operation_id]

    @contextlib.contextmanager
    def following(self, account_id: str) -> Iterator[asyncio.Queue[list[dict[str, Any]]]]:
        """A queue of the completion events (one list per applied batch) touching the account,
        as debited or credited account, while inside."""
        queue: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(ACCOUNT_QUEUE_SIZE)
        self._following.setdefault(account_id, set()).add(queue)
        try:
            yield queue
        finally:
            followers = self._following.get(account_id)
            if followers is not None:
                followers.discard(queue)
                if not followers:
                    del self._following[account_id]

    def counts(self) -> tuple[int, int]:
        """(requests waiting on an operation, account followers) registered now."""
        return (
            sum(len(w) for w in self._waiting.values()),
            sum(len(f) for f in self._following.values()),
        )

    async def wait_until(
        self,
        operation_id: str,
        seconds: float,
        read: Callable[[], Awaitable[T]],
        done: Callable[[T], bool],
    ) -> T:
        """Read, and if not done, wait up to `seconds` for a completion event, then read again."""
        with self.watching(operation_id) as event:
            # Registered before reading, so a completion between the read and the wait is not missed.
            current = await read()
            if done(current) or seconds <= 0:
                return current
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), seconds)
            return await read()
