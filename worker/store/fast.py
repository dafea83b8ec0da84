"""Hot-path execution: SQLAlchemy Core statements compiled once, run straight on psycopg connections.

The two read paths (this module's docstring and worker/store/db.py's say the same):

- The fast path, here (`FastStore`, a `Compiled` statement, `db.one` / `db.all`): the API's
  hottest requests, those every client makes many times a second. Submit (the group commit's
  INSERT, `insert_operations` / `insert_operations_limited`, and the read-back of existing keys,
  `operations_by_keys`), the account directory and the asset currencies it checks against
  (`accounts_by_ids`, `asset_currencies`), the balance read (`GET /accounts/{id}`,
  `fast_account_for_owner`), the operation read and `Prefer: wait` (`GET /operations/{id}`,
  `fast_operation_for_principal`), and the followers' periodic look (`final_operation_ids`,
  `balances_by_id`). The functions live in worker/store/queries.py and take the `FastStore`.
- The SQLAlchemy path (worker/store/db.py `make_async_engine`, `AsyncConnection`): everything else
  the API runs: lists and pages (accounts, entries, operations, API keys, users, investments),
  reports, registration and login, opening an account, cancel, price upserts, the admin's
  reads and writes, the backpressure count and the queue gauges (worker/store/queue.py),
  the readiness probe. Multi-statement transactions belong here (`services.engine.begin()`); single
  statements use the autocommit `reads` engine.

Why two: the statements are still written once, with SQLAlchemy, in worker/store/. What the fast
path skips is SQLAlchemy's per-execution machinery on the async path (greenlet hop, cache-key
generation, result processing), measured at about 380 us of the 490 us a simple read took
through an AsyncConnection on this machine, against about 100 us straight on psycopg. That
matters only on requests whose own work is that small and that come that often; everywhere else
SQLAlchemy's conveniences (statements built per call, transactions, typed results) cost nothing
that shows. Connections here are in autocommit, so every statement stands alone (the limited
deposits' transaction in `insert_operations_limited` is opened by hand on one connection).

Choosing for new code: use the SQLAlchemy path (a function taking an `AsyncConnection` in
worker/store/, called under `services.reads.connect()` or `services.engine.begin()`). Move a
statement to the fast path only when it runs on a hot request and measurement shows SQLAlchemy's
overhead: a fixed statement (one SQL text whatever the arguments, so it compiles once), written
as a `Compiled` constant next to its SQLAlchemy twin and wrapped in a function taking the
`FastStore`. The worker uses neither: a synchronous engine, its hot statements on the raw
psycopg connection (worker/store/ledger.py `_run`).

The connections live in a small pool of its own (`ConnectionPool`), not psycopg_pool's: that one
connects in background workers with exponential backoff, so while PostgreSQL was down a request
waited out the pool's timeout (30 s), and once it was back the next attempt could still be many
seconds away. Here a request that finds no idle connection connects itself: refused at once while
the server is down (503 database_unavailable), connected at once when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import namedtuple_row
from sqlalchemy.dialects import postgresql

from worker.store.db import CONNECT_TIMEOUT, connection_is_dead, is_unavailable

log = structlog.get_logger(__name__)

_DIALECT = postgresql.psycopg.dialect()


class Compiled:
    """A statement's SQL in psycopg's named-parameter style, compiled once."""

    def __init__(
        self, statement: sa.ClauseElement, column_keys: Sequence[str] | None = None
    ) -> None:
        compiled = statement.compile(
            dialect=_DIALECT, column_keys=list(column_keys) if column_keys else None
        )
        self.sql = str(compiled)
        # Constants in the statement ('pending', 0) are bound parameters too: keep their values.
        self.defaults = {k: v for k, v in compiled.params.items() if v is not None}

    def bind(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**self.defaults, **params}


def libpq_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


class PoolTimeout(psycopg.OperationalError):
    """Every connection of the pool stayed busy for the whole checkout timeout."""


class ConnectionPool:
    """At most `size` autocommit connections, for one event loop.

    Checkout takes the most recently returned idle connection (so under light load a few stay
    warm and the others age out after `max_idle` seconds), skipping and closing those the server
    has cut (`connection_is_dead`: a poll of the socket, no round trip); with none idle and room
    left it connects, in the caller's task; at `size` it waits for a return, up to `timeout`.
    A connection comes back only idle and healthy; one broken by an error, or left mid-statement
    by a cancelled request, is closed. A disconnect noticed by a statement also closes every idle
    connection (`invalidate`): what cut one has probably cut them all.
    """

    def __init__(
        self,
        conninfo: str,
        size: int,
        kwargs: Mapping[str, Any],
        timeout: float = 30.0,
        max_idle: float = 60.0,
    ) -> None:
        self.conninfo = conninfo
        self.size = size
        self.kwargs = dict(kwargs)
        self.timeout = timeout
        self.max_idle = max_idle
        self._idle: deque[tuple[AsyncConnection[Any], float, int]] = deque()
        self._generation: dict[int, int] = {}
        self._current = 0
        # Connections open or being opened, idle or in use: never above `size`.
        self.count = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._closed = False

    async def _connect(self) -> AsyncConnection[Any]:
        self.count += 1
        try:
            conn = await AsyncConnection.connect(self.conninfo, **self.kwargs)
        except BaseException:
            self.count -= 1
            self._wake_one()
            raise
        self._generation[id(conn)] = self._current
        return conn

    def _drop(self, conn: AsyncConnection[Any]) -> None:
        self.count -= 1
        self._generation.pop(id(conn), None)
        with contextlib.suppress(Exception):
            # psycopg's close() only finishes the libpq connection: no round trip, no wait.
            conn.pgconn.finish()
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def getconn(self) -> AsyncConnection[Any]:
        if self._closed:
            raise psycopg.OperationalError("the connection pool is closed")
        deadline: float | None = None
        while True:
            while self._idle:
                conn, _, generation = self._idle.pop()
                if generation != self._current or connection_is_dead(conn):
                    self._drop(conn)
                    continue
                return conn
            if self.count < self.size:
                return await self._connect()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise PoolTimeout(f"no connection free within {self.timeout:.0f} s")
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except TimeoutError:
                raise PoolTimeout(f"no connection free within {self.timeout:.0f} s") from None
            except BaseException:
                # Woken, then cancelled before taking its turn: pass the turn on.
                if waiter.done() and not waiter.cancelled():
                    self._wake_one()
                raise
            finally:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def putconn(self, conn: AsyncConnection[Any]) -> None:
        healthy = (
            not self._closed
            and not conn.closed
            and conn.info.transaction_status == TransactionStatus.IDLE
            and self._generation.get(id(conn)) == self._current
        )
        if not healthy:
            self._drop(conn)
            return
        now = time.monotonic()
        self._idle.append((conn, now, self._current))
        # The coldest idle connections (left end) go once unused for max_idle; one stays warm.
        while len(self._idle) > 1 and now - self._idle[0][1] > self.max_idle:
            self._drop(self._idle.popleft()[0])
        self._wake_one()

    def invalidate(self) -> None:
        """Close every idle connection now and every connection in use when it comes back."""
        self._current += 1
        while self._idle:
            self._drop(self._idle.popleft()[0])

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        conn = await self.getconn()
        try:
            yield conn
        except BaseException as exc:
            if conn.closed or is_unavailable(exc):
                log.warning("fast_pool_invalidated", error=first_line(exc))
                self.invalidate()
            raise
        finally:
            self.putconn(conn)

    def close(self) -> None:
        self._closed = True
        self.invalidate()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)


class FastStore:
    """A pool of autocommit psycopg connections, for statements compiled by `Compiled`."""

    def __init__(self, url: str, size: int, application_name: str | None = None) -> None:
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "row_factory": namedtuple_row,
            "connect_timeout": CONNECT_TIMEOUT,
        }
        if application_name:
            kwargs["application_name"] = application_name
        self.pool = ConnectionPool(libpq_url(url), size, kwargs)

    async def open(self) -> None:
        """Nothing to do: connections are made on first use (the API starts without its database)."""

    async def close(self) -> None:
        self.pool.close()

    async def one(self, statement: Compiled, params: Mapping[str, Any]) -> Any | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(statement.sql, statement.bind(params))
            return await cursor.fetchone()

    async def all(self, statement: Compiled, params: Mapping[str, Any]) -> list[Any]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(statement.sql, statement.bind(params))
            return await cursor.fetchall()
