"""The apply loop's SQL: lock a partition, read its pending batch, lock accounts, write outcomes set-based."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Connection

from domain.apply import Applied, Holdings, Outcome, Rejected
from domain.investments import Position
from domain.model import Account, AccountKind, Operation, OperationType
from worker.store.tables import accounts, assets, operations, positions

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


def lock_partition(conn: Connection, partition: int) -> None:
    """Serialise appliers of one partition (transaction-scoped; released by commit or crash)."""
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_NAMESPACE, partition)))


def pending_batch(conn: Connection, partition: int, limit: int) -> list[PendingOperation]:
    # The row lock makes a concurrent cancel wait for our commit and then see the final status.
    rows = conn.execute(
        sa.select(
            operations.c.id,
            operations.c.type,
            operations.c.account_id,
            operations.c.to_account_id,
            operations.c.amount,
            operations.c.currency,
            operations.c.category,
            operations.c.asset_id,
            operations.c.quantity,
        )
        .where(operations.c.partition == partition, operations.c.status == "pending")
        .order_by(operations.c.seq)
        .limit(limit)
        .with_for_update(key_share=True)
    ).all()
    return [
        PendingOperation(
            Operation(
                id=r.id,
                type=OperationType(r.type),
                account_id=r.account_id,
                amount=r.amount,
                currency=r.currency,
                to_account_id=r.to_account_id,
                asset_id=r.asset_id,
                quantity=r.quantity,
            ),
            r.category,
        )
        for r in rows
    ]


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


def lock_accounts(conn: Connection, account_ids: Iterable[UUID]) -> dict[UUID, Account]:
    """Lock every account of the batch in one statement, in id order, so appliers never deadlock.

    FOR NO KEY UPDATE, not FOR UPDATE: the API's INSERT of an operation takes KEY SHARE locks on
    the accounts it references (foreign keys), and those must never wait for an applier.
    """
    ids = sorted(set(account_ids))
    rows = conn.execute(
        sa.select(
            accounts.c.id,
            accounts.c.kind,
            accounts.c.currency,
            accounts.c.balance,
            accounts.c.overdraft_limit,
        )
        .where(accounts.c.id.in_(ids))
        .order_by(accounts.c.id)
        .with_for_update(key_share=True)
    ).all()
    return {
        r.id: Account(
            id=r.id,
            kind=AccountKind(r.kind),
            currency=r.currency,
            balance=r.balance,
            overdraft_limit=r.overdraft_limit,
        )
        for r in rows
    }


_UPDATE_BALANCES = sa.text(
    """
    UPDATE accounts AS a SET balance = v.balance, updated_at = clock_timestamp()
    FROM unnest(CAST(:ids AS uuid[]), CAST(:balances AS bigint[])) AS v(id, balance)
    WHERE a.id = v.id
    """
)

_INSERT_ENTRIES = sa.text(
    """
    INSERT INTO entries (account_id, operation_id, amount, balance_after, currency, category, created_at)
    SELECT v.account_id, v.operation_id, v.amount, v.balance_after, v.currency, v.category, clock_timestamp()
    FROM unnest(
        CAST(:account_ids AS uuid[]), CAST(:operation_ids AS uuid[]), CAST(:amounts AS bigint[]),
        CAST(:balances_after AS bigint[]), CAST(:currencies AS text[]), CAST(:categories AS text[])
    ) WITH ORDINALITY AS v(account_id, operation_id, amount, balance_after, currency, category, n)
    ORDER BY v.n
    """
)

_FINISH_OPERATIONS = sa.text(
    """
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
    WHERE o.id = v.id AND o.status = 'pending'
    """
)

_UPSERT_POSITIONS = sa.text(
    """
    INSERT INTO positions (account_id, asset_id, units, invested, updated_at)
    SELECT v.account_id, v.asset_id, v.units, v.invested, clock_timestamp()
    FROM unnest(
        CAST(:account_ids AS uuid[]), CAST(:asset_ids AS uuid[]),
        CAST(:units AS bigint[]), CAST(:invested AS bigint[])
    ) AS v(account_id, asset_id, units, invested)
    ON CONFLICT (account_id, asset_id)
    DO UPDATE SET units = EXCLUDED.units, invested = EXCLUDED.invested, updated_at = EXCLUDED.updated_at
    """
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
) -> None:
    """Three statements for the whole batch, whatever its size: balances, entries, statuses."""
    if changed:
        ids = sorted(changed)
        conn.execute(_UPDATE_BALANCES, {"ids": ids, "balances": [changed[i].balance for i in ids]})

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
    if entry_rows:
        columns = list(zip(*entry_rows, strict=True))
        conn.execute(
            _INSERT_ENTRIES,
            {
                "account_ids": list(columns[0]),
                "operation_ids": list(columns[1]),
                "amounts": list(columns[2]),
                "balances_after": list(columns[3]),
                "currencies": list(columns[4]),
                "categories": list(columns[5]),
            },
        )

    moves = [o.position if isinstance(o, Applied) else None for o in outcomes]
    final_positions = {(m.account_id, m.asset_id): m for m in moves if m is not None}
    if final_positions:
        latest = list(final_positions.values())
        conn.execute(
            _UPSERT_POSITIONS,
            {
                "account_ids": [m.account_id for m in latest],
                "asset_ids": [m.asset_id for m in latest],
                "units": [m.units_after for m in latest],
                "invested": [m.invested_after for m in latest],
            },
        )
    conn.execute(
        _FINISH_OPERATIONS,
        {
            "ids": [o.operation_id for o in outcomes],
            "statuses": ["succeeded" if isinstance(o, Applied) else "failed" for o in outcomes],
            "error_codes": [o.code if isinstance(o, Rejected) else None for o in outcomes],
            "error_messages": [o.message if isinstance(o, Rejected) else None for o in outcomes],
            # Investments settle their cash and units at apply time; other operations keep theirs.
            "amounts": [m.cash if m else None for m in moves],
            "quantities": [abs(m.units_delta) if m else None for m in moves],
            "prices": [m.price if m else None for m in moves],
        },
    )
