"""The bench's direct SQL: accounts in bulk, prefilled operations (COPY), pending counts, timestamps."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Engine

from domain.idempotency import request_fingerprint
from worker.routing import partition_for
from worker.settings import normalize_database_url
from worker.store.db import make_engine
from worker.store.migrate import autovacuum_setting, autovacuum_warning
from worker.store.queries import new_id
from worker.store.tables import accounts, operations, users

CURRENCY = "USD"
# Bulk INSERT in slices: one statement per slice keeps parameter counts well under PostgreSQL's limit.
INSERT_SLICE = 5_000


@dataclass(frozen=True, slots=True)
class OpSpec:
    """An operation the bench submits or prefills; amount in minor units."""

    type: str
    account_id: UUID
    amount: int
    to_account_id: UUID | None = None


@dataclass(frozen=True, slots=True)
class OpTimes:
    """One operation as PostgreSQL recorded it; times are epoch seconds."""

    status: str
    error_code: str | None
    created: float
    applied: float | None


@dataclass(frozen=True)
class Scope:
    """Which operations a run owns: the principal's, with seq above a mark, keys starting with a prefix."""

    principal_id: UUID | None
    after_seq: int
    key_prefix: str | None = None

    def where(self) -> list[sa.ColumnElement[bool]]:
        clauses: list[sa.ColumnElement[bool]] = [operations.c.seq > self.after_seq]
        if self.principal_id is not None:
            clauses.append(operations.c.principal_id == self.principal_id)
        if self.key_prefix is not None:
            clauses.append(
                operations.c.idempotency_key.startswith(self.key_prefix, autoescape=True)
            )
        return clauses


def connect(url: str, pool_size: int = 4) -> Engine:
    return make_engine(normalize_database_url(url), pool_size=pool_size)


def has_schema(engine: Engine) -> bool:
    """Whether the database holds ledgerq's tables (a wrong --database-url is the usual mistake)."""
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.to_regclass("operations"))).scalar_one() is not None


# What autovacuum would keep tidy: the tables every operation writes.
VACUUMED_TABLES = ("operations", "accounts", "entries")


def vacuum_without_autovacuum(engine: Engine) -> bool:
    """When the target's server runs with autovacuum off, VACUUM (ANALYZE) the ledger's tables,
    as autovacuum would have: otherwise each run measures the dead rows and stale statistics the
    previous runs left (a balance read cost PostgreSQL 2.3 times as much after a drain run).
    True when it vacuumed."""
    with engine.connect() as conn:
        if autovacuum_warning(autovacuum_setting(conn)) is None:
            return False
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f"VACUUM (ANALYZE) {', '.join(VACUUMED_TABLES)}"))
    return True


def db_clock(engine: Engine) -> float:
    """PostgreSQL's clock (epoch seconds): operation timestamps are compared against it, not ours."""
    with engine.connect() as conn:
        return float(
            conn.execute(sa.select(sa.extract("epoch", sa.func.clock_timestamp()))).scalar_one()
        )


def max_seq(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(sa.func.coalesce(sa.func.max(operations.c.seq), 0))).scalar_one()
        )


def user_id(engine: Engine, username: str) -> UUID | None:
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(users.c.id).where(sa.func.lower(users.c.username) == username.lower())
        ).scalar_one_or_none()
    return value if isinstance(value, UUID) else None


def owner_of(engine: Engine, account_id: UUID) -> UUID:
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(accounts.c.owner_id).where(accounts.c.id == account_id)
        ).scalar_one()
    assert isinstance(value, UUID)
    return value


def insert_accounts(engine: Engine, owner_id: UUID, count: int, label: str) -> list[UUID]:
    """Open `count` checking accounts for the owner in one transaction (10,000 take well under a second)."""
    ids = [new_id() for _ in range(count)]
    rows = [
        {
            "id": i,
            "owner_id": owner_id,
            "name": f"{label} #{n}",
            "kind": "checking",
            "currency": CURRENCY,
        }
        for n, i in enumerate(ids)
    ]
    with engine.begin() as conn:
        for start in range(0, len(rows), INSERT_SLICE):
            conn.execute(accounts.insert().values(rows[start : start + INSERT_SLICE]))
    return ids


_COPY_OPERATIONS = (
    "COPY operations (id, partition, principal_id, idempotency_key, fingerprint, type,"
    " account_id, to_account_id, amount, currency, category) FROM STDIN"
)


@dataclass(frozen=True)
class Prefill:
    count: int
    seconds: float
    committed_at: float  # PostgreSQL clock right after the commit: when the rows became visible
    partitions: list[int]
    ids: list[UUID]


def prefill(
    engine: Engine, principal_id: UUID, specs: Sequence[OpSpec], key_prefix: str, partitions: int
) -> Prefill:
    """Store the operations as pending in ONE transaction with COPY, so none is visible before the commit.

    Nothing is rung: the caller decides who applies them (the workers, or the baseline).
    """
    started = time.perf_counter()
    touched: set[int] = set()
    ids = [new_id() for _ in specs]
    with engine.begin() as conn:
        raw: Any = conn.connection.driver_connection  # psycopg 3: COPY is not in SQLAlchemy
        with raw.cursor() as cursor, cursor.copy(_COPY_OPERATIONS) as copy:
            for n, spec in enumerate(specs):
                partition = partition_for(spec.account_id, partitions)
                touched.add(partition)
                key = f"{key_prefix}{n}"
                copy.write_row(
                    (
                        ids[n],
                        partition,
                        principal_id,
                        key,
                        request_fingerprint({"bench": key}),
                        spec.type,
                        spec.account_id,
                        spec.to_account_id,
                        spec.amount,
                        CURRENCY,
                        "bench",
                    )
                )
    committed_at = db_clock(engine)
    return Prefill(len(specs), time.perf_counter() - started, committed_at, sorted(touched), ids)


def pending_total(engine: Engine) -> int:
    """Pending operations in the whole database (reads only the partial pending index)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(operations)
                .where(operations.c.status == "pending")
            ).scalar_one()
        )


def pending_in(engine: Engine, scope: Scope) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(operations)
                .where(operations.c.status == "pending", *scope.where())
            ).scalar_one()
        )


def wait_until_terminal(
    engine: Engine,
    scope: Scope,
    timeout: float,
    on_tick: Callable[[int], None] | None = None,
    poll: float = 0.1,
) -> int:
    """Poll until no operation of the scope is pending or the timeout passes; returns how many still are."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = pending_in(engine, scope)
        if on_tick is not None:
            on_tick(remaining)
        if remaining == 0 or time.monotonic() >= deadline:
            return remaining
        time.sleep(poll)


def operation_times(engine: Engine, scope: Scope) -> list[OpTimes]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                operations.c.status,
                operations.c.error_code,
                sa.extract("epoch", operations.c.created_at),
                sa.extract("epoch", operations.c.applied_at),
            ).where(*scope.where())
        ).all()
    return [
        OpTimes(r[0], r[1], float(r[2]), float(r[3]) if r[3] is not None else None) for r in rows
    ]
