"""Completion events come back after Redis restarts: the API's event stream resubscribes
(api/state.py ResubscribingBackend) instead of ending for good."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import redis.asyncio

from api.state import ResubscribingBackend
from devserver import free_port, start_redis


async def _next_event(
    events: asyncio.Queue[tuple[str, bytes]], publisher: redis.asyncio.Redis, data: bytes
) -> tuple[str, bytes]:
    """Publish `data` until the stream delivers it (the subscription may still be coming back)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with contextlib.suppress(redis.RedisError, OSError):
            await publisher.publish("ledgerq-test-events", data)
        try:
            event = await asyncio.wait_for(events.get(), timeout=0.5)
        except TimeoutError:
            continue
        if event[1] == data:
            return event
    raise AssertionError(f"{data!r} never arrived")


async def test_the_event_stream_survives_a_redis_restart(tmp_path: Path) -> None:
    port = free_port()
    server = start_redis(tmp_path / "redis", port=port)
    client = redis.asyncio.Redis.from_url(server.url)
    publisher = redis.asyncio.Redis.from_url(server.url)
    backend = ResubscribingBackend(redis=client)
    events: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def consume() -> None:
        async for event in backend.stream_events():
            events.put_nowait(event)

    await backend.subscribe(["ledgerq-test-events"])
    consumer = asyncio.create_task(consume())
    try:
        assert await _next_event(events, publisher, b"before") == ("ledgerq-test-events", b"before")
        os.kill(server.pid, signal.SIGKILL)
        await asyncio.sleep(1)
        assert not consumer.done()
        server = start_redis(tmp_path / "redis", port=port)
        assert await _next_event(events, publisher, b"after") == ("ledgerq-test-events", b"after")
        assert not consumer.done()
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        for c in (client, publisher):
            await c.aclose()
        server.stop()
