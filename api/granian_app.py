"""What granian serves (cli/main.py granian_command): the app as uvicorn would serve it.

`python -m api.granian_app ARGS` runs granian's own command line (ARGS are granian's) after
setting up the fork hooks below. Nothing here is imported at module level but the standard
library: granian's parent runs this module, and each worker calls create_app, whose signal
handling must be in place before the seconds it takes to import the app.

Stopping while starting: granian forks its workers from its parent, whose SIGTERM and SIGINT
handlers only tell that parent to stop, and a worker sets its own handlers only once the app is
imported. A signal that came in between was lost (the forked worker ran the parent's handler on
its own copy of the parent), and the worker served on until the parent killed it
(--workers-kill-timeout), skipping the lifespan shutdown. So the parent blocks both signals
while it forks; the child installs `hold` and only then unblocks them, so a signal sent at any
moment after the fork is held; once granian's handlers are in place (first thing on the event
loop, which runs the lifespan startup) the held signal is raised again: the worker starts, stops
at once and shuts down as from any SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from api.logging import RequestEdge

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Stop signals a starting worker received, raised again once granian can obey them.
held: list[int] = []


def hold(signum: int, frame: FrameType | None) -> None:
    held.append(signum)


def block_stop_signals() -> None:
    """Before fork, in the parent: a stop signal now stays pending until unblocked."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)


def unblock_stop_signals() -> None:
    """After fork, in the parent: a signal sent meanwhile is delivered to its own handler now."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def hold_stop_signals() -> None:
    """After fork, in the worker: hold stop signals (any sent since the fork included)."""
    for signum in STOP_SIGNALS:
        signal.signal(signum, hold)
    unblock_stop_signals()


def register_fork_hooks() -> None:
    """From now on, every process this one forks holds stop signals from its first instant."""
    os.register_at_fork(
        before=block_stop_signals,
        after_in_parent=unblock_stop_signals,
        after_in_child=hold_stop_signals,
    )


def main() -> None:
    """granian's command line, with its workers holding stop signals from the moment they fork."""
    register_fork_hooks()
    from granian.cli import entrypoint

    entrypoint()


def behind_proxies(app: RequestEdge, trusted_proxies: str) -> RequestEdge | ProxyHeadersMiddleware:
    """The app as uvicorn serves it (cli/main.py uvicorn_command): X-Forwarded-For/-Proto believed
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

    Stop signals: see the module docstring.
    """
    # Already so when forked by main's hooks; not when granian starts workers by spawning.
    for signum in STOP_SIGNALS:
        signal.signal(signum, hold)

    def raise_held() -> None:
        if held:
            signal.raise_signal(held[0])

    # granian made this worker's loop the current one before calling its factory.
    asyncio.get_event_loop().call_soon(raise_held)

    from api.app import create_app as create_edge
    from api.settings import get_settings

    return behind_proxies(create_edge(), get_settings().trusted_proxies)


if __name__ == "__main__":
    # Run as the module create_app is loaded from (not as __main__, a second copy with its own
    # `held`), so the fork hooks and create_app share one list.
    from api.granian_app import main as imported_main

    imported_main()
