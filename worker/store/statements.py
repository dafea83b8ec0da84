"""The statement's reads (GET /api/v1/accounts/{id}/statement): its bounds in one statement, then
its entries in keyset chunks.

`statement_bounds` fixes everything the statement says in one snapshot: the period (`from`
defaults to the account's opening; `to` to the database's now, and a later `to` is clamped to
it), the opening balance (balance_after of the last entry dated before `from`, with that entry's
id) and the closing balance (balance_after of the last entry dated before `to`, with its id).
The entries are then exactly those with `after_id < id <= last_id`, read oldest first in chunks
by `statement_entries`, each chunk its own short statement on ix_entries_account_id_id. The
chunks agree with the bounds although they run later: entries are append-only and an account's
entries are written while its row is locked, so its entry ids grow in commit (and time) order,
and every entry up to `last_id` was committed when the bounds were read; entries applied since
have larger ids and stay out. So opening + the amounts listed = closing, always.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.store.queries import Record
from worker.store.tables import accounts, entries, operations

__all__ = ["CHUNK", "Record", "statement_bounds", "statement_entries"]

# Entries per query: a chunk's rows are held (and its connection) only while it is read.
CHUNK = 5_000

_SINCE = sa.bindparam("since", type_=sa.DateTime(timezone=True))
_UNTIL = sa.bindparam("until", type_=sa.DateTime(timezone=True))
_start = sa.func.coalesce(_SINCE, accounts.c.created_at)
_ZERO = sa.literal(0, sa.BigInteger)
_end = sa.func.least(sa.func.coalesce(_UNTIL, sa.func.now()), sa.func.now())


def _last_entry_before(instant: Any, name: str, *given: Any) -> Any:
    """The account's last entry dated before `instant`: a walk of ix_entries_account_id_id from
    the newest entry back to it (so it costs the entries after `instant`)."""
    return (
        sa.select(entries.c.id, entries.c.balance_after)
        .where(entries.c.account_id == accounts.c.id, entries.c.created_at < instant, *given)
        .order_by(entries.c.id.desc())
        .limit(1)
        .lateral(name)
    )


# A period that starts at the account's opening (no `from`, or an earlier one) has no entry
# before it: no walk at all (a condition on the account row alone is checked once, not per entry).
_before_start = _last_entry_before(_start, "before_start", _start > accounts.c.created_at)
_before_end = _last_entry_before(_end, "before_end")

STATEMENT_BOUNDS = (
    sa.select(
        accounts.c.currency,
        accounts.c.created_at,
        _start.label("since"),
        _end.label("until"),
        sa.func.coalesce(_before_start.c.id, _ZERO).label("after_id"),
        sa.func.coalesce(_before_start.c.balance_after, _ZERO).label("opening"),
        sa.func.coalesce(_before_end.c.id, _ZERO).label("last_id"),
        sa.func.coalesce(_before_end.c.balance_after, _ZERO).label("closing"),
    )
    .select_from(accounts.outerjoin(_before_start, sa.true()).outerjoin(_before_end, sa.true()))
    .where(
        accounts.c.id == sa.bindparam("account_id"),
        accounts.c.owner_id == sa.bindparam("owner_id"),
    )
)


async def statement_bounds(
    conn: AsyncConnection,
    account_id: UUID,
    owner_id: UUID,
    since: dt.datetime | None,
    until: dt.datetime | None,
) -> Record | None:
    """The owner's account's statement bounds (the module's docstring): currency, created_at,
    since, until (clamped to now), after_id and opening, last_id and closing. None when the owner
    has no such account. One statement, so one snapshot."""
    params = {"account_id": account_id, "owner_id": owner_id, "since": since, "until": until}
    return (await conn.execute(STATEMENT_BOUNDS, params)).one_or_none()


STATEMENT_ENTRIES = (
    sa.select(
        entries.c.id,
        entries.c.operation_id,
        entries.c.amount,
        entries.c.balance_after,
        entries.c.currency,
        entries.c.category,
        entries.c.created_at,
        operations.c.type,
        operations.c.description,
    )
    .join(operations, operations.c.id == entries.c.operation_id)
    .where(
        entries.c.account_id == sa.bindparam("account_id"),
        entries.c.id > sa.bindparam("after_id"),
        entries.c.id <= sa.bindparam("last_id"),
        # Implied by the id bounds (an account's ids grow in time order); kept as a guard.
        entries.c.created_at >= sa.bindparam("since", type_=sa.DateTime(timezone=True)),
        entries.c.created_at < sa.bindparam("until", type_=sa.DateTime(timezone=True)),
    )
    .order_by(entries.c.id)
    .limit(sa.bindparam("limit"))
)


async def statement_entries(
    conn: AsyncConnection,
    account_id: UUID,
    after_id: int,
    last_id: int,
    since: dt.datetime,
    until: dt.datetime,
    limit: int = CHUNK,
) -> Sequence[Record]:
    """Up to `limit` of the account's entries with after_id < id <= last_id dated in
    [since, until), oldest first, with their operation's type and description."""
    params = {
        "account_id": account_id,
        "after_id": after_id,
        "last_id": last_id,
        "since": since,
        "until": until,
        "limit": limit,
    }
    return (await conn.execute(STATEMENT_ENTRIES, params)).all()
