"""Webhooks' SQL: the outbox rows the apply and cancel transactions write, the endpoints the API
manages, and the dispatcher's claims and records (worker/webhooks.py).

The outbox is written by the statement that applies a batch (worker/store/ledger.py
`_WRITE_OUTCOMES`, built from the fragments here) and by `write_cancelled` in the cancel's
transaction: an event exists exactly when its operation's outcome does, whatever dies after.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.store.queries import Record, new_id
from worker.store.tables import webhook_deliveries, webhook_endpoints

# ---------------------------------------------------------------- the outbox, in SQL

# A time-ordered UUID (version 7) per row: PostgreSQL before 18 has no uuidv7(). The first 48 bits
# are the Unix time in milliseconds, the version nibble is set to 7.
NEW_DELIVERY_ID = (
    "CAST(encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING"
    " substring(int8send(CAST(floor(extract(epoch FROM clock_timestamp()) * 1000) AS bigint))"
    " FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex') AS uuid)"
)


def event_id_sql(operation: str, event_type: str) -> str:
    """domain/webhooks.py `event_id` in SQL: md5 of the operation id and the type, as a UUID."""
    return f"CAST(md5(CAST({operation} AS text) || {event_type}) AS uuid)"


# The operation as an event carries it: what domain/webhooks.py `operation_fields` reads.
EVENT_OPERATION_COLUMNS = (
    "id",
    "type",
    "status",
    "account_id",
    "to_account_id",
    "amount",
    "currency",
    "asset_id",
    "quantity",
    "price",
    "category",
    "description",
    "hold_id",
    "expires_in",
    "reversal_of",
    "reversed_amount",
    "metadata",
    "error_code",
    "error_message",
    "created_at",
    "updated_at",
    "applied_at",
)
# And the hold, for hold events (`hold_fields`).
EVENT_HOLD_COLUMNS = (
    "id",
    "account_id",
    "to_account_id",
    "currency",
    "amount",
    "captured",
    "released",
    "status",
    "expires_at",
    "created_at",
    "closed_at",
    "closed_by",
)


def subscribed(event_type: str, owner: str) -> str:
    """The join condition of an event with the endpoints that take it: enabled, subscribed to
    its type, and the owner's (`owner`: the account owner's id) or every account's."""
    return (
        f"w.enabled AND {event_type} = ANY(w.events)"
        f" AND (w.owner_id = {owner} OR w.owner_id IS NULL)"
    )


# Whether any endpoint is enabled at all: an uncorrelated EXISTS, so PostgreSQL evaluates it once
# (an InitPlan) and skips the whole join when it is false: no endpoint, no cost.
ANY_ENDPOINT = "EXISTS (SELECT 1 FROM webhook_endpoints WHERE enabled)"


_CANCELLED_EVENT = sa.text(
    f"""
    INSERT INTO webhook_deliveries (id, event_id, endpoint_id, event_type, operation_id, payload)
    SELECT {NEW_DELIVERY_ID}, {event_id_sql("o.id", "'operation.cancelled'")}, w.id,
           'operation.cancelled', o.id, jsonb_build_object('operation', to_jsonb(o))
    FROM (
        SELECT {", ".join(EVENT_OPERATION_COLUMNS)} FROM operations
        WHERE id = :operation_id AND status = 'cancelled'
    ) AS o
    JOIN accounts AS a ON a.id = o.account_id
    JOIN webhook_endpoints AS w ON {subscribed("'operation.cancelled'", "a.owner_id")}
    WHERE {ANY_ENDPOINT}
    ON CONFLICT (event_id, endpoint_id) DO NOTHING
    """  # noqa: S608 (constant fragments, no input)
)


async def write_cancelled(conn: AsyncConnection, operation_id: UUID) -> None:
    """The `operation.cancelled` events of an operation just cancelled, in the cancel's own
    transaction (call it after `queries.cancel_operation` found the operation pending)."""
    await conn.execute(_CANCELLED_EVENT, {"operation_id": operation_id})


# ---------------------------------------------------------------- endpoints (the API)

# While its endpoint is disabled a pending delivery is parked: due at this far-off time, so the
# dispatcher's work list (due rows by time) never walks a disabled endpoint's backlog. Enabling
# the endpoint makes them due now.
PARKED = dt.datetime(9999, 1, 1, tzinfo=dt.UTC)
_PARK = sa.text(
    "UPDATE webhook_deliveries SET next_attempt_at = :parked"
    " WHERE endpoint_id = :id AND status = 'pending'"
)
_RESUME = sa.text(
    "UPDATE webhook_deliveries SET next_attempt_at = now()"
    " WHERE endpoint_id = :id AND status = 'pending' AND next_attempt_at >= :parked"
)

ENDPOINT_COLUMNS = (
    webhook_endpoints.c.id,
    webhook_endpoints.c.owner_id,
    webhook_endpoints.c.created_by,
    webhook_endpoints.c.url,
    webhook_endpoints.c.events,
    webhook_endpoints.c.description,
    webhook_endpoints.c.enabled,
    webhook_endpoints.c.disabled_reason,
    webhook_endpoints.c.disabled_at,
    webhook_endpoints.c.failing_since,
    webhook_endpoints.c.previous_secret_expires_at,
    webhook_endpoints.c.created_at,
    webhook_endpoints.c.updated_at,
)

# An owner (or the admin, for every account) keeps at most this many endpoints.
MAX_ENDPOINTS = 20


def _visible(owner: UUID | None) -> Any:
    """Endpoints `owner` manages: its own; None (the admin): every one. Never a deleted one."""
    live = webhook_endpoints.c.deleted_at.is_(None)
    if owner is None:
        return live
    return sa.and_(live, webhook_endpoints.c.owner_id == owner)


async def endpoint_count(conn: AsyncConnection, owner_id: UUID | None) -> int:
    """Endpoints registered for this owner (None: for every account), deleted ones aside."""
    condition = (
        webhook_endpoints.c.owner_id.is_(None)
        if owner_id is None
        else webhook_endpoints.c.owner_id == owner_id
    )
    query = (
        sa.select(sa.func.count())
        .select_from(webhook_endpoints)
        .where(condition, webhook_endpoints.c.deleted_at.is_(None))
    )
    return int((await conn.execute(query)).scalar_one())


async def lock_owner(conn: AsyncConnection, owner_id: UUID | None) -> None:
    """Serialise registrations of one owner for this transaction (the count, then the insert)."""
    key = str(owner_id or "all")
    await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(0x4C52, sa.func.hashtext(key))))


async def create_endpoint(
    conn: AsyncConnection,
    *,
    owner_id: UUID | None,
    created_by: UUID,
    url: str,
    events: Sequence[str],
    description: str | None,
    secret: str,
) -> Record:
    return (
        await conn.execute(
            webhook_endpoints.insert()
            .values(
                id=new_id(),
                owner_id=owner_id,
                created_by=created_by,
                url=url,
                events=list(events),
                description=description,
                secret=secret,
            )
            .returning(*ENDPOINT_COLUMNS)
        )
    ).one()


async def endpoints_page(
    conn: AsyncConnection, owner: UUID | None, after: UUID | None, limit: int
) -> Sequence[Record]:
    """Endpoints `owner` manages (None: all), oldest first."""
    query = sa.select(*ENDPOINT_COLUMNS).where(_visible(owner))
    if after is not None:
        query = query.where(webhook_endpoints.c.id > after)
    return (await conn.execute(query.order_by(webhook_endpoints.c.id).limit(limit))).all()


async def endpoint(conn: AsyncConnection, endpoint_id: UUID, owner: UUID | None) -> Record | None:
    query = sa.select(*ENDPOINT_COLUMNS).where(
        webhook_endpoints.c.id == endpoint_id, _visible(owner)
    )
    return (await conn.execute(query)).one_or_none()


async def endpoint_url(conn: AsyncConnection, endpoint_id: UUID, owner: UUID | None) -> str | None:
    query = sa.select(webhook_endpoints.c.url).where(
        webhook_endpoints.c.id == endpoint_id, _visible(owner)
    )
    url: str | None = (await conn.execute(query)).scalar_one_or_none()
    return url


async def delete_endpoint(conn: AsyncConnection, endpoint_id: UUID, owner: UUID | None) -> bool:
    """Delete the endpoint: it is disabled, forgets its secrets and is no longer seen; its
    deliveries are deleted. The row stays: an apply transaction may be inserting a delivery that
    references it (such a late row is never claimed: the endpoint is disabled)."""
    table = webhook_endpoints
    result = await conn.execute(
        table.update()
        .where(table.c.id == endpoint_id, _visible(owner))
        .values(
            enabled=False,
            disabled_at=sa.func.coalesce(table.c.disabled_at, sa.func.now()),
            disabled_reason="deleted",
            deleted_at=sa.func.now(),
            secret="",
            previous_secret=None,
            previous_secret_expires_at=None,
            updated_at=sa.func.now(),
        )
    )
    if not result.rowcount:
        return False
    await conn.execute(
        webhook_deliveries.delete().where(webhook_deliveries.c.endpoint_id == endpoint_id)
    )
    return True


async def update_endpoint(
    conn: AsyncConnection, endpoint_id: UUID, owner: UUID | None, changes: dict[str, Any]
) -> Record | None:
    """Change the url, events or description of an endpoint `owner` manages; None if none."""
    table = webhook_endpoints
    return (
        await conn.execute(
            table.update()
            .where(table.c.id == endpoint_id, _visible(owner))
            .values(**changes, updated_at=sa.func.now())
            .returning(*ENDPOINT_COLUMNS)
        )
    ).one_or_none()


async def rotate_secret(
    conn: AsyncConnection, endpoint_id: UUID, owner: UUID | None, secret: str, grace: int
) -> Record | None:
    """A new secret; the current one keeps signing for `grace` seconds (0: not at all)."""
    table = webhook_endpoints
    expires = sa.func.now() + dt.timedelta(seconds=grace)
    return (
        await conn.execute(
            table.update()
            .where(table.c.id == endpoint_id, _visible(owner))
            .values(
                secret=secret,
                previous_secret=table.c.secret if grace > 0 else None,
                previous_secret_expires_at=expires if grace > 0 else None,
                updated_at=sa.func.now(),
            )
            .returning(*ENDPOINT_COLUMNS)
        )
    ).one_or_none()


async def set_enabled(
    conn: AsyncConnection,
    endpoint_id: UUID,
    owner: UUID | None,
    enabled: bool,
    reason: str | None = None,
) -> Record | None:
    """Enable (clears the reason and the failure clock) or disable (with `reason`). Deliveries of
    a disabled endpoint wait; none are written for it meanwhile."""
    table = webhook_endpoints
    changes: dict[str, Any] = {"enabled": enabled, "updated_at": sa.func.now()}
    if enabled:
        changes.update(disabled_at=None, disabled_reason=None, failing_since=None)
    else:
        changes.update(
            disabled_at=sa.func.coalesce(table.c.disabled_at, sa.func.now()),
            disabled_reason=reason,
        )
    row = (
        await conn.execute(
            table.update()
            .where(table.c.id == endpoint_id, _visible(owner))
            .values(**changes)
            .returning(*ENDPOINT_COLUMNS)
        )
    ).one_or_none()
    if row is not None:
        await conn.execute(_RESUME if enabled else _PARK, {"id": endpoint_id, "parked": PARKED})
    return row


# ---------------------------------------------------------------- deliveries (the API)

DELIVERY_COLUMNS = (
    webhook_deliveries.c.id,
    webhook_deliveries.c.event_id,
    webhook_deliveries.c.endpoint_id,
    webhook_deliveries.c.event_type,
    webhook_deliveries.c.operation_id,
    webhook_deliveries.c.status,
    webhook_deliveries.c.attempts,
    # A parked delivery (its endpoint is disabled) has no next try to show.
    sa.case(
        (webhook_deliveries.c.next_attempt_at < PARKED, webhook_deliveries.c.next_attempt_at)
    ).label("next_attempt_at"),
    webhook_deliveries.c.last_attempt_at,
    webhook_deliveries.c.last_status_code,
    webhook_deliveries.c.last_error,
    webhook_deliveries.c.last_duration_ms,
    webhook_deliveries.c.attempt_log,
    webhook_deliveries.c.created_at,
    webhook_deliveries.c.delivered_at,
)


async def deliveries_page(
    conn: AsyncConnection,
    endpoint_id: UUID,
    status: str | None,
    before: UUID | None,
    limit: int,
) -> Sequence[Record]:
    """An endpoint's deliveries, newest first (the caller checked the endpoint is theirs)."""
    table = webhook_deliveries
    query = sa.select(*DELIVERY_COLUMNS).where(table.c.endpoint_id == endpoint_id)
    if status is not None:
        query = query.where(table.c.status == status)
    if before is not None:
        query = query.where(table.c.id < before)
    return (await conn.execute(query.order_by(table.c.id.desc()).limit(limit))).all()


async def retry_delivery(
    conn: AsyncConnection, endpoint_id: UUID, delivery_id: UUID
) -> Record | None:
    """Due now. A delivery that had given up gets one attempt (it gives up again if that fails);
    a pending one keeps its retry period."""
    table = webhook_deliveries
    return (
        await conn.execute(
            table.update()
            .where(table.c.id == delivery_id, table.c.endpoint_id == endpoint_id)
            .values(
                status="pending",
                next_attempt_at=sa.func.now(),
                claim=None,
                give_up_at=sa.case(
                    (table.c.status == "pending", table.c.give_up_at), else_=sa.func.now()
                ),
            )
            .returning(*DELIVERY_COLUMNS)
        )
    ).one_or_none()


# ---------------------------------------------------------------- the dispatcher


_CLAIM = sa.text(
    """
    WITH due AS (
        SELECT d.id FROM webhook_deliveries AS d
        JOIN webhook_endpoints AS w ON w.id = d.endpoint_id AND w.enabled
        WHERE d.status = 'pending' AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT :limit
        FOR UPDATE OF d SKIP LOCKED
    )
    UPDATE webhook_deliveries AS d
    SET claim = :claim, next_attempt_at = now() + make_interval(secs => :lease)
    FROM due, webhook_endpoints AS w
    WHERE d.id = due.id AND w.id = d.endpoint_id
    RETURNING d.id, d.event_id, d.endpoint_id, d.event_type, d.payload, d.attempts,
              d.created_at, COALESCE(d.give_up_at, d.created_at + make_interval(secs => :period))
                  AS give_up_at,
              w.url, w.secret,
              CASE WHEN w.previous_secret_expires_at > now() THEN w.previous_secret END
                  AS previous_secret,
              now() AS now
    """
)


# Finished deliveries created more than :retention seconds ago, oldest first, up to :limit: the
# primary key's range below the UUIDv7 of that instant (its first 48 bits, the rest zero), so a
# sweep that finds nothing to prune reads next to nothing. The DELETE checks the status again: a
# delivery retried by hand meanwhile is pending and stays.
_PRUNE = sa.text(
    """
    WITH old AS (
        SELECT id FROM webhook_deliveries
        WHERE id < CAST(encode(substring(int8send(CAST(floor(
                  extract(epoch FROM now() - make_interval(secs => :retention)) * 1000) AS bigint))
                  FROM 3) || decode('00000000000000000000', 'hex'), 'hex') AS uuid)
          AND status <> 'pending'
        ORDER BY id
        LIMIT :limit
    )
    DELETE FROM webhook_deliveries d USING old WHERE d.id = old.id AND d.status <> 'pending'
    """
)

# Rows one prune deletes at most (the sweeper prunes again at its next run).
PRUNE_BATCH = 5000


def prune_deliveries(conn: Connection, retention: float, limit: int = PRUNE_BATCH) -> int:
    """Delete up to `limit` finished deliveries created more than `retention` seconds ago; how
    many were deleted. Pending ones stay, however old."""
    return conn.execute(_PRUNE, {"retention": retention, "limit": limit}).rowcount


def claim_due(
    conn: Connection, claim: UUID, limit: int, lease: float, period: float
) -> Sequence[Any]:
    """Take up to `limit` due deliveries of enabled endpoints (rows another dispatcher holds are
    skipped) and push their next try `lease` seconds away: if this dispatcher dies before it
    records the attempt, they come due again then, with the same event id. Commit at once: no
    lock is held while receivers answer."""
    params = {"claim": claim, "limit": limit, "lease": lease, "period": period}
    return conn.execute(_CLAIM, params).all()


# How many attempts a delivery keeps in its log.
ATTEMPT_LOG_LENGTH = 20

_RECORD = sa.text(
    """
    UPDATE webhook_deliveries
    SET status = :status, attempts = attempts + 1, claim = NULL,
        next_attempt_at = CASE WHEN :status = 'pending'
                               THEN now() + make_interval(secs => :delay) ELSE now() END,
        last_attempt_at = :attempted_at, last_status_code = :status_code, last_error = :error,
        last_duration_ms = :duration_ms,
        delivered_at = CASE WHEN :status = 'succeeded' THEN now() ELSE delivered_at END,
        attempt_log = CASE WHEN jsonb_array_length(attempt_log) >= :log_length
                           THEN attempt_log - 0 ELSE attempt_log END || CAST(:entry AS jsonb)
    WHERE id = :id AND claim = :claim
    RETURNING endpoint_id
    """
)

# An endpoint's failure clock: cleared by a success, started by the first failure after one. A
# failure when it started `period` seconds ago or more disables the endpoint, saying why.
_ENDPOINT_SUCCEEDED = sa.text(
    "UPDATE webhook_endpoints SET failing_since = NULL WHERE id = :id AND failing_since IS NOT NULL"
)
_ENDPOINT_FAILED = sa.text(
    """
    UPDATE webhook_endpoints
    SET failing_since = COALESCE(failing_since, :attempted_at),
        enabled = CASE WHEN COALESCE(failing_since, :attempted_at)
                            <= now() - make_interval(secs => :period) THEN false ELSE enabled END,
        disabled_at = CASE WHEN enabled AND COALESCE(failing_since, :attempted_at)
                                <= now() - make_interval(secs => :period)
                           THEN now() ELSE disabled_at END,
        disabled_reason = CASE WHEN enabled AND COALESCE(failing_since, :attempted_at)
                                    <= now() - make_interval(secs => :period)
                               THEN CAST(:reason AS text) ELSE disabled_reason END,
        updated_at = now()
    WHERE id = :id
    RETURNING enabled, disabled_reason
    """
)


_LOCK_ENDPOINT = sa.text("SELECT id FROM webhook_endpoints WHERE id = :id FOR NO KEY UPDATE")


def record_attempt(
    conn: Connection,
    *,
    delivery_id: UUID,
    endpoint_id: UUID,
    claim: UUID,
    status: str,
    attempted_at: dt.datetime,
    duration_ms: int,
    status_code: int | None,
    error: str | None,
    delay: float,
    period: float,
) -> tuple[bool, str | None] | None:
    """Record one attempt of a claimed delivery: `status` succeeded, failed (given up) or
    pending (retried after `delay` seconds), and the endpoint's failure clock. None when the
    claim was lost (it outlived its lease and another dispatcher took the delivery: that one
    records); else whether the endpoint is still enabled, and why not."""
    # Endpoint first, then the delivery, as the API's changes of an endpoint lock them: the
    # two never wait for each other crosswise (a deadlock).
    conn.execute(_LOCK_ENDPOINT, {"id": endpoint_id})
    entry = {
        "at": attempted_at.isoformat(),
        "duration_ms": duration_ms,
        "status_code": status_code,
        "error": error,
    }
    row = conn.execute(
        _RECORD,
        {
            "id": delivery_id,
            "claim": claim,
            "status": status,
            "delay": delay,
            "attempted_at": attempted_at,
            "status_code": status_code,
            "error": error,
            "duration_ms": duration_ms,
            "log_length": ATTEMPT_LOG_LENGTH,
            "entry": json.dumps(entry),
        },
    ).one_or_none()
    if row is None:
        return None
    if status == "succeeded":
        conn.execute(_ENDPOINT_SUCCEEDED, {"id": row.endpoint_id})
        return True, None
    last = f"HTTP {status_code}" if status_code is not None else (error or "no answer")
    reason = (
        f"every delivery failed for {period:g} seconds (LEDGERQ_WEBHOOK_RETRY_PERIOD, see "
        f"failing_since); the last: {last}"
    )
    endpoint_state = conn.execute(
        _ENDPOINT_FAILED,
        {"id": row.endpoint_id, "attempted_at": attempted_at, "period": period, "reason": reason},
    ).one()
    if not endpoint_state.enabled:
        conn.execute(_PARK, {"id": row.endpoint_id, "parked": PARKED})
    return bool(endpoint_state.enabled), endpoint_state.disabled_reason
