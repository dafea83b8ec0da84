"""Engines, and the one place database errors are classified (retryable, unavailable, or not).

The API reads PostgreSQL by two paths (worker/store/fast.py's docstring has the details):

- SQLAlchemy, the engines made here: the default for all API code. `make_async_engine` builds the
  API's two SQLAlchemy handles (api/state.py `lifespan_for`): `reads`, in autocommit, for
  single statements (lists and pages, reports, API-key lookups, the queue gauges, the
  readiness probe), and `engine`, transactional, for what must commit together (registration,
  opening an account, cancel, price upserts, the admin's writes) and the backpressure count.
  `make_engine` is the synchronous one the worker, the beat's sweep, the CLI and the bench use.
- The fast psycopg path (worker/store/fast.py `FastStore`): only the API's hot requests, submit,
  the balance read (`GET /accounts/{id}`) and operation reads (`GET /operations/{id}`,
  `Prefer: wait`), plus the account directory and the followers' periodic look, where
  SQLAlchemy's per-execution overhead was most of the request's database time.

New code uses SQLAlchemy, through a function in worker/store/ that takes the connection; a
statement moves to the fast path only for a hot request, and when measured.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from worker.store.pools import Budget

# SQLSTATEs worth retrying the whole transaction for: the other side won, nothing was written.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
UNIQUE_VIOLATION = "23505"
# The server cannot serve us now: connection exceptions (08), too many connections and other
# insufficient resources (53), and shutting down, crashed or starting up (57P01..57P05).
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53")
UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "57P04", "57P05"})
# Seconds a new connection may take before it fails (libpq's connect_timeout): a server that does
# not answer at all must not hold a request for the operating system's TCP timeout (minutes).
CONNECT_TIMEOUT = 5


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


def is_retryable(exc: BaseException) -> bool:
    return sqlstate(exc) in RETRYABLE_SQLSTATES


def is_unavailable(exc: BaseException) -> bool:
    """The database could not be reached or cannot serve now (down, restarting, out of connection
    slots, a connection cut under us, no pooled connection in time): retry later. Not a bug, and
    nothing is to be learnt from it about the request."""
    if isinstance(exc, sa.exc.TimeoutError):  # no pooled connection within pool_timeout
        return True
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:  # SQLAlchemy recognised a disconnect
            return True
        exc = exc.orig if exc.orig is not None else exc
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    state = exc.sqlstate
    # No SQLSTATE: the client side failed (refused, reset, closed, timed out), not a statement.
    return (
        state is None
        or state.startswith(UNAVAILABLE_SQLSTATE_CLASSES)
        or state in UNAVAILABLE_SQLSTATES
    )


# ----------------------------------------------------------------- connections cut under a pool


def connection_is_dead(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    """True when an idle pooled connection must not be used: closed, or the server has sent it
    something unasked. An idle connection is owed nothing, so what waits on its socket is the
    FATAL message of a server that shut down or cut the session (`pg_ctl restart -m fast`,
    pg_terminate_backend) or the end of the stream. One poll(2) of the socket, no round trip: the
    check costs microseconds where a pre-ping costs a round trip per checkout. A connection whose
    server vanished without a word (a crashed host) is not seen here; its first statement fails
    and the pool is invalidated then (SQLAlchemy does it for its engines, FastStore for its own)."""
    if conn.closed:
        return True
    try:
        fd = conn.pgconn.socket
    except psycopg.Error:
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))


def _discard_dead_connections(engine: Engine) -> None:
    """On checkout, a connection the server has cut is replaced before anything runs on it
    (SQLAlchemy invalidates it and connects anew; a refused connect then fails the checkout)."""

    @event.listens_for(engine, "checkout")
    def _check(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        if connection_is_dead(record.driver_connection):
            raise DisconnectionError("the server closed this connection while it was idle")


def _connect_args(application_name: str | None) -> dict[str, Any]:
    args: dict[str, Any] = {"connect_timeout": CONNECT_TIMEOUT}
    if application_name:
        args["application_name"] = application_name
    return args


def make_engine(
    url: str,
    pool_size: int = 5,
    pre_ping: bool = True,
    application_name: str | None = None,
    max_overflow: int | None = None,
) -> Engine:
    """`pre_ping=False` for the worker: a ping is a round trip per checkout; connections the
    server cut are discarded at checkout without one (`_discard_dead_connections`), and a
    connection lost mid-drain fails its task, which Celery retries on a new connection.
    `application_name` shows in pg_stat_activity. `max_overflow` defaults to `pool_size`."""
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        connect_args=_connect_args(application_name),
    )
    _discard_dead_connections(engine)
    return engine


def make_async_engine(
    url: str, pool_size: int = 10, autocommit: bool = False, application_name: str | None = None
) -> AsyncEngine:
    """The API's engines, at most `pool_size` connections each (no overflow: LEDGERQ_DB_POOL_SIZE
    is a budget). `autocommit`: a pool whose connections stay in autocommit, for single
    statements (no BEGIN/COMMIT round trips, no per-checkout isolation switching).

    No pre-ping (a round trip on every request): connections a database restart cut are
    discarded at checkout by a poll of their socket, and a disconnect noticed by a statement
    invalidates the whole pool (SQLAlchemy's default), so the first request after the database
    is back gets fresh connections.
    """
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        pool_recycle=1800,
        pool_pre_ping=False,
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
        connect_args=_connect_args(application_name),
    )
    _discard_dead_connections(engine.sync_engine)
    return engine


# ----------------------------------------------------------------- the connection budget at start

_BUDGET = sa.text(
    """
    SELECT current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int
             + coalesce(current_setting('reserved_connections', true)::int, 0) AS reserved,
           (SELECT count(*) FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
               AND application_name IS DISTINCT FROM :mine) AS others
    """
)


def read_budget_row(row: Any, needed: int) -> Budget:
    return Budget(
        max_connections=int(row.max_connections),
        reserved=int(row.reserved),
        needed=needed,
        others=int(row.others),
    )


def read_budget(conn: sa.Connection, application_name: str, needed: int) -> Budget:
    """The server's max_connections (and its reserved slots), and how many connections clients
    other than `application_name`'s processes (which `needed` counts) hold now."""
    row = conn.execute(_BUDGET, {"mine": application_name}).one()
    return read_budget_row(row, needed)


async def read_budget_async(conn: Any, application_name: str, needed: int) -> Budget:
    row = (await conn.execute(_BUDGET, {"mine": application_name})).one()
    return read_budget_row(row, needed)


# ----------------------------------------------------------------- the readiness probe


async def ping(conn: AsyncConnection) -> None:
    """One trivial statement: the server answers (`GET /ready`'s postgres check)."""
    await conn.execute(sa.text("SELECT 1"))
