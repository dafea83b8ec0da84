"""Engines, and the one place database errors are classified (retryable or not)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

# SQLSTATEs worth retrying the whole transaction for: the other side won, nothing was written.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
UNIQUE_VIOLATION = "23505"


def sqlstate(exc: BaseException) -> str | None:
    orig = getattr(exc, "orig", None) if isinstance(exc, DBAPIError) else exc
    return getattr(orig, "sqlstate", None)


def is_retryable(exc: BaseException) -> bool:
    return sqlstate(exc) in RETRYABLE_SQLSTATES


def make_engine(
    url: str, pool_size: int = 5, pre_ping: bool = True, application_name: str | None = None
) -> Engine:
    """`pre_ping=False` for the worker: a ping is a round trip per checkout, and a connection
    broken by a database restart fails its task, which Celery retries on a new connection.
    `application_name` shows in pg_stat_activity."""
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=pre_ping,
        connect_args={"application_name": application_name} if application_name else {},
    )


def make_async_engine(url: str, pool_size: int = 10, autocommit: bool = False) -> AsyncEngine:
    """The API's engines. `autocommit`: a pool whose connections stay in autocommit, for single
    statements (no BEGIN/COMMIT round trips, no per-checkout isolation switching).

    No pre-ping: it costs a round trip on every request. A connection broken by a database
    restart fails one request (retryable: idempotency keys) and is then replaced.
    """
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size // 2,
        pool_recycle=1800,
        pool_pre_ping=False,
        isolation_level="AUTOCOMMIT" if autocommit else "READ COMMITTED",
    )
