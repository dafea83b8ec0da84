"""Queries for access: API keys (create, find by prefix, list, revoke) and the admin's listings."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.store.queries import Record, new_id
from worker.store.queries import _account_columns as account_columns
from worker.store.tables import accounts, api_keys, users

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
) -> Record:
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
            )
            .returning(*_key_columns)
        )
    ).one()


async def live_keys_with_prefix(conn: AsyncConnection, prefix: str) -> Sequence[Record]:
    """Unrevoked keys whose secret starts with `prefix`, with their owner's name (one index probe).

    The caller compares `secret_hash` in constant time; a prefix is not unique, only selective.
    """
    return (
        await conn.execute(
            sa.select(*_key_columns, api_keys.c.secret_hash, users.c.username)
            .join(users, users.c.id == api_keys.c.user_id)
            .where(api_keys.c.prefix == prefix, api_keys.c.revoked_at.is_(None))
        )
    ).all()


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
    """Live keys, oldest first; of one user, or of everyone when user_id is None (the admin)."""
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
    return (
        await conn.execute(
            sa.select(users.c.id, users.c.username, users.c.created_at).where(users.c.id == user_id)
        )
    ).one_or_none()


async def users_page(conn: AsyncConnection, after: UUID | None, limit: int) -> Sequence[Record]:
    query = sa.select(users.c.id, users.c.username, users.c.created_at)
    if after is not None:
        query = query.where(users.c.id > after)
    return (await conn.execute(query.order_by(users.c.id).limit(limit))).all()


async def accounts_page(
    conn: AsyncConnection, owner_id: UUID | None, after: UUID | None, limit: int
) -> Sequence[Record]:
    """Every account (system accounts included, with owner_id NULL), or one owner's, by id."""
    query = sa.select(*account_columns)
    if owner_id is not None:
        query = query.where(accounts.c.owner_id == owner_id)
    if after is not None:
        query = query.where(accounts.c.id > after)
    return (await conn.execute(query.order_by(accounts.c.id).limit(limit))).all()
