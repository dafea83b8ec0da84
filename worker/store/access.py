"""Queries for access: API keys (create, find by prefix, list, revoke), the admin's listings and
the admin's changes to customer accounts."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.store.queries import ACCOUNT_COLUMNS, USER_COLUMNS, Record, new_id
from worker.store.tables import accounts, api_keys, deposit_limits, users

# How stale last_used_at may get: a busy key writes it at most once per this interval.
LAST_USED_INTERVAL = dt.timedelta(seconds=60)

_key_columns = (
    api_keys.c.id,
    api_keys.c.user_id,
    api_keys.c.name,
    api_keys.c.prefix,
    api_keys.c.scopes,
    api_keys.c.rate_limit,
    api_keys.c.created_at,
    api_keys.c.last_used_at,
    api_keys.c.expires_at,
    # Judged by the database's clock, as the lookup that refuses an expired key is.
    sa.func.coalesce(api_keys.c.expires_at <= sa.func.now(), False).label("expired"),
)


# ---------------------------------------------------------------- API keys


async def create_api_key(
    conn: AsyncConnection,
    *,
    user_id: UUID,
    name: str,
    prefix: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    rate_limit: int | None,
    expires_at: dt.datetime | None = None,
    expires_in: int | None = None,
) -> Record:
    """A new key; it expires at `expires_at`, or `expires_in` seconds from the database's now."""
    expiry: Any = expires_at
    if expires_in is not None:
        expiry = sa.func.now() + dt.timedelta(seconds=expires_in)
    return (
        await conn.execute(
            api_keys.insert()
            .values(
                id=new_id(),
                user_id=user_id,
                name=name,
                prefix=prefix,
                secret_hash=secret_hash,
                scopes=list(scopes),
                rate_limit=rate_limit,
                expires_at=expiry,
            )
            .returning(*_key_columns)
        )
    ).one()


async def live_keys_with_prefix(conn: AsyncConnection, prefix: str) -> Sequence[Record]:
    """Unrevoked, unexpired keys whose secret starts with `prefix`, with their owner's name (one
    index probe). The caller compares `secret_hash` in constant time; a prefix is not unique,
    only selective.
    """
    return (
        await conn.execute(
            sa.select(*_key_columns, api_keys.c.secret_hash, users.c.username)
            .join(users, users.c.id == api_keys.c.user_id)
            .where(
                api_keys.c.prefix == prefix,
                api_keys.c.revoked_at.is_(None),
                sa.or_(api_keys.c.expires_at.is_(None), api_keys.c.expires_at > sa.func.now()),
            )
        )
    ).all()


async def live_key_by_id(conn: AsyncConnection, key_id: UUID) -> Record | None:
    """An unrevoked key (expired or not), without its secret."""
    return (
        await conn.execute(
            sa.select(*_key_columns).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
        )
    ).one_or_none()


async def touch_api_key(conn: AsyncConnection, key_id: UUID) -> None:
    """Record use, at most once per LAST_USED_INTERVAL per key (concurrent callers write once)."""
    await conn.execute(
        api_keys.update()
        .where(
            api_keys.c.id == key_id,
            sa.or_(
                api_keys.c.last_used_at.is_(None),
                api_keys.c.last_used_at < sa.func.now() - LAST_USED_INTERVAL,
            ),
        )
        .values(last_used_at=sa.func.now())
    )


async def api_keys_page(
    conn: AsyncConnection, user_id: UUID | None, after: UUID | None, limit: int
) -> Sequence[Record]:
    """Unrevoked keys (expired ones too, marked), oldest first; of one user, or of everyone when
    user_id is None (the admin)."""
    query = sa.select(*_key_columns).where(api_keys.c.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    if after is not None:
        query = query.where(api_keys.c.id > after)
    return (await conn.execute(query.order_by(api_keys.c.id).limit(limit))).all()


async def revoke_api_key(conn: AsyncConnection, key_id: UUID, user_id: UUID | None) -> bool:
    """Revoke a live key (of user_id, unless None: the admin may revoke any). False if none was."""
    query = api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
    if user_id is not None:
        query = query.where(api_keys.c.user_id == user_id)
    result = await conn.execute(query.values(revoked_at=sa.func.now()).returning(api_keys.c.id))
    return result.one_or_none() is not None


# ---------------------------------------------------------------- users and accounts (admin)


async def user_by_id(conn: AsyncConnection, user_id: UUID) -> Record | None:
    return (await conn.execute(sa.select(*USER_COLUMNS).where(users.c.id == user_id))).one_or_none()


async def users_page(conn: AsyncConnection, after: UUID | None, limit: int) -> Sequence[Record]:
    query = sa.select(*USER_COLUMNS)
    if after is not None:
        query = query.where(users.c.id > after)
    return (await conn.execute(query.order_by(users.c.id).limit(limit))).all()


async def accounts_page(
    conn: AsyncConnection, owner_id: UUID | None, after: UUID | None, limit: int
) -> Sequence[Record]:
    """Every account (system accounts included, with owner_id NULL), or one owner's, by id."""
    query = sa.select(*ACCOUNT_COLUMNS)
    if owner_id is not None:
        query = query.where(accounts.c.owner_id == owner_id)
    if after is not None:
        query = query.where(accounts.c.id > after)
    return (await conn.execute(query.order_by(accounts.c.id).limit(limit))).all()


class OverdraftInUse(Exception):
    """The account already uses more overdraft than the limit asked for; `row` is the account."""

    def __init__(self, row: Record) -> None:
        super().__init__(row.id)
        self.row = row


_CUSTOMER_KINDS = ("checking", "savings")


async def customer_account(conn: AsyncConnection, account_id: UUID) -> Record | None:
    """A customer account (world and custody accounts read as missing), with its owner."""
    query = sa.select(*ACCOUNT_COLUMNS).where(
        accounts.c.id == account_id, accounts.c.kind.in_(_CUSTOMER_KINDS)
    )
    return (await conn.execute(query)).one_or_none()


async def update_customer_account(
    conn: AsyncConnection,
    account_id: UUID,
    *,
    name: str | None = None,
    overdraft_limit: int | None = None,
) -> Record | None:
    """The admin's changes to a customer account; the account as it is then (None: no such
    customer account). A new overdraft limit takes only if the account uses no more than it
    (balance - held >= -limit), judged by the UPDATE itself: it waits for a worker holding the
    row and judges the row the worker left, and the workers read the limit under the same row
    lock, so no debit can slip between. Raises OverdraftInUse (nothing changed) otherwise."""
    values: dict[str, Any] = {}
    if name is not None:
        values["name"] = name
    if overdraft_limit is not None:
        values["overdraft_limit"] = overdraft_limit
    if values:
        query = accounts.update().where(
            accounts.c.id == account_id, accounts.c.kind.in_(_CUSTOMER_KINDS)
        )
        if overdraft_limit is not None:
            query = query.where(accounts.c.balance - accounts.c.held >= -overdraft_limit)
        result = await conn.execute(
            query.values(**values, updated_at=sa.func.now()).returning(accounts.c.id)
        )
        if result.one_or_none() is None:
            row = await customer_account(conn, account_id)
            if row is not None:
                raise OverdraftInUse(row)
            return None
    return await customer_account(conn, account_id)


# ---------------------------------------------------------------- deposit limits (admin)

_limit_columns = (
    deposit_limits.c.currency,
    deposit_limits.c.per_operation,
    deposit_limits.c.daily,
    deposit_limits.c.window_head,
    deposit_limits.c.window_sums,
    sa.cast(sa.extract("epoch", sa.func.now()), sa.Float).label("now"),
)


async def deposit_limit_rows(conn: AsyncConnection, subject_id: UUID) -> Sequence[Record]:
    """A subject's limit rows, by currency, with the database's now (to roll their windows)."""
    return (
        await conn.execute(
            sa.select(*_limit_columns)
            .where(deposit_limits.c.subject_id == subject_id)
            .order_by(deposit_limits.c.currency)
        )
    ).all()


async def set_deposit_limits(
    conn: AsyncConnection,
    subject_kind: str,
    subject_id: UUID,
    currency: str,
    per_operation: int | None,
    daily: int | None,
) -> Record:
    """Set (None: clear, back to the default) a subject's limits in one currency; its window of
    deposits stays as it is. Locks the row like intake's group commit does."""
    statement = insert(deposit_limits).values(
        subject_id=subject_id,
        currency=currency,
        subject_kind=subject_kind,
        per_operation=per_operation,
        daily=daily,
    )
    return (
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["subject_id", "currency"],
                set_={
                    "per_operation": statement.excluded.per_operation,
                    "daily": statement.excluded.daily,
                    "updated_at": sa.func.now(),
                },
            ).returning(*_limit_columns)
        )
    ).one()
