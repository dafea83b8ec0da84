"""The bench's SQL (`ledgerq bench`, bench/): accounts in bulk, prefilled pending operations
(COPY), counts and timestamps of a run's operations, the ledger checks of its verification, and
the partition locks that pause the workers during the baseline. Synchronous SQLAlchemy Core on
psycopg; the bench reaches the database through these functions and the apply loop's own
(worker/store/ledger.py) only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from worker.settings import normalize_database_url
from worker.store.db import make_engine
from worker.store.ledger import ADVISORY_NAMESPACE
from worker.store.migrate import autovacuum_setting, autovacuum_warning
from worker.store.queries import new_id
from worker.store.tables import accounts, operations, users

# Bulk INSERT in slices: one statement per slice keeps parameter counts well under PostgreSQL's limit.
INSERT_SLICE = 5_000


@dataclass(frozen=True, slots=True)
class OpTimes:
    """One operation as PostgreSQL recorded it; times are epoch seconds."""

    status: str
    error_code: str | None
    created: float
    applied: float | None


@dataclass(frozen=True, slots=True)
class PendingRow:
    """One operation to store as pending; amount in minor units. Its partition, idempotency key
    and fingerprint are the caller's to compute (worker.routing, domain.idempotency)."""

    partition: int
    idempotency_key: str
    fingerprint: str
    type: str
    account_id: UUID
    amount: int
    to_account_id: UUID | None = None
    # A capture: the hold's operation id; a hold: its life in seconds.
    hold_id: UUID | None = None
    expires_in: int | None = None


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


def create_user(engine: Engine, username: str, password_hash: str) -> None:
    """Insert the user unless one of that name exists (then nothing changes)."""
    with engine.begin() as conn:
        conn.execute(
            sa.dialects.postgresql.insert(users)
            .values(id=new_id(), username=username, password_hash=password_hash)
            .on_conflict_do_nothing()
        )


def owner_of(engine: Engine, account_id: UUID) -> UUID:
    with engine.connect() as conn:
        value = conn.execute(
            sa.select(accounts.c.owner_id).where(accounts.c.id == account_id)
        ).scalar_one()
    assert isinstance(value, UUID)
    return value


def insert_accounts(
    engine: Engine, owner_id: UUID, count: int, label: str, currency: str
) -> list[UUID]:
    """Open `count` checking accounts for the owner in one transaction (10,000 take well under a second)."""
    ids = [new_id() for _ in range(count)]
    rows = [
        {
            "id": i,
            "owner_id": owner_id,
            "name": f"{label} #{n}",
            "kind": "checking",
            "currency": currency,
        }
        for n, i in enumerate(ids)
    ]
    with engine.begin() as conn:
        for start in range(0, len(rows), INSERT_SLICE):
            conn.execute(accounts.insert().values(rows[start : start + INSERT_SLICE]))
    return ids


_COPY_OPERATIONS = (
    "COPY operations (id, partition, principal_id, idempotency_key, fingerprint, type,"
    " account_id, to_account_id, amount, currency, category, hold_id, expires_in) FROM STDIN"
)


def copy_pending(
    engine: Engine,
    principal_id: UUID,
    rows: Sequence[PendingRow],
    currency: str,
    category: str | None,
    ids: Sequence[UUID] | None = None,
) -> list[UUID]:
    """Store the operations as pending in ONE transaction with COPY, so none is visible before
    the commit, in order (their seq is their position); returns their ids, in order: `ids` when
    given (a capture names its hold's id, so the caller chooses them), new ones otherwise.
    Nothing is rung."""
    ids = list(ids) if ids is not None else [new_id() for _ in rows]
    with engine.begin() as conn:
        raw: Any = conn.connection.driver_connection  # psycopg 3: COPY is not in SQLAlchemy
        with raw.cursor() as cursor, cursor.copy(_COPY_OPERATIONS) as copy:
            for operation_id, row in zip(ids, rows, strict=True):
                copy.write_row(
                    (
                        operation_id,
                        row.partition,
                        principal_id,
                        row.idempotency_key,
                        row.fingerprint,
                        row.type,
                        row.account_id,
                        row.to_account_id,
                        row.amount,
                        currency,
                        category,
                        row.hold_id,
                        row.expires_in,
                    )
                )
    return ids


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


@contextlib.contextmanager
def partitions_held(engine: Engine, partitions: Iterable[int]) -> Iterator[None]:
    """Hold every partition's advisory lock on one session: appliers (which take the same lock per
    transaction) wait until the block ends. Waits for batches already running to commit first."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for partition in sorted(partitions):
            conn.execute(sa.select(sa.func.pg_advisory_lock(ADVISORY_NAMESPACE, partition)))
        try:
            yield
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock_all()))


# --------------------------------------------------------------------------- verification


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[Connection]:
    """One REPEATABLE READ transaction: every read through it sees the same ledger."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ")
        with conn.begin():
            yield conn


def status_counts(conn: Connection, scope: Scope) -> dict[str, int]:
    """The scope's operations per status."""
    rows = conn.execute(
        sa.select(operations.c.status, sa.func.count())
        .where(*scope.where())
        .group_by(operations.c.status)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


def balance_sums(conn: Connection) -> list[tuple[str, int, int]]:
    """(currency, sum of balances, accounts) per currency, in currency order."""
    rows = conn.execute(
        sa.select(accounts.c.currency, sa.func.sum(accounts.c.balance), sa.func.count())
        .group_by(accounts.c.currency)
        .order_by(accounts.c.currency)
    ).all()
    return [(r[0], int(r[1]), int(r[2])) for r in rows]


def account_count(conn: Connection) -> int:
    return int(conn.execute(sa.select(sa.func.count()).select_from(accounts)).scalar_one())


# How many offending ids a check names (the count is always the full one).
SAMPLE = 5


@dataclass(frozen=True, slots=True)
class Offenders:
    """What a check found wrong: how many rows, and the first few ids (in id order)."""

    count: int
    sample: tuple[str, ...] = ()


_SAMPLED = "SELECT bad.id::text, count(*) OVER () FROM ({bad}) AS bad ORDER BY bad.id LIMIT :sample"


def _offenders(conn: Connection, bad: str, params: dict[str, object] | None = None) -> Offenders:
    """`bad` selects one `id` column per offending row; count them all, name the first few."""
    query = sa.text(_SAMPLED.format(bad=bad))
    rows = conn.execute(query, {**(params or {}), "sample": SAMPLE}).all()
    return Offenders(int(rows[0][1]), tuple(r[0] for r in rows)) if rows else Offenders(0)


def balances_off_entries(conn: Connection) -> Offenders:
    """Accounts whose balance is not the sum of their entries."""
    return _offenders(
        conn,
        """
        SELECT a.id FROM accounts a
        LEFT JOIN (SELECT account_id, sum(amount) AS total FROM entries GROUP BY account_id) e
            ON e.account_id = a.id
        WHERE a.balance <> COALESCE(e.total, 0)
        """,
    )


_CUSTOMER = "('checking', 'savings')"


def below_floor(conn: Connection) -> Offenders:
    """Customer accounts whose balance less their holds is below -overdraft_limit."""
    return _offenders(
        conn,
        f"""
        SELECT id FROM accounts
        WHERE kind IN {_CUSTOMER} AND balance - held < -overdraft_limit
        """,  # noqa: S608 (a constant list)
    )


def held_off_open_holds(conn: Connection) -> Offenders:
    """Accounts whose `held` is not the total of their open holds (system accounts have none, so
    theirs must be 0)."""
    return _offenders(
        conn,
        """
        SELECT a.id FROM accounts a
        LEFT JOIN (
            SELECT account_id, sum(amount) AS total FROM holds WHERE status = 'open'
            GROUP BY account_id
        ) h ON h.account_id = a.id
        WHERE a.held <> COALESCE(h.total, 0)
        """,
    )


def holds_without_applied_hold(conn: Connection) -> Offenders:
    """Holds whose operation is not a succeeded hold of the same account and amount (a hold row is
    written only when its hold applies; an open one reserves money nobody was granted)."""
    return _offenders(
        conn,
        """
        SELECT h.id FROM holds h LEFT JOIN operations o ON o.id = h.id
        WHERE o.id IS NULL OR o.type <> 'hold' OR o.status <> 'succeeded'
           OR o.account_id <> h.account_id OR o.amount <> h.amount
        """,
    )


def holds_settled_wrongly(conn: Connection) -> Offenders:
    """Holds whose amounts do not add up: open with captured + released <> 0 or with a succeeded
    capture or void; closed with captured + released <> amount, or not by exactly one succeeded
    capture or void of it, or with `captured` other than that capture's amount."""
    return _offenders(
        conn,
        """
        SELECT h.id FROM holds h
        LEFT JOIN (
            SELECT hold_id, count(*) AS n,
                   COALESCE(sum(amount) FILTER (WHERE type = 'capture'), 0) AS captured
            FROM operations
            WHERE hold_id IS NOT NULL AND status = 'succeeded' AND type IN ('capture', 'void')
            GROUP BY hold_id
        ) s ON s.hold_id = h.id
        WHERE (h.status = 'open' AND (h.captured + h.released <> 0 OR s.n IS NOT NULL))
           OR (h.status <> 'open' AND (h.captured + h.released <> h.amount
                                       OR COALESCE(s.n, 0) <> 1
                                       OR h.captured <> COALESCE(s.captured, 0)))
        """,
    )


def reversed_amounts_off(conn: Connection) -> Offenders:
    """Operations whose reversed_amount exceeds their amount or is not the sum of the amounts of
    their succeeded reversals."""
    return _offenders(
        conn,
        """
        SELECT o.id FROM operations o
        LEFT JOIN (
            SELECT reversal_of, sum(amount) AS total FROM operations
            WHERE reversal_of IS NOT NULL AND type = 'reversal' AND status = 'succeeded'
            GROUP BY reversal_of
        ) r ON r.reversal_of = o.id
        WHERE o.reversed_amount > o.amount OR o.reversed_amount <> COALESCE(r.total, 0)
        """,
    )


# Succeeded operations of these types book no entries: a hold and a void change `held` only,
# account controls move no money. Every other succeeded operation books exactly two.
NO_ENTRY_TYPES = ("hold", "void", "freeze", "unfreeze", "close")

_APPLIED_OTHER_THAN_ONCE = """
    SELECT o.id FROM operations o LEFT JOIN entries e ON e.operation_id = o.id
    WHERE {where}
    GROUP BY o.id, o.status, o.type
    HAVING (o.status = 'succeeded' AND o.type NOT IN {no_entry}
            AND (count(e.id) <> 2 OR COALESCE(sum(e.amount), 0) <> 0))
        OR ((o.status <> 'succeeded' OR o.type IN {no_entry}) AND count(e.id) <> 0)
"""


def applied_other_than_once(conn: Connection, scope: Scope) -> Offenders:
    """Operations of the scope (principal and seq mark) that succeeded without exactly two
    entries summing to 0 (none for holds, voids and account controls), or did not succeed and
    have entries."""
    clauses = ["o.seq > :after_seq"]
    params: dict[str, object] = {"after_seq": scope.after_seq}
    if scope.principal_id is not None:
        clauses.append("o.principal_id = :principal_id")
        params["principal_id"] = scope.principal_id
    no_entry = "(" + ", ".join(f"'{t}'" for t in NO_ENTRY_TYPES) + ")"
    query = _APPLIED_OTHER_THAN_ONCE.format(where=" AND ".join(clauses), no_entry=no_entry)
    return _offenders(conn, query, params)
