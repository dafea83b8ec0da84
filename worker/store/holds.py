"""Holds and the operations others refer to: what intake resolves a capture, void or reversal
against, and the API's hold reads. The apply loop's own reads are in worker/store/ledger.py."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PGUUID
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.holds import EXPIRY_PRINCIPAL, expiry_key
from domain.idempotency import request_fingerprint
from worker.routing import partition_for
from worker.store.fast import Compiled, FastStore
from worker.store.queries import Record, new_id
from worker.store.tables import accounts, holds, operations

_REFERENCED = Compiled(
    sa.select(
        operations.c.id,
        operations.c.type,
        operations.c.status,
        operations.c.account_id,
        operations.c.to_account_id,
        operations.c.amount,
        operations.c.currency,
        operations.c.reversed_amount,
    ).where(operations.c.id == sa.func.any(sa.bindparam("ids", type_=ARRAY(PGUUID(as_uuid=True)))))
)


async def referenced_operations(db: FastStore, ids: Iterable[UUID]) -> dict[UUID, Record]:
    """The operations captures and voids (their holds) and reversals refer to, by id."""
    rows = await db.all(_REFERENCED, {"ids": list(set(ids))})
    return {r.id: r for r in rows}


HOLD_COLUMNS = (
    holds.c.id,
    holds.c.account_id,
    holds.c.to_account_id,
    holds.c.currency,
    holds.c.amount,
    holds.c.captured,
    holds.c.released,
    holds.c.status,
    holds.c.expires_at,
    holds.c.created_at,
    holds.c.closed_at,
    holds.c.closed_by,
)


async def hold_for_owner(conn: AsyncConnection, hold_id: UUID, owner_id: UUID) -> Record | None:
    """The hold, only if its account belongs to `owner_id`."""
    query = (
        sa.select(*HOLD_COLUMNS)
        .join(accounts, accounts.c.id == holds.c.account_id)
        .where(holds.c.id == hold_id, accounts.c.owner_id == owner_id)
    )
    return (await conn.execute(query)).one_or_none()


async def holds_for_owner(
    conn: AsyncConnection,
    owner_id: UUID,
    after: UUID | None,
    limit: int,
    account_id: UUID | None = None,
    status: str | None = None,
) -> Sequence[Record]:
    """The owner's holds, oldest first (ids are time-ordered), keyset pages on the id."""
    query = (
        sa.select(*HOLD_COLUMNS)
        .join(accounts, accounts.c.id == holds.c.account_id)
        .where(accounts.c.owner_id == owner_id)
    )
    if account_id is not None:
        query = query.where(holds.c.account_id == account_id)
    if status is not None:
        query = query.where(holds.c.status == status)
    if after is not None:
        query = query.where(holds.c.id > after)
    return (await conn.execute(query.order_by(holds.c.id).limit(limit))).all()


# The expiry sweep's work: open holds past their expiry whose expiry void is not stored yet
# (ix_holds_open_expires_at, then the operations' unique key).
_EXPIRED = sa.text(
    """
    SELECT h.id, h.account_id, h.currency, h.amount
    FROM holds AS h
    WHERE h.status = 'open' AND h.expires_at <= clock_timestamp()
      AND NOT EXISTS (
          SELECT 1 FROM operations AS o
          WHERE o.principal_id = :principal AND o.idempotency_key = 'hold-expiry:' || h.id::text
      )
    ORDER BY h.expires_at
    LIMIT :limit
    """
)


def submit_expiry_voids(conn: Connection, partitions: int, limit: int = 1000) -> list[int]:
    """Store a void for each open hold past its expiry, through the queue like any operation
    (it applies in its partition's order: a capture queued before it still settles the hold);
    commit; return the partitions to ring. One void per hold however often this runs (its
    idempotency key is the hold's)."""
    rows = conn.execute(_EXPIRED, {"limit": limit, "principal": EXPIRY_PRINCIPAL}).all()
    if not rows:
        conn.rollback()
        return []
    values = [
        {
            "id": new_id(),
            "partition": partition_for(r.account_id, partitions),
            "principal_id": EXPIRY_PRINCIPAL,
            "idempotency_key": expiry_key(r.id),
            "fingerprint": request_fingerprint({"type": "void", "hold_id": r.id}),
            "type": "void",
            "account_id": r.account_id,
            "amount": r.amount,
            "currency": r.currency,
            "hold_id": r.id,
            "description": "hold expired",
        }
        for r in rows
    ]
    conn.execute(
        insert(operations)
        .values(values)
        .on_conflict_do_nothing(index_elements=["principal_id", "idempotency_key"])
    )
    conn.commit()
    return sorted({v["partition"] for v in values})
