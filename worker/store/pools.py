"""How many PostgreSQL connections each ledgerq process holds, and whether a deployment fits.

Pure arithmetic (no I/O): LEDGERQ_DB_POOL_SIZE is the most connections one process holds, all
its pools together. An API process splits it between its three pools; a worker process needs at
most two (a drain or a sweep at a time, one connection each); beat and Flower hold none. The
processes' sum must stay below the server's max_connections less the slots it keeps for
superusers, with room left for migrations, psql and monitoring.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The API has three pools of at least one connection each.
MIN_POOL_SIZE = 3
# A worker process applies one partition at a time (prefork: a child per task), and the sweeper
# runs between drains: one connection in use, a second for a task whose first was just cut. (With
# `ledgerq worker --pool threads --concurrency N` the threads share these two.)
WORKER_PROCESS_CONNECTIONS = 2
# Connections a deployment should leave free: `ledgerq migrate`, psql, backups, monitoring.
ROOM = 10
# PostgreSQL's defaults, for files that do not set them (docker-compose.yml's postgres).
DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_SUPERUSER_RESERVED = 3


@dataclass(frozen=True)
class ApiPools:
    """An API process's pools. `fast`: the psycopg pool of the hot paths (submit, balance and
    operation reads); `reads`: SQLAlchemy in autocommit (logins, API keys, lists, reports);
    `transactions`: SQLAlchemy with transactions (registration, cancel, prices, probes, the
    background refreshers)."""

    fast: int
    reads: int
    transactions: int

    @property
    def total(self) -> int:
        return self.fast + self.reads + self.transactions


def api_pools(pool_size: int) -> ApiPools:
    """Split one API process's LEDGERQ_DB_POOL_SIZE: a tenth for transactions and a quarter for
    the autocommit reads (at least one each), the rest for the fast path."""
    if pool_size < MIN_POOL_SIZE:
        raise ValueError(f"an API process needs at least {MIN_POOL_SIZE} connections")
    transactions = max(1, pool_size // 10)
    reads = max(1, pool_size // 4)
    return ApiPools(fast=pool_size - transactions - reads, reads=reads, transactions=transactions)


def worker_pool(pool_size: int) -> int:
    """Connections one worker process holds at most (each prefork child is a process)."""
    return max(1, min(pool_size, WORKER_PROCESS_CONNECTIONS))


def deployment_connections(api_processes: int, worker_processes: int, pool_size: int) -> int:
    """The most connections a deployment holds: API processes x their pools, worker processes x
    theirs (beat and Flower hold none)."""
    return api_processes * api_pools(pool_size).total + worker_processes * worker_pool(pool_size)


@dataclass(frozen=True)
class Budget:
    """What a process found at start: the server's limits, what its own command's processes may
    hold at most (`needed`), and what every other client holds now (`others`)."""

    max_connections: int
    reserved: int
    needed: int
    others: int

    @property
    def available(self) -> int:
        """Slots ordinary roles may take: max_connections less those kept for superusers."""
        return self.max_connections - self.reserved

    @property
    def fits(self) -> bool:
        return self.needed + self.others <= self.available


def budget_warning(budget: Budget, processes: str) -> str | None:
    """The operator's warning when `processes` (e.g. "2 API processes x 20") would not fit in
    the server's connection slots; None when they fit."""
    if budget.fits:
        return None
    return (
        f"{processes} may hold {budget.needed} PostgreSQL connections and other clients hold "
        f"{budget.others} now: {budget.needed + budget.others} is more than the "
        f"{budget.available} the server allows (max_connections {budget.max_connections} less "
        f"{budget.reserved} reserved for superusers). Requests will fail with 503 "
        "database_unavailable when the slots run out: lower LEDGERQ_DB_POOL_SIZE, run fewer "
        "processes, or raise max_connections."
    )


def log_budget(log: Any, budget: Budget, processes: str) -> str | None:
    """Log what a process found at start (`connection_budget`, or `connection_budget_exceeded`
    with the operator's warning) through `log` (a structlog logger); returns the warning."""
    warning = budget_warning(budget, processes)
    fields = {
        "max_connections": budget.max_connections,
        "reserved": budget.reserved,
        "needed": budget.needed,
        "others": budget.others,
    }
    if warning is not None:
        log.warning("connection_budget_exceeded", detail=warning, **fields)
    else:
        log.info("connection_budget", **fields)
    return warning
