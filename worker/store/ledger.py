"""The apply loop's SQL: lock a partition, read its pending batch, lock accounts, write outcomes set-based."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg.rows import namedtuple_row
from sqlalchemy import Connection

from domain.apply import NO_REFS, Applied, Holdings, Outcome, Refs, Rejected
from domain.holds import EXPIRY_PRINCIPAL, Hold, HoldStatus
from domain.investments import Position
from domain.model import Account, AccountKind, Operation, OperationStatus, OperationType
from domain.reversals import Original
from worker.store.fast import Compiled
from worker.store.tables import accounts, assets, positions
from worker.store.webhooks import (
    ANY_ENDPOINT,
    EVENT_HOLD_COLUMNS,
    EVENT_OPERATION_COLUMNS,
    NEW_DELIVERY_ID,
    event_id_sql,
    subscribed,
)

# Advisory locks take (int4, int4): a namespace for ledgerq and the partition number.
ADVISORY_NAMESPACE = 0x4C51
_SYSTEM_NAMESPACE = uuid.UUID("6b0f4c1e-2d7a-4d0e-9a51-6c6564676572")


def system_account_id(kind: AccountKind, currency: str, shard: int) -> UUID:
    """Deterministic, so the worker can create a shard on first use without a lookup."""
    return uuid.uuid5(_SYSTEM_NAMESPACE, f"{kind.value}:{currency}:{shard}")


def world_account_id(currency: str, shard: int) -> UUID:
    return system_account_id(AccountKind.WORLD, currency, shard)


@dataclass(frozen=True)
class PendingOperation:
    operation: Operation
    category: str | None


def _run(conn: Connection, statement: Compiled, params: Mapping[str, Any]) -> list[Any]:
    """Execute on the transaction's own psycopg connection, skipping SQLAlchemy's per-execution
    work (about half the worker's CPU per batch went there); the SQL is still compiled once by
    SQLAlchemy, as in worker/store/fast.py."""
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor(row_factory=namedtuple_row) as cursor:
        cursor.execute(statement.sql, statement.bind(params))
        return cursor.fetchall() if cursor.description is not None else []


# One statement, one round trip: the partition's advisory lock (serialises its appliers; released
# by commit or crash), then its oldest pending operations. The lock is an InitPlan behind a
# One-Time Filter, so it is taken before any row is read. The statement's snapshot may predate
# the commit of an applier it waited for; the row lock re-checks each row against its latest
# version (READ COMMITTED), so an operation that applier finished is skipped, not applied again.
# The row lock also makes a concurrent cancel wait for our commit and then see the final status.
# What applying an operation reads of it (`_pending`), in both statements that claim operations.
_PENDING_COLUMNS = (
    "id, type, account_id, to_account_id, amount, currency, category, asset_id, quantity,"
    " hold_id, expires_in, reversal_of, principal_id"
)

_LOCKED_PENDING_BATCH = Compiled(
    sa.text(
        f"""
        SELECT {_PENDING_COLUMNS}, {ANY_ENDPOINT} AS webhooks
        FROM operations
        WHERE (SELECT pg_advisory_xact_lock(:namespace, :partition)) IS NOT NULL
          AND partition = :partition AND status = 'pending'
        ORDER BY seq
        LIMIT :limit
        FOR NO KEY UPDATE
        """  # noqa: S608 (a constant column list, no input)
    )
)


_ANY_PENDING = Compiled(
    sa.text(
        "SELECT EXISTS (SELECT 1 FROM operations WHERE partition = :partition AND status = 'pending')"
    )
)


def any_pending(conn: Connection, partition: int) -> bool:
    """Whether the partition has a pending operation, in one round trip (the partial pending
    index; no transaction, no lock): the cheap look that tells a drain it may stop. It sees
    everything committed before it started, which is all the doorbell protocol asks of a look.
    Call between transactions only."""
    raw = conn.connection.driver_connection
    assert raw is not None and not conn.in_transaction()
    # A lone SELECT needs no BEGIN/COMMIT round trips; the connection goes back to transactions.
    raw.autocommit = True
    try:
        return bool(_run(conn, _ANY_PENDING, {"partition": partition})[0][0])
    finally:
        raw.autocommit = False


def _pending(r: Any) -> PendingOperation:
    return PendingOperation(
        Operation(
            id=r.id,
            type=OperationType(r.type),
            account_id=r.account_id,
            amount=r.amount,
            currency=r.currency,
            to_account_id=r.to_account_id,
            asset_id=r.asset_id,
            quantity=r.quantity,
            hold_id=r.hold_id,
            expires_in=r.expires_in,
            expiry=r.principal_id == EXPIRY_PRINCIPAL,
            reversal_of=r.reversal_of,
        ),
        r.category,
    )


def lock_pending_batch(
    conn: Connection, partition: int, limit: int
) -> tuple[list[PendingOperation], bool]:
    """Lock the partition for this transaction and read up to `limit` pending operations, in
    order; and whether any webhook endpoint is enabled (then `write_outcomes` writes the batch's
    events). An endpoint enabled while the batch runs counts from the next batch on."""
    params = {"namespace": ADVISORY_NAMESPACE, "partition": partition, "limit": limit}
    rows = _run(conn, _LOCKED_PENDING_BATCH, params)
    return [_pending(r) for r in rows], bool(rows and rows[0].webhooks)


# By primary key alone (a status condition let the planner walk the pending index). FOR NO KEY
# UPDATE as in the batch: API inserts referencing the accounts (KEY SHARE) never wait on it.
_CLAIM_OPERATION = Compiled(
    sa.text(
        f"""
        SELECT {_PENDING_COLUMNS}, partition, status
        FROM operations WHERE id = :id
        FOR NO KEY UPDATE SKIP LOCKED
        """  # noqa: S608 (a constant column list, no input)
    )
)


def claim_pending(conn: Connection, operation_id: UUID) -> tuple[int, PendingOperation] | None:
    """Lock one operation for this transaction, with its partition, if it is still pending and no
    other transaction holds it (SKIP LOCKED); None otherwise. No partition lock: the one-operation-
    per-transaction design the bench's baseline measures (bench/baseline.py), not the workers'."""
    rows = _run(conn, _CLAIM_OPERATION, {"id": operation_id})
    if not rows or rows[0].status != "pending":
        return None
    return rows[0].partition, _pending(rows[0])


def ensure_system_accounts(
    conn: Connection,
    kind: AccountKind,
    currencies: Iterable[str],
    shard: int,
    known: set[UUID] | None = None,
) -> dict[str, UUID]:
    """The per-currency system account (world or custody) of this shard, created on first use.

    `known` holds ids already committed (system accounts are never deleted), to skip the INSERT.
    """
    world = {
        currency: system_account_id(kind, currency, shard) for currency in sorted(set(currencies))
    }
    missing = {c: i for c, i in world.items() if known is None or i not in known}
    if missing:
        conn.execute(
            sa.dialects.postgresql.insert(accounts)
            .values(
                [
                    {
                        "id": account_id,
                        "owner_id": None,
                        "name": f"{kind.value} {currency} #{shard}",
                        "kind": kind.value,
                        "currency": currency,
                        "shard": shard,
                    }
                    for currency, account_id in missing.items()
                ]
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
    return world


_LOCK_ACCOUNTS = Compiled(
    sa.text(
        """
        SELECT id, kind, currency, balance, overdraft_limit, held, frozen,
               closed_at IS NOT NULL AS closed
        FROM accounts
        WHERE id = ANY(CAST(:ids AS uuid[]))
        ORDER BY id
        FOR NO KEY UPDATE
        """
    )
)


def lock_accounts(conn: Connection, account_ids: Iterable[UUID]) -> dict[UUID, Account]:
    """Lock every account of the batch in one statement, in id order, so appliers never deadlock.

    FOR NO KEY UPDATE, not FOR UPDATE: the API's INSERT of an operation takes KEY SHARE locks on
    the accounts it references (foreign keys), and those must never wait for an applier.
    """
    rows = _run(conn, _LOCK_ACCOUNTS, {"ids": sorted(set(account_ids))})
    return {
        r.id: Account(
            id=r.id,
            kind=AccountKind(r.kind),
            currency=r.currency,
            balance=r.balance,
            overdraft_limit=r.overdraft_limit,
            held=r.held,
            frozen=r.frozen,
            closed=r.closed,
        )
        for r in rows
    }


# What captures, voids and reversals of a batch refer to. Holds and originals change only in
# their account's partition, whose lock this transaction holds; the originals are locked anyway
# (FOR NO KEY UPDATE), so their reversed amount is never written from two places at once.
_LOAD_HOLDS = Compiled(
    sa.text(
        """
        SELECT id, account_id, to_account_id, currency, amount, captured, released, status,
               closed_by
        FROM holds WHERE id = ANY(CAST(:ids AS uuid[]))
        """
    )
)
_LOAD_ORIGINALS = Compiled(
    sa.text(
        """
        SELECT id, type, status, account_id, to_account_id, amount, reversed_amount
        FROM operations WHERE id = ANY(CAST(:ids AS uuid[]))
        ORDER BY id
        FOR NO KEY UPDATE
        """
    )
)


def load_refs(conn: Connection, ops: Sequence[Operation]) -> Refs:
    """The holds the batch's captures and voids settle, the operations its reversals take back."""
    hold_ids = sorted({op.hold_id for op in ops if op.hold_id is not None})
    original_ids = sorted({op.reversal_of for op in ops if op.reversal_of is not None})
    if not hold_ids and not original_ids:
        return NO_REFS
    holds = {
        r.id: Hold(
            id=r.id,
            account_id=r.account_id,
            to_account_id=r.to_account_id,
            currency=r.currency,
            amount=r.amount,
            captured=r.captured,
            released=r.released,
            status=HoldStatus(r.status),
            closed_by=r.closed_by,
        )
        for r in (_run(conn, _LOAD_HOLDS, {"ids": hold_ids}) if hold_ids else [])
    }
    originals = {
        r.id: Original(
            id=r.id,
            type=OperationType(r.type),
            status=OperationStatus(r.status),
            account_id=r.account_id,
            to_account_id=r.to_account_id,
            amount=r.amount,
            reversed=r.reversed_amount,
        )
        for r in (_run(conn, _LOAD_ORIGINALS, {"ids": original_ids}) if original_ids else [])
    }
    return Refs(holds=holds, originals=originals)


# The batch's writes in one statement (one round trip): balances, entries, positions and
# statuses. Each part reads only its own arrays, and no part reads another's table, so the
# single snapshot the parts share changes nothing. Empty arrays write nothing. Operations are
# matched by primary key alone: lock_pending_batch locked them in this transaction while pending,
# and a status condition here let the planner scan every pending row instead (when the
# statistics said few were pending).
# Last, the webhook outbox (worker/store/webhooks.py): each operation's events (operation.<status>,
# and hold.* for holds, captures and voids that succeeded), joined with the enabled endpoints of
# its account's owner (and those of every account), from what the status update and the hold
# upsert RETURN: the rows as this transaction leaves them. Accounts are read only for their owner,
# which never changes. With no endpoint enabled anywhere the one-time EXISTS skips the join.
_HOLD_COLUMNS = ", ".join(EVENT_HOLD_COLUMNS)
_OPERATION_COLUMNS = ", ".join(f"o.{c}" for c in EVENT_OPERATION_COLUMNS)
_EVENT_ID = event_id_sql("o.id", "ev.type")
_SUBSCRIBED = subscribed("ev.type", "a.owner_id")
_WRITE_BATCH = """

        WITH balances AS (
            UPDATE accounts AS a
            SET balance = v.balance, held = v.held, frozen = v.frozen,
                closed_at = CASE WHEN v.closed THEN COALESCE(a.closed_at, clock_timestamp()) END,
                updated_at = clock_timestamp()
            FROM unnest(
                CAST(:balance_ids AS uuid[]), CAST(:balances AS bigint[]),
                CAST(:helds AS bigint[]), CAST(:frozens AS boolean[]), CAST(:closeds AS boolean[])
            ) AS v(id, balance, held, frozen, closed)
            WHERE a.id = v.id
        ), settled_holds AS (
            INSERT INTO holds (id, account_id, to_account_id, currency, amount, captured, released,
                               status, expires_at, created_at, closed_at, closed_by)
            SELECT v.id, v.account_id, v.to_account_id, v.currency, v.amount, v.captured,
                   v.released, v.status,
                   clock_timestamp() + make_interval(secs => COALESCE(v.expires_in, 0)),
                   clock_timestamp(),
                   CASE WHEN v.status <> 'open' THEN clock_timestamp() END, v.closed_by
            FROM unnest(
                CAST(:hold_ids AS uuid[]), CAST(:hold_accounts AS uuid[]),
                CAST(:hold_payees AS uuid[]), CAST(:hold_currencies AS text[]),
                CAST(:hold_amounts AS bigint[]), CAST(:hold_captured AS bigint[]),
                CAST(:hold_released AS bigint[]), CAST(:hold_statuses AS text[]),
                CAST(:hold_expires_in AS integer[]), CAST(:hold_closed_by AS uuid[])
            ) AS v(id, account_id, to_account_id, currency, amount, captured, released, status,
                   expires_in, closed_by)
            ON CONFLICT (id) DO UPDATE
            SET captured = EXCLUDED.captured, released = EXCLUDED.released,
                status = EXCLUDED.status, closed_at = EXCLUDED.closed_at,
                closed_by = EXCLUDED.closed_by
{hold_returning}        ), reversed AS (
            UPDATE operations AS o SET reversed_amount = v.total, updated_at = clock_timestamp()
            FROM unnest(CAST(:reversed_ids AS uuid[]), CAST(:reversed_totals AS bigint[]))
                AS v(id, total)
            WHERE o.id = v.id
        ), new_entries AS (
            INSERT INTO entries
                (account_id, operation_id, amount, balance_after, currency, category, created_at)
            SELECT v.account_id, v.operation_id, v.amount, v.balance_after, v.currency, v.category,
                   clock_timestamp()
            FROM unnest(
                CAST(:entry_accounts AS uuid[]), CAST(:entry_operations AS uuid[]),
                CAST(:entry_amounts AS bigint[]), CAST(:entry_balances AS bigint[]),
                CAST(:entry_currencies AS text[]), CAST(:entry_categories AS text[])
            ) WITH ORDINALITY AS v(account_id, operation_id, amount, balance_after, currency, category, n)
            ORDER BY v.n
        ), new_positions AS (
            INSERT INTO positions (account_id, asset_id, units, invested, updated_at)
            SELECT v.account_id, v.asset_id, v.units, v.invested, clock_timestamp()
            FROM unnest(
                CAST(:position_accounts AS uuid[]), CAST(:position_assets AS uuid[]),
                CAST(:position_units AS bigint[]), CAST(:position_invested AS bigint[])
            ) AS v(account_id, asset_id, units, invested)
            ON CONFLICT (account_id, asset_id) DO UPDATE
            SET units = EXCLUDED.units, invested = EXCLUDED.invested, updated_at = EXCLUDED.updated_at
{last}"""
# Without an enabled endpoint (lock_pending_batch says so, in the batch's first statement), the
# batch writes no outbox and returns nothing: the RETURNING rows and the join cost the apply
# about a tenth of its CPU per operation (docs/benchmarks.md).
_EVENTS_LAST = """        ), applied AS (
            UPDATE operations AS o
            SET status = v.status, error_code = v.error_code, error_message = v.error_message,
                applied_at = clock_timestamp(), updated_at = clock_timestamp(),
                amount = COALESCE(v.amount, o.amount), quantity = COALESCE(v.quantity, o.quantity),
                price = COALESCE(v.price, o.price)
            FROM unnest(
                CAST(:ids AS uuid[]), CAST(:statuses AS text[]),
                CAST(:error_codes AS text[]), CAST(:error_messages AS text[]),
                CAST(:amounts AS bigint[]), CAST(:quantities AS bigint[]), CAST(:prices AS bigint[])
            ) AS v(id, status, error_code, error_message, amount, quantity, price)
            WHERE o.id = v.id
            RETURNING {operation_columns}
        )
        INSERT INTO webhook_deliveries
            (id, event_id, endpoint_id, event_type, operation_id, payload)
        SELECT {new_delivery_id}, {event_id}, w.id, ev.type, o.id,
               CASE WHEN h.id IS NOT NULL AND starts_with(ev.type, 'hold.')
                    THEN jsonb_build_object('operation', to_jsonb(o), 'hold', to_jsonb(h))
                    ELSE jsonb_build_object('operation', to_jsonb(o)) END
        FROM applied AS o
        JOIN accounts AS a ON a.id = o.account_id
        LEFT JOIN settled_holds AS h
            ON o.status = 'succeeded' AND o.type IN ('hold', 'capture', 'void')
           AND h.id = COALESCE(o.hold_id, o.id)
        CROSS JOIN LATERAL (
            VALUES ('operation.' || o.status),
                   (CASE WHEN h.id IS NULL THEN NULL
                         WHEN o.type = 'hold' THEN 'hold.created'
                         WHEN o.type = 'capture' THEN 'hold.captured'
                         WHEN h.status = 'expired' THEN 'hold.expired'
                         ELSE 'hold.voided' END)
        ) AS ev(type)
        JOIN webhook_endpoints AS w ON {subscribed}
        WHERE {any_endpoint}
        ON CONFLICT (event_id, endpoint_id) DO NOTHING
        """
_PLAIN_LAST = """        )
        UPDATE operations AS o
        SET status = v.status, error_code = v.error_code, error_message = v.error_message,
            applied_at = clock_timestamp(), updated_at = clock_timestamp(),
            amount = COALESCE(v.amount, o.amount), quantity = COALESCE(v.quantity, o.quantity),
            price = COALESCE(v.price, o.price)
        FROM unnest(
            CAST(:ids AS uuid[]), CAST(:statuses AS text[]),
            CAST(:error_codes AS text[]), CAST(:error_messages AS text[]),
            CAST(:amounts AS bigint[]), CAST(:quantities AS bigint[]), CAST(:prices AS bigint[])
        ) AS v(id, status, error_code, error_message, amount, quantity, price)
        WHERE o.id = v.id
        """
_WRITE_OUTCOMES = Compiled(
    sa.text(
        _WRITE_BATCH.format(
            hold_returning=f"            RETURNING {_HOLD_COLUMNS}\n",
            hold_columns=_HOLD_COLUMNS,
            last=_EVENTS_LAST.format(
                operation_columns=_OPERATION_COLUMNS,
                new_delivery_id=NEW_DELIVERY_ID,
                event_id=_EVENT_ID,
                subscribed=_SUBSCRIBED,
                any_endpoint=ANY_ENDPOINT,
            ),
        )
    )
)
_WRITE_OUTCOMES_NO_EVENTS = Compiled(
    sa.text(_WRITE_BATCH.format(hold_returning="", hold_columns="", last=_PLAIN_LAST))
)

# The price an investment trades at: the latest close on or before today (UTC): today's once it
# is published, the last trading day's before that.
_LATEST_CLOSES = sa.text(
    """
    SELECT DISTINCT ON (asset_id) asset_id, close FROM prices
    WHERE asset_id = ANY(CAST(:ids AS uuid[])) AND day <= (now() AT TIME ZONE 'UTC')::date
    ORDER BY asset_id, day DESC
    """
)


def load_holdings(conn: Connection, ops: Sequence[Operation], custody: dict[str, UUID]) -> Holdings:
    """Assets, latest closes and current positions for the batch's investment operations.

    Positions need no row lock of their own: they belong to the debited account, whose partition
    lock this transaction holds, and whose row it has locked.
    """
    asset_ids = sorted({op.asset_id for op in ops if op.asset_id is not None})
    if not asset_ids:
        return Holdings(positions={}, prices={}, custody=custody, asset_currencies={})
    currencies = dict(
        conn.execute(
            sa.select(assets.c.id, assets.c.currency).where(assets.c.id.in_(asset_ids))
        ).all()
    )
    closes: dict[UUID, int] = {
        r.asset_id: r.close for r in conn.execute(_LATEST_CLOSES, {"ids": asset_ids})
    }
    keys = sorted({(op.account_id, op.asset_id) for op in ops if op.asset_id is not None})
    rows = conn.execute(
        sa.select(
            positions.c.account_id, positions.c.asset_id, positions.c.units, positions.c.invested
        ).where(sa.tuple_(positions.c.account_id, positions.c.asset_id).in_(keys))
    ).all()
    held = {
        (r.account_id, r.asset_id): Position(r.account_id, r.asset_id, r.units, r.invested)
        for r in rows
    }
    return Holdings(positions=held, prices=closes, custody=custody, asset_currencies=currencies)


def write_outcomes(
    conn: Connection,
    batch: Sequence[PendingOperation],
    outcomes: Sequence[Outcome],
    changed: dict[UUID, Account],
    events: bool = True,
) -> None:
    """One statement for the whole batch, whatever its size: balances (and holds, controls),
    entries, positions, holds, reversed totals, statuses, and (`events`) the webhook outbox."""
    balance_ids = sorted(changed)
    by_id = {p.operation.id: p for p in batch}
    entry_rows: list[tuple[UUID, UUID, int, int, str, str | None]] = []
    for outcome in outcomes:
        if isinstance(outcome, Applied):
            pending = by_id[outcome.operation_id]
            for posting in outcome.postings:
                entry_rows.append(
                    (
                        posting.account_id,
                        outcome.operation_id,
                        posting.amount,
                        posting.balance_after,
                        pending.operation.currency,
                        pending.category,
                    )
                )
    entries = [list(column) for column in zip(*entry_rows, strict=True)] or [[]] * 6
    moves = [o.position if isinstance(o, Applied) else None for o in outcomes]
    # The last move of each position in the batch is its final state; so for holds and reversals.
    latest = list({(m.account_id, m.asset_id): m for m in moves if m is not None}.values())
    applied = [o for o in outcomes if isinstance(o, Applied)]
    held = list({o.hold.id: o.hold for o in applied if o.hold is not None}.values())
    reversed_totals = dict(o.reversed for o in applied if o.reversed is not None)
    _run(
        conn,
        _WRITE_OUTCOMES if events else _WRITE_OUTCOMES_NO_EVENTS,
        {
            "balance_ids": balance_ids,
            "balances": [changed[i].balance for i in balance_ids],
            "helds": [changed[i].held for i in balance_ids],
            "frozens": [changed[i].frozen for i in balance_ids],
            "closeds": [changed[i].closed for i in balance_ids],
            "hold_ids": [h.id for h in held],
            "hold_accounts": [h.account_id for h in held],
            "hold_payees": [h.to_account_id for h in held],
            "hold_currencies": [h.currency for h in held],
            "hold_amounts": [h.amount for h in held],
            "hold_captured": [h.captured for h in held],
            "hold_released": [h.released for h in held],
            "hold_statuses": [h.status.value for h in held],
            "hold_expires_in": [h.expires_in for h in held],
            "hold_closed_by": [h.closed_by for h in held],
            "reversed_ids": list(reversed_totals),
            "reversed_totals": list(reversed_totals.values()),
            "entry_accounts": entries[0],
            "entry_operations": entries[1],
            "entry_amounts": entries[2],
            "entry_balances": entries[3],
            "entry_currencies": entries[4],
            "entry_categories": entries[5],
            "position_accounts": [m.account_id for m in latest],
            "position_assets": [m.asset_id for m in latest],
            "position_units": [m.units_after for m in latest],
            "position_invested": [m.invested_after for m in latest],
            "ids": [o.operation_id for o in outcomes],
            "statuses": ["succeeded" if isinstance(o, Applied) else "failed" for o in outcomes],
            "error_codes": [o.code if isinstance(o, Rejected) else None for o in outcomes],
            "error_messages": [o.message if isinstance(o, Rejected) else None for o in outcomes],
            # Investments settle their cash and units at apply time, a reversal of "the rest" its
            # amount; other operations keep theirs.
            "amounts": [
                m.cash if m else (o.amount if isinstance(o, Applied) else None)
                for m, o in zip(moves, outcomes, strict=True)
            ],
            "quantities": [abs(m.units_delta) if m else None for m in moves],
            "prices": [m.price if m else None for m in moves],
        },
    )
