"""Request ids: each request gets one (the client's `X-Request-ID`, or a new one), bound into every
log line written while it is served and echoed in the response's `X-Request-ID` header.

The process-wide logging setup is shared with the worker: worker/logging_setup.py.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from typing import Any

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Message, Receive, Scope, Send

log = structlog.get_logger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
_STATE_KEY = "request_id"
# What a client may send as its id: printable, no spaces, bounded, so it is safe in logs and headers.
_ACCEPTABLE = re.compile(r"^[A-Za-z0-9._:/+=@-]{1,128}$")


# 32 hex digits like a UUID: a random per-process prefix and a counter, so making one costs
# nothing on the hot path and two processes never make the same.
_ID_PREFIX = os.urandom(8).hex()
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def request_id_from(scope: Scope) -> str:
    """The client's X-Request-ID if it is acceptable, else a new id; the same for the whole request."""
    state: dict[str, Any] = scope.setdefault("state", {})
    current = state.get(_STATE_KEY)
    if isinstance(current, str):
        return current
    given = None
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            given = value.decode("latin-1").strip()
            break
    request_id = given if given and _ACCEPTABLE.match(given) else new_request_id()
    state[_STATE_KEY] = request_id
    return request_id


class RequestIdMiddleware(ASGIMiddleware):
    """Binds `request_id` in structlog's context for everything this request logs (auth included:
    it is the outermost middleware). With LEDGERQ_LOG_LEVEL=DEBUG it also logs each request when
    it ends (an access log: method, path, status, duration). Kept lean: it runs on every request."""

    scopes = (ScopeType.HTTP, ScopeType.WEBSOCKET)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        tokens = structlog.contextvars.bind_contextvars(request_id=request_id_from(scope))
        try:
            if log.bind().is_enabled_for(logging.DEBUG):
                await _logged(scope, receive, send, next_app)
            else:
                await next_app(scope, receive, send)
        finally:
            structlog.contextvars.reset_contextvars(**tokens)


async def _logged(scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
    started = time.perf_counter()
    status: int | None = None

    async def send_noting_status(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)

    try:
        await next_app(scope, receive, send_noting_status)
    except Exception as exc:
        # Answered by Litestar's exception handling, outside this middleware.
        status = getattr(exc, "status_code", 500)
        raise
    finally:
        log.debug(
            "request",
            method=scope.get("method", "WEBSOCKET"),
            path=scope["path"],
            status=status,
            duration_ms=round((time.perf_counter() - started) * 1000, 2),
        )


async def echo_request_id(message: Message, scope: Scope) -> None:
    """A `before_send` hook: every HTTP answer carries the request id, errors included (they are
    sent by Litestar's exception handling, outside the route middleware)."""
    if message["type"] == "http.response.start":
        header = (b"x-request-id", request_id_from(scope).encode("latin-1"))
        message["headers"] = [*message.get("headers", ()), header]
