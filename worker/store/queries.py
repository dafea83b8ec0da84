"""Queries the API runs: users, accounts, operation intake and reads. Async, one statement each where possible."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg import AsyncClientCursor
from psycopg.pq import TransactionStatus
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.dialects.postgresql import UUID as PGUUID
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from domain import limits as deposit_limits_rules
from domain.limits import Claim, Key, Limits, Refusal, Subject, Window
from worker.store.db import UNIQUE_VIOLATION, sqlstate
from worker.store.fast import Compiled, FastStore
from worker.store.tables import (
    DEBIT_TYPES_SQL,
    accounts,
    assets,
    deposit_limits,
    entries,
    holds,
    operations,
    users,
)

# A result row; columns are read by name (row.balance), so the tuple shape stays open.
Record = sa.Row[*tuple[Any, ...]]


def new_id() -> UUID:
    """UUIDv7 (RFC 9562): time-ordered, so id order is creation order for cursor pages."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    rand_a, rand_b = rand >> 68, rand & ((1 << 62) - 1)
    value = (millis & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    return uuid.UUID(int=value)


class UsernameTaken(Exception):
    """Another user already has this name (names are compared case-insensitively)."""


# ---------------------------------------------------------------- users

# What is shown of a user (never the password hash): registration, the admin's user reads.
USER_COLUMNS = (users.c.id, users.c.username, users.c.created_at)


async def create_user(conn: AsyncConnection, username: str, password_hash: str) -> Record:
    try:
        return (
            await conn.execute(
                insert(users)
                .values(id=new_id(), username=username, password_hash=password_hash)
                .returning(*USER_COLUMNS)
            )
        ).one()
    except IntegrityError as exc:
        if sqlstate(exc) == UNIQUE_VIOLATION:
            raise UsernameTaken(username) from exc
        raise


async def user_by_username(conn: AsyncConnection, username: str) -> Record | None:
    return (
        await conn.execute(
            sa.select(users.c.id, users.c.username, users.c.password_hash).where(
                sa.func.lower(users.c.username) == username.lower()
            )
        )
    ).one_or_none()


# ---------------------------------------------------------------- accounts

_pending_debits = (
    sa.select(sa.cast(sa.func.coalesce(sa.func.sum(operations.c.amount), 0), sa.BigInteger))
    .where(
        operations.c.account_id == accounts.c.id,
        operations.c.status == "pending",
        # A literal list, not a bound one: an expanding IN parameter costs work on every query.
        sa.text(f"operations.type IN {DEBIT_TYPES_SQL}"),
    )
    .scalar_subquery()
)

ACCOUNT_COLUMNS = (
    accounts.c.id,
    accounts.c.owner_id,
    accounts.c.name,
    accounts.c.kind,
    accounts.c.currency,
    accounts.c.balance,
    accounts.c.overdraft_limit,
    accounts.c.held,
    accounts.c.frozen,
    accounts.c.closed_at,
    accounts.c.metadata,
    accounts.c.created_at,
    accounts.c.updated_at,
    _pending_debits.label("pending_debits"),
)


class AccountClosed(Exception):
    """The account is closed: it takes no change."""


def _jsonb(metadata: Mapping[str, str] | None) -> Any:
    """Stored metadata (domain/metadata.py `canonical`): none is SQL NULL, not JSON null."""
    return sa.null() if metadata is None else dict(metadata)


# An account opened with a deposit (api/controllers/accounts.py) carries a digest of the request
# that opened it in the last bits of its id, which are random in a UUIDv7: the id stays
# time-ordered, and a retry of the request recognises the account (and its deposit) by them.
ID_TAIL_BITS = 48
_ID_TAIL_MASK = (1 << ID_TAIL_BITS) - 1


def new_id_with_tail(tail: int) -> UUID:
    """A new_id() whose last ID_TAIL_BITS bits are `tail` (26 random bits stay)."""
    return UUID(int=(new_id().int & ~_ID_TAIL_MASK) | (tail & _ID_TAIL_MASK))


def id_tail(account_id: UUID) -> int:
    return account_id.int & _ID_TAIL_MASK


async def insert_account(
    conn: AsyncConnection,
    *,
    account_id: UUID,
    owner_id: UUID,
    name: str,
    kind: str,
    currency: str,
    metadata: Mapping[str, str] | None = None,
) -> bool:
    """Insert an account unless one with this id exists; True if this call created it."""
    result = await conn.execute(
        insert(accounts)
        .values(
            id=account_id,
            owner_id=owner_id,
            name=name,
            kind=kind,
            currency=currency,
            metadata=_jsonb(metadata),
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(accounts.c.id)
    )
    return result.one_or_none() is not None


async def create_account(
    conn: AsyncConnection,
    owner_id: UUID,
    name: str,
    kind: str,
    currency: str,
    metadata: Mapping[str, str] | None = None,
) -> Record:
    account_id = new_id()
    await insert_account(
        conn,
        account_id=account_id,
        owner_id=owner_id,
        name=name,
        kind=kind,
        currency=currency,
        metadata=metadata,
    )
    row = await account_for_owner(conn, account_id, owner_id)
    assert row is not None
    return row


async def accounts_with_id_tail(
    conn: AsyncConnection, owner_id: UUID, tail: int
) -> Sequence[Record]:
    """The owner's accounts whose id ends in `tail` (new_id_with_tail), oldest first: a walk of
    the owner's accounts on ix_accounts_owner_id_id."""
    hex_tail = f"{tail & _ID_TAIL_MASK:0{ID_TAIL_BITS // 4}x}"
    query = sa.select(*ACCOUNT_COLUMNS).where(
        accounts.c.owner_id == owner_id,
        sa.func.right(sa.cast(accounts.c.id, sa.Text), ID_TAIL_BITS // 4) == hex_tail,
    )
    return (await conn.execute(query.order_by(accounts.c.id))).all()


async def delete_unused_account(conn: AsyncConnection, account_id: UUID, owner_id: UUID) -> bool:
    """Delete the owner's account if nothing ever happened to it: no operation names it (so no
    entry, hold or position either) and its balance is zero. True if it was deleted. Only for an
    account that was never shown to anyone (a refused opening deposit's); an account is otherwise
    never deleted (api/directory.py caches what it was)."""
    named = sa.or_(
        sa.exists().where(operations.c.account_id == account_id),
        sa.exists().where(operations.c.to_account_id == account_id),
    )
    result = await conn.execute(
        accounts.delete()
        .where(
            accounts.c.id == account_id,
            accounts.c.owner_id == owner_id,
            accounts.c.balance == 0,
            sa.not_(named),
        )
        .returning(accounts.c.id)
    )
    return result.one_or_none() is not None


async def change_account(
    conn: AsyncConnection, account_id: UUID, owner_id: UUID, changes: Mapping[str, Any]
) -> Record | None:
    """The owner's changes (`name`, `metadata` in its stored form: replaced whole, None clears
    it); the account as it is then, None when the owner has no such account. Raises
    AccountClosed for a closed account (the UPDATE waits for a worker holding the row, so a close
    applied meanwhile is seen). No changes: the account as it is."""
    values = {
        name: _jsonb(value) if name == "metadata" else value for name, value in changes.items()
    }
    if values:
        # Holds the row until the caller commits: the read below sees what this changed.
        await conn.execute(
            accounts.update()
            .where(
                accounts.c.id == account_id,
                accounts.c.owner_id == owner_id,
                accounts.c.closed_at.is_(None),
            )
            .values(**values, updated_at=sa.func.now())
        )
    row = await account_for_owner(conn, account_id, owner_id)
    if row is not None and row.closed_at is not None:
        raise AccountClosed(account_id)
    return row


ACCOUNT_FOR_OWNER = sa.select(*ACCOUNT_COLUMNS).where(
    accounts.c.id == sa.bindparam("account_id"), accounts.c.owner_id == sa.bindparam("owner_id")
)
FAST_ACCOUNT_FOR_OWNER = Compiled(ACCOUNT_FOR_OWNER)


async def fast_account_for_owner(db: FastStore, account_id: UUID, owner_id: UUID) -> Record | None:
    """`account_for_owner` on the fast path (`GET /accounts/{id}`, the WebSocket's re-reads)."""
    return await db.one(FAST_ACCOUNT_FOR_OWNER, {"account_id": account_id, "owner_id": owner_id})


async def account_for_owner(
    conn: AsyncConnection, account_id: UUID, owner_id: UUID
) -> Record | None:
    """The account, only if it belongs to owner_id: anyone else's is indistinguishable from missing."""
    params = {"account_id": account_id, "owner_id": owner_id}
    return (await conn.execute(ACCOUNT_FOR_OWNER, params)).one_or_none()


async def accounts_for_owner(
    conn: AsyncConnection, owner_id: UUID, after: UUID | None, limit: int
) -> Sequence[Record]:
    query = sa.select(*ACCOUNT_COLUMNS).where(accounts.c.owner_id == owner_id)
    if after is not None:
        query = query.where(accounts.c.id > after)
    return (await conn.execute(query.order_by(accounts.c.id).limit(limit))).all()


# ---------------------------------------------------------------- accounts as of an instant

_AS_OF = sa.bindparam("as_of", type_=sa.DateTime(timezone=True))
# The balance then: the balance after the account's last entry up to that instant, found by
# walking ix_entries_account_id_id newest first (entry ids grow in apply order per account and
# entries are dated by the clock while the account's row is locked, so that order is time order).
_balance_then = (
    sa.select(entries.c.balance_after)
    .where(entries.c.account_id == accounts.c.id, entries.c.created_at <= _AS_OF)
    .order_by(entries.c.id.desc())
    .limit(1)
    .scalar_subquery()
)
# What holds reserved then: the holds applied by that instant and not yet captured or voided.
_held_then = (
    sa.select(sa.cast(sa.func.coalesce(sa.func.sum(holds.c.amount), 0), sa.BigInteger))
    .where(
        holds.c.account_id == accounts.c.id,
        holds.c.created_at <= _AS_OF,
        sa.or_(holds.c.closed_at.is_(None), holds.c.closed_at > _AS_OF),
    )
    .scalar_subquery()
)
ACCOUNT_AS_OF = sa.select(
    accounts.c.id,
    accounts.c.owner_id,
    accounts.c.name,
    accounts.c.kind,
    accounts.c.currency,
    sa.func.coalesce(_balance_then, 0).label("balance"),
    accounts.c.overdraft_limit,
    _held_then.label("held"),
    accounts.c.frozen,
    accounts.c.closed_at,
    accounts.c.metadata,
    accounts.c.created_at,
    accounts.c.updated_at,
    # A past instant has no pending debits: what was pending then is applied or gone now.
    sa.literal(0, sa.BigInteger).label("pending_debits"),
    sa.func.now().label("now"),
).where(
    accounts.c.id == sa.bindparam("account_id"), accounts.c.owner_id == sa.bindparam("owner_id")
)


async def account_as_of(
    conn: AsyncConnection, account_id: UUID, owner_id: UUID, as_of: dt.datetime
) -> Record | None:
    """The owner's account with its balances as of `as_of` (balance, held; pending_debits 0; the
    other columns as they are now), and the database's `now`, for the caller to judge `as_of`
    against it and `created_at`. One statement, so one snapshot."""
    params = {"account_id": account_id, "owner_id": owner_id, "as_of": as_of}
    return (await conn.execute(ACCOUNT_AS_OF, params)).one_or_none()


async def account_clock(conn: AsyncConnection, account_id: UUID, owner_id: UUID) -> Record | None:
    """The owner's account's `created_at` and the database's `now` (to judge an `as_of`)."""
    query = sa.select(accounts.c.created_at, sa.func.now().label("now")).where(
        accounts.c.id == account_id, accounts.c.owner_id == owner_id
    )
    return (await conn.execute(query)).one_or_none()


# ---------------------------------------------------------------- entries


@dataclass(frozen=True)
class EntryFilter:
    category: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    # The history as it stood at that instant: entries dated up to it (inclusive).
    as_of: dt.datetime | None = None


async def entries_for_account(
    conn: AsyncConnection, account_id: UUID, before: int | None, limit: int, filters: EntryFilter
) -> Sequence[Record]:
    """Newest first, keyset pages on the entry id (ix_entries_account_id_id)."""
    query = (
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
        .where(entries.c.account_id == account_id)
    )
    if before is not None:
        query = query.where(entries.c.id < before)
    if filters.category is not None:
        query = query.where(entries.c.category == filters.category)
    if filters.since is not None:
        query = query.where(entries.c.created_at >= filters.since)
    if filters.until is not None:
        query = query.where(entries.c.created_at < filters.until)
    if filters.as_of is not None:
        query = query.where(entries.c.created_at <= filters.as_of)
    return (await conn.execute(query.order_by(entries.c.id.desc()).limit(limit))).all()


async def entries_for_operations(
    conn: AsyncConnection, account_id: UUID, operation_ids: Sequence[UUID]
) -> Sequence[Record]:
    """The account's entries (amount, balance after) for these operations (none for a failed one)."""
    query = sa.select(entries.c.operation_id, entries.c.amount, entries.c.balance_after).where(
        entries.c.account_id == account_id, entries.c.operation_id.in_(operation_ids)
    )
    return (await conn.execute(query)).all()


# ---------------------------------------------------------------- operations

OPERATION_COLUMNS = (
    operations.c.id,
    operations.c.seq,
    operations.c.principal_id,
    operations.c.fingerprint,
    operations.c.type,
    operations.c.account_id,
    operations.c.to_account_id,
    operations.c.amount,
    operations.c.currency,
    operations.c.status,
    operations.c.error_code,
    operations.c.error_message,
    operations.c.category,
    operations.c.description,
    operations.c.partition,
    operations.c.asset_id,
    operations.c.quantity,
    operations.c.price,
    operations.c.hold_id,
    operations.c.expires_in,
    operations.c.reversal_of,
    operations.c.reversed_amount,
    operations.c.metadata,
    operations.c.created_at,
    operations.c.updated_at,
    operations.c.applied_at,
)


@dataclass(frozen=True)
class NewOperation:
    principal_id: UUID
    idempotency_key: str
    fingerprint: str
    type: str
    account_id: UUID
    to_account_id: UUID | None
    amount: int
    currency: str
    partition: int
    category: str | None
    description: str | None
    asset_id: UUID | None = None
    quantity: int | None = None
    hold_id: UUID | None = None
    expires_in: int | None = None
    reversal_of: UUID | None = None
    # JSON text of the canonical metadata (domain/metadata.py), or None.
    metadata: str | None = None
    # Deposits: the limits that apply where the admin set none for the user (or the key), and the
    # API key that submitted it, whose limits count too (domain/limits.py). `limits` None: not
    # limited (the admin's deposits, and every other type).
    limits: Limits | None = None
    api_key_id: UUID | None = None
    # Chosen before the INSERT: the submission whose id the stored row carries is the one that
    # created it; any other submission with the same key is a replay or a conflict.
    id: UUID = field(default_factory=new_id)

    @property
    def limited(self) -> bool:
        return self.limits is not None and self.type == "deposit"


# Idempotency keys are unique per principal.
OperationKey = tuple[UUID, str]

_NEW_OPERATION_COLUMNS = (
    "id",
    "partition",
    "principal_id",
    "idempotency_key",
    "fingerprint",
    "type",
    "account_id",
    "to_account_id",
    "amount",
    "currency",
    "category",
    "description",
    "asset_id",
    "quantity",
    "hold_id",
    "expires_in",
    "reversal_of",
    "metadata",
)


def _unnest(names: Sequence[str]) -> Any:
    """`unnest(CAST(:a AS T[]), ...) AS new(a, ...)`: one array parameter per column, so any
    number of rows is one statement with one fixed SQL text."""
    arrays = [sa.cast(sa.bindparam(n), ARRAY(operations.c[n].type)) for n in names]
    return sa.func.unnest(*arrays).table_valued(*names).render_derived(name="new")


_new_rows = _unnest(_NEW_OPERATION_COLUMNS)
_INSERT_OPERATIONS = Compiled(
    insert(operations)
    .from_select(
        list(_NEW_OPERATION_COLUMNS), sa.select(*(_new_rows.c[n] for n in _NEW_OPERATION_COLUMNS))
    )
    .on_conflict_do_nothing(index_elements=["principal_id", "idempotency_key"])
    .returning(*OPERATION_COLUMNS, operations.c.idempotency_key)
)
_wanted_keys = _unnest(("principal_id", "idempotency_key"))
_OPERATIONS_BY_KEYS = Compiled(
    sa.select(*OPERATION_COLUMNS, operations.c.idempotency_key).where(
        sa.tuple_(operations.c.principal_id, operations.c.idempotency_key).in_(
            sa.select(_wanted_keys.c.principal_id, _wanted_keys.c.idempotency_key)
        )
    )
)


def _first_of_each_key(news: Sequence[NewOperation]) -> dict[OperationKey, NewOperation]:
    first: dict[OperationKey, NewOperation] = {}
    for new in news:
        first.setdefault((new.principal_id, new.idempotency_key), new)
    return first


def _insert_params(rows: Sequence[NewOperation]) -> dict[str, list[Any]]:
    return {name: [getattr(new, name) for new in rows] for name in _NEW_OPERATION_COLUMNS}


def _keys_params(missing: Sequence[OperationKey]) -> dict[str, list[Any]]:
    return {
        "principal_id": [principal for principal, _ in missing],
        "idempotency_key": [key for _, key in missing],
    }


def _by_key(rows: Iterable[Record]) -> dict[OperationKey, Record]:
    return {(r.principal_id, r.idempotency_key): r for r in rows}


async def insert_operations(
    db: FastStore, news: Sequence[NewOperation]
) -> dict[OperationKey, Record]:
    """Store every operation whose key is new for its principal: one multi-row INSERT, one
    transaction (a single statement in autocommit), however many principals and rows.

    Returns the stored row per (principal, key): a row whose id is the NewOperation's own was
    created by this call. The first NewOperation of a key wins; later ones with the same key are
    left for the caller to judge (replay or conflict). A key stored earlier, or by a concurrent
    transaction (the unique index makes this INSERT wait for it to commit, then skip the row), is
    read back by a second statement.
    """
    first = _first_of_each_key(news)
    if not first:
        return {}
    stored = _by_key(await db.all(_INSERT_OPERATIONS, _insert_params(list(first.values()))))
    missing = [key for key in first if key not in stored]
    if missing:
        stored.update(_by_key(await db.all(_OPERATIONS_BY_KEYS, _keys_params(missing))))
    return stored


# ---------------------------------------------------------------- deposit limits at intake


class Stored(dict[OperationKey, Record]):
    """What a group commit stored, per (principal, key), and what it refused: `refused` maps the
    id of every NewOperation of a request refused whole (a deposit limit) to why. Nothing a
    refused request created is stored."""

    def __init__(
        self,
        rows: Mapping[OperationKey, Record] | None = None,
        refused: Mapping[UUID, Refusal] | None = None,
    ) -> None:
        super().__init__(rows or {})
        self.refused: dict[UUID, Refusal] = dict(refused or {})


# Deposit limit rows of the group's subjects: created on first use, then locked in key order
# (the lock serialises the group commits of one subject across API processes; the SELECT runs
# after the INSERT, so its snapshot holds rows another transaction created meanwhile, and FOR
# UPDATE returns each row's latest version). The database's clock dates the deposits.
_subjects = (
    sa.func.unnest(
        sa.cast(sa.bindparam("subject_ids"), ARRAY(PGUUID(as_uuid=True))),
        sa.cast(sa.bindparam("currencies"), ARRAY(sa.Text)),
        sa.cast(sa.bindparam("kinds"), ARRAY(sa.Text)),
    )
    .table_valued("subject_id", "currency", "subject_kind")
    .render_derived(name="s")
)
_CREATE_LIMIT_ROWS = Compiled(
    insert(deposit_limits)
    .from_select(
        ["subject_id", "currency", "subject_kind"],
        sa.select(_subjects.c.subject_id, _subjects.c.currency, _subjects.c.subject_kind),
    )
    .on_conflict_do_nothing(index_elements=["subject_id", "currency"])
)
_LIMIT_COLUMNS = (
    deposit_limits.c.subject_id,
    deposit_limits.c.subject_kind,
    deposit_limits.c.currency,
    deposit_limits.c.per_operation,
    deposit_limits.c.daily,
    deposit_limits.c.window_head,
    deposit_limits.c.window_sums,
    sa.cast(sa.extract("epoch", sa.func.clock_timestamp()), sa.Float).label("now"),
)
_LOCK_LIMIT_ROWS = Compiled(
    sa.select(*_LIMIT_COLUMNS)
    .where(
        sa.tuple_(deposit_limits.c.subject_id, deposit_limits.c.currency).in_(
            sa.select(_subjects.c.subject_id, _subjects.c.currency)
        )
    )
    .order_by(deposit_limits.c.subject_id, deposit_limits.c.currency)
    .with_for_update()
)
_SAVE_WINDOWS = Compiled(
    sa.text(
        """
        UPDATE deposit_limits AS d
        SET window_head = v.head, window_sums = CAST(v.sums AS bigint[]),
            updated_at = clock_timestamp()
        FROM unnest(
            CAST(:subject_ids AS uuid[]), CAST(:currencies AS text[]),
            CAST(:heads AS bigint[]), CAST(:sums AS text[])
        ) AS v(subject_id, currency, head, sums)
        WHERE d.subject_id = v.subject_id AND d.currency = v.currency
        """
    )
)
_DELETE_OPERATIONS = Compiled(
    sa.text("DELETE FROM operations WHERE id = ANY(CAST(:ids AS uuid[]))")
)


# (subject, currency) pairs whose limit row this process saw committed (rows are never deleted):
# their group commits skip the INSERT that creates missing ones.
_known_limit_rows: set[Key] = set()
_BEGIN = Compiled(sa.text("BEGIN"))
_COMMIT = Compiled(sa.text("COMMIT"))


async def operations_by_keys(
    db: FastStore, keys: Sequence[OperationKey]
) -> dict[OperationKey, Record]:
    """The operations already stored under these (principal, idempotency key) pairs."""
    if not keys:
        return {}
    return _by_key(await db.all(_OPERATIONS_BY_KEYS, _keys_params(list(keys))))


async def _run_many(
    cursor: AsyncClientCursor[Any], statements: Sequence[tuple[Compiled, Mapping[str, Any]]]
) -> list[list[Any]]:
    """Run statements in one round trip (client-side binding, one simple query); returns the
    rows of each statement that returns rows, in order."""
    sql = ";\n".join(statement.sql for statement, _ in statements)
    params: dict[str, Any] = {}
    for statement, values in statements:
        for name, value in statement.bind(values).items():
            assert name not in params or params[name] == value, f"parameter {name} differs"
            params[name] = value
    await cursor.execute(sql, params)
    results: list[list[Any]] = []
    while True:
        if cursor.description is not None:
            results.append(await cursor.fetchall())
        if not cursor.nextset():
            return results


def subjects_of(new: NewOperation) -> tuple[Subject, ...]:
    """Whose limits a deposit counts against: its user's, and its API key's if it came with one."""
    user = Subject(deposit_limits_rules.USER, new.principal_id)
    if new.api_key_id is None:
        return (user,)
    return (user, Subject(deposit_limits_rules.API_KEY, new.api_key_id))


def window_of(row: Record) -> Window:
    return Window(int(row.window_head), tuple(int(s) for s in row.window_sums))


async def insert_operations_limited(
    db: FastStore, requests: Sequence[Sequence[NewOperation]]
) -> Stored:
    """A group commit that counts deposits against their subjects' limits: the operations of
    `requests` (one sequence per submitting request, in arrival order) are stored in one
    transaction, except every operation of a request whose new deposits would pass a limit.

    Without a limited deposit this is insert_operations (one statement). With one: the
    subjects' limit rows are locked, the operations inserted, the new deposits judged request by
    request (domain.limits.judge; replays count nothing), the windows written and what refused
    requests created deleted, in one transaction of two round trips (BEGIN, the INSERT, the
    rows of every key, the locks; the writes and COMMIT). A request that shared a key with a
    refused one lost its row with it: it is refused too, with the same reason.
    """
    news = [new for request in requests for new in request]
    if not any(new.limited for new in news):
        return Stored(await insert_operations(db, news))
    first = _first_of_each_key(news)
    pairs: dict[Key, Limits] = {}
    for new in news:
        if new.limited:
            assert new.limits is not None
            for subject in subjects_of(new):
                pairs.setdefault((subject, new.currency), new.limits)
    ordered = sorted(pairs, key=lambda pair: (pair[0].id, pair[1]))
    subjects = {
        "subject_ids": [subject.id for subject, _ in ordered],
        "currencies": [currency for _, currency in ordered],
        "kinds": [subject.kind for subject, _ in ordered],
    }
    async with db.pool.connection() as conn:
        # Client-side binding lets one round trip carry several statements, BEGIN included.
        # The limit rows are locked last in the first round trip, after the operations are
        # inserted and read back: a group holds its subjects' rows (which every group of the same
        # user, in any API process, waits for) only while it judges and for the second round
        # trip, not across a third. psycopg's pipeline mode cost twice the CPU.
        cursor = AsyncClientCursor(conn)
        try:
            op_keys = list(first)
            opening: list[tuple[Compiled, Mapping[str, Any]]] = [
                (_BEGIN, {}),
                (_INSERT_OPERATIONS, _insert_params(list(first.values()))),
                # Every key's row, created now or stored before (the same arrays as the INSERT).
                (_OPERATIONS_BY_KEYS, _keys_params(op_keys)),
            ]
            if not all(pair in _known_limit_rows for pair in ordered):
                opening.append((_CREATE_LIMIT_ROWS, subjects))
            [_, existing, limit_rows] = await _run_many(
                cursor, [*opening, (_LOCK_LIMIT_ROWS, subjects)]
            )
            if len(limit_rows) < len(ordered):
                # A row this process took for created is missing (its database was replaced):
                # create what is missing, in this transaction, and lock again.
                _known_limit_rows.difference_update(ordered)
                [limit_rows] = await _run_many(
                    cursor, [(_CREATE_LIMIT_ROWS, subjects), (_LOCK_LIMIT_ROWS, subjects)]
                )
            stored = _by_key(existing)
            windows: dict[Key, Window] = {}
            limits: dict[Key, Limits] = {}
            for row in limit_rows:
                pair = (Subject(row.subject_kind, row.subject_id), row.currency)
                windows[pair] = window_of(row)
                limits[pair] = pairs[pair].overridden(row.per_operation, row.daily)
            now = max(row.now for row in limit_rows)
            refused, changed, deleted = _judge_requests(requests, stored, windows, limits, now)
            finish: list[tuple[Compiled, Mapping[str, Any]]] = []
            if changed:
                keys = sorted(changed, key=lambda pair: (pair[0].id, pair[1]))
                windows_params = {
                    "subject_ids": [subject.id for subject, _ in keys],
                    "currencies": [currency for _, currency in keys],
                    "heads": [changed[k].head for k in keys],
                    "sums": ["{" + ",".join(map(str, changed[k].sums)) + "}" for k in keys],
                }
                finish.append((_SAVE_WINDOWS, windows_params))
            if deleted:
                finish.append((_DELETE_OPERATIONS, {"ids": sorted(deleted)}))
            await _run_many(cursor, [*finish, (_COMMIT, {})])
            _known_limit_rows.update(ordered)
        except BaseException:
            if conn.info.transaction_status != TransactionStatus.IDLE and not conn.closed:
                with contextlib.suppress(Exception):
                    await conn.execute("ROLLBACK")
            raise
    kept = {key: row for key, row in stored.items() if row.id not in deleted}
    return Stored(kept, refused)


def _judge_requests(
    requests: Sequence[Sequence[NewOperation]],
    stored: Mapping[OperationKey, Record],
    windows: Mapping[Key, Window],
    limits: Mapping[Key, Limits],
    now: float,
) -> tuple[dict[UUID, Refusal], dict[Key, Window], set[UUID]]:
    """(refusal per NewOperation id of every refused request, changed windows, ids of the rows
    refused requests created). Requests are judged in order; one whose rows went with a refused
    request is refused too, and the judgement runs again without it until nothing changes."""

    def row_of(new: NewOperation) -> Record:
        return stored[(new.principal_id, new.idempotency_key)]

    forced: dict[int, Refusal] = {}
    while True:
        judged = [i for i in range(len(requests)) if i not in forced]
        # A request's operations share their principal and key; replays are not claimed.
        claims = [
            Claim(
                subjects_of(requests[i][0]) if requests[i] else (),
                tuple(
                    (new.currency, new.amount)
                    for new in requests[i]
                    if new.limited and row_of(new).id == new.id
                ),
            )
            for i in judged
        ]
        verdicts, changed = deposit_limits_rules.judge(claims, windows, limits, now)
        refusals = dict(forced)
        refusals.update({i: v for i, v in zip(judged, verdicts, strict=True) if v is not None})
        created_by = {
            row_of(new).id: i for i in refusals for new in requests[i] if row_of(new).id == new.id
        }
        dependents = {
            i: refusals[created_by[row_of(new).id]]
            for i in range(len(requests))
            if i not in refusals
            for new in requests[i]
            if row_of(new).id in created_by
        }
        if not dependents:
            break
        forced.update(dependents)
    refused = {new.id: refusal for i, refusal in refusals.items() for new in requests[i]}
    return refused, changed, set(created_by)


_ACCOUNTS_BY_IDS = Compiled(
    sa.select(
        accounts.c.id,
        accounts.c.owner_id,
        accounts.c.kind,
        accounts.c.currency,
        accounts.c.closed_at,
    ).where(accounts.c.id == sa.func.any(sa.bindparam("ids", type_=ARRAY(PGUUID(as_uuid=True)))))
)
_ASSET_CURRENCIES = Compiled(
    sa.select(assets.c.id, assets.c.currency).where(
        assets.c.id == sa.func.any(sa.bindparam("ids", type_=ARRAY(PGUUID(as_uuid=True))))
    )
)


async def accounts_by_ids(db: FastStore, account_ids: Iterable[UUID]) -> dict[UUID, Record]:
    rows = await db.all(_ACCOUNTS_BY_IDS, {"ids": list(set(account_ids))})
    return {r.id: r for r in rows}


async def asset_currencies(db: FastStore, asset_ids: Iterable[UUID]) -> dict[UUID, str]:
    rows = await db.all(_ASSET_CURRENCIES, {"ids": list(set(asset_ids))})
    return {r.id: r.currency for r in rows}


OPERATION_FOR_PRINCIPAL = sa.select(*OPERATION_COLUMNS).where(
    operations.c.id == sa.bindparam("operation_id"),
    operations.c.principal_id == sa.bindparam("principal_id"),
)
FAST_OPERATION_FOR_PRINCIPAL = Compiled(OPERATION_FOR_PRINCIPAL)

# The followers' periodic look at PostgreSQL (api/controllers/events.py `looks`): by primary key,
# one statement however many operations are waited on or accounts followed.
_IDS = sa.bindparam("ids", type_=ARRAY(PGUUID(as_uuid=True)))
FAST_FINAL_OPERATIONS = Compiled(
    sa.select(operations.c.id).where(
        operations.c.id == sa.func.any(_IDS), operations.c.status != "pending"
    )
)
FAST_BALANCES = Compiled(
    sa.select(accounts.c.id, accounts.c.balance).where(accounts.c.id == sa.func.any(_IDS))
)


async def fast_operation_for_principal(
    db: FastStore, operation_id: UUID, principal_id: UUID
) -> Record | None:
    """`operation_for_principal` on the fast path (`GET /operations/{id}`, `Prefer: wait`)."""
    params = {"operation_id": operation_id, "principal_id": principal_id}
    return await db.one(FAST_OPERATION_FOR_PRINCIPAL, params)


async def final_operation_ids(db: FastStore, operation_ids: Sequence[UUID]) -> list[UUID]:
    """Which of these operations are no longer pending (the followers' periodic look)."""
    return [r.id for r in await db.all(FAST_FINAL_OPERATIONS, {"ids": list(operation_ids)})]


async def balances_by_id(db: FastStore, account_ids: Sequence[UUID]) -> dict[UUID, int]:
    """Each account's applied balance (the followers' periodic look)."""
    rows = await db.all(FAST_BALANCES, {"ids": list(account_ids)})
    return {r.id: int(r.balance) for r in rows}


async def operation_for_principal(
    conn: AsyncConnection, operation_id: UUID, principal_id: UUID
) -> Record | None:
    params = {"operation_id": operation_id, "principal_id": principal_id}
    return (await conn.execute(OPERATION_FOR_PRINCIPAL, params)).one_or_none()


async def operations_for_principal(
    conn: AsyncConnection,
    principal_id: UUID,
    before_seq: int | None,
    limit: int,
    account_id: UUID | None = None,
    status: str | None = None,
    metadata: tuple[str, str] | None = None,
) -> Sequence[Record]:
    """Newest first (by seq), keyset pages. `metadata`: only operations carrying this pair
    (containment, ix_operations_metadata)."""
    query = sa.select(*OPERATION_COLUMNS).where(operations.c.principal_id == principal_id)
    if before_seq is not None:
        query = query.where(operations.c.seq < before_seq)
    if account_id is not None:
        query = query.where(
            sa.or_(operations.c.account_id == account_id, operations.c.to_account_id == account_id)
        )
    if status is not None:
        query = query.where(operations.c.status == status)
    if metadata is not None:
        key, value = metadata
        # The IS NOT NULL repeats the partial index's predicate, so the planner may use it.
        query = query.where(
            operations.c.metadata.is_not(None), operations.c.metadata.contains({key: value})
        )
    return (await conn.execute(query.order_by(operations.c.seq.desc()).limit(limit))).all()


async def cancel_operation(
    conn: AsyncConnection, operation_id: UUID, principal_id: UUID
) -> Record | None:
    """Cancel only while pending. If the worker holds the row, the lock waits for its commit and
    then reads the operation no longer pending. The row is found by primary key alone: with a
    status condition the planner could walk the whole pending index instead (statistics taken
    while nothing was pending estimate one pending row)."""
    locked = (
        await conn.execute(
            sa.select(operations.c.status)
            .where(operations.c.id == operation_id, operations.c.principal_id == principal_id)
            .with_for_update(key_share=True)
        )
    ).one_or_none()
    if locked is None or locked.status != "pending":
        return None
    return (
        await conn.execute(
            operations.update()
            .where(operations.c.id == operation_id)
            .values(status="cancelled", updated_at=sa.func.clock_timestamp())
            .returning(*OPERATION_COLUMNS)
        )
    ).one()
