"""What granian serves (api/cli.py granian_command): the app as uvicorn would serve it.

Nothing here is imported at module level but the standard library: granian imports this module in
each worker and calls create_app, and the handlers below must be in place before the seconds it
takes to import the app.
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from api.logging import RequestEdge

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def behind_proxies(app: RequestEdge, trusted_proxies: str) -> RequestEdge | ProxyHeadersMiddleware:
    """The app as uvicorn serves it (api/cli.py uvicorn_command): X-Forwarded-For/-Proto believed
    from trusted_proxies (LEDGERQ_TRUSTED_PROXIES) only; with none, the app itself, unwrapped."""
    if not trusted_proxies:
        return app
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    # Litestar's and uvicorn's typings of the one ASGI interface, which mypy cannot match.
    return ProxyHeadersMiddleware(app, trusted_hosts=trusted_proxies)  # type: ignore[arg-type]


def create_app() -> RequestEdge | ProxyHeadersMiddleware:
    """granian's --factory target, called in each worker process before it serves.

    Proxy headers: api.app's app behind the middleware uvicorn puts around the app it serves,
    trusting the same addresses (LEDGERQ_TRUSTED_PROXIES; none and no middleware when empty).
    granian has no such option, only a wrapper (granian.utils.proxies) that differs: it takes a
    `host:port` entry for a host (the address the login and rate limits count by would change
    with the client's port) and ignores X-Forwarded-Proto without X-Forwarded-For. With uvicorn's
    middleware the client address and scheme the app sees, and the work done per request, are the
    same under either server.

    Stopping while starting: granian forks its workers from its parent process, whose SIGTERM and
    SIGINT handlers only tell that parent to stop, and a worker sets its own handlers only after
    this returns. A signal that came while the worker imported the app was lost, and the worker
    served on until the parent killed it (--workers-kill-timeout), skipping the lifespan shutdown.
    So the signal is held here and raised again once granian's handlers are in place (first thing
    on the event loop, which runs the lifespan startup): the worker then starts, stops at once and
    shuts down as from any SIGTERM.
    """
    held: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        held.append(signum)

    for signum in STOP_SIGNALS:
        signal.signal(signum, hold)

    def raise_held() -> None:
        if held:
            signal.raise_signal(held[0])

    # granian made this worker's loop the current one before calling its factory.
    asyncio.get_event_loop().call_soon(raise_held)

    from api.app import create_app as create_edge
    from worker.settings import get_settings

    return behind_proxies(create_edge(), get_settings().trusted_proxies)
