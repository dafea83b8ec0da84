"""Following without polling: an operation as server-sent events, an account over a WebSocket.

Both ride on the API process's one subscription to the worker's completion events (api/state.py
feeds api/waiters.py); an event only wakes a follower, and what is sent is read from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import msgspec
import sqlalchemy as sa
import structlog
from litestar import Request, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import WS_1008_POLICY_VIOLATION, WS_1011_INTERNAL_ERROR

from api.auth import Principal
from api.controllers.accounts import account_out
from api.controllers.operations import operation_out
from api.errors import ApiError
from api.schemas import AccountOut
from api.state import Services, services_of
from domain.model import TERMINAL_STATUSES
from domain.money import format_amount
from worker.store import queries
from worker.store.tables import entries

log = structlog.get_logger(__name__)

# A comment line this often keeps proxies from closing a quiet stream, and re-reads the state
# (so a lost completion event delays the final state by this much at most).
KEEPALIVE_SECONDS = 15.0


# ----------------------------------------------------------------- an operation, as SSE


def _operation_message(row: Any) -> ServerSentEventMessage:
    return ServerSentEventMessage(
        data=msgspec.json.encode(operation_out(row)).decode(), event="operation"
    )


@get(
    "/api/v1/operations/{operation_id:uuid}/events",
    operation_id="followOperation",
    tags=["operations"],
    media_type="text/event-stream",
    response_description="A stream of `event: operation` messages; data as GET /api/v1/operations/{id}.",
)
async def follow_operation(
    request: Request[Principal, Any, Any], operation_id: UUID
) -> ServerSentEvent:
    """Server-sent events: the operation's state at once (`event: operation`, data as GET returns
    it), then its final state when it is applied, then the stream ends. An operation already final
    gives one event."""
    services = services_of(request.app)
    principal_id = request.user.id

    async def read() -> Any:
        async with services.engine.connect() as conn:
            return await queries.operation_for_principal(conn, operation_id, principal_id)

    first = await read()
    if first is None:
        raise ApiError(404, "operation_not_found", "No such operation.")

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        yield _operation_message(first)
        if first.status in TERMINAL_STATUSES:
            return
        sent = first.status
        with services.waiters.watching(str(operation_id)) as completed:
            while True:
                # Cleared before reading: a completion announced during the read is not lost.
                completed.clear()
                row = await read()
                if row is None:  # cannot happen (operations are never deleted); end quietly
                    return
                if row.status != sent:
                    sent = row.status
                    yield _operation_message(row)
                if row.status in TERMINAL_STATUSES:
                    return
                try:
                    await asyncio.wait_for(completed.wait(), KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield ServerSentEventMessage(data=None, comment="keep-alive")

    log.info("operation_followed", operation_id=str(operation_id))
    return ServerSentEvent(stream(), headers={"Cache-Control": "no-store"})


# ----------------------------------------------------------------- an account, over a WebSocket


class AccountSnapshot(msgspec.Struct, kw_only=True, tag="account", tag_field="type"):
    account: AccountOut


class OperationChange(msgspec.Struct, kw_only=True):
    id: str
    type: str
    status: str
    error_code: str | None = None


class AccountUpdate(msgspec.Struct, kw_only=True, tag="operation", tag_field="type"):
    """An operation touching the account reached its final state."""

    operation: OperationChange
    # This operation's entry on the account (negative for a debit) and the balance it left;
    # null when it failed (a failure writes no entry).
    amount: str | None
    balance_after: str | None
    # The account as it is now (later operations of the same batch included).
    account: AccountOut


async def _updates(
    services: Services, account_id: UUID, owner_id: UUID, events: list[dict[str, Any]]
) -> list[AccountUpdate]:
    """What the account's owner may learn of one batch's events touching the account.

    The account's own operations (deposits into it, withdrawals and transfers from it: the owner
    submitted them) in every outcome; a transfer into it from someone else only once it succeeded,
    and without the sender's failure details, as its entries would show it.
    """
    visible = [
        e
        for e in events
        if e.get("account_id") == str(account_id) or e.get("status") == "succeeded"
    ]
    if not visible:
        return []
    ids = [UUID(e["id"]) for e in visible]
    async with services.engine.connect() as conn:
        account = await queries.account_for_owner(conn, account_id, owner_id)
        posted = (
            await conn.execute(
                sa.select(entries.c.operation_id, entries.c.amount, entries.c.balance_after).where(
                    entries.c.account_id == account_id, entries.c.operation_id.in_(ids)
                )
            )
        ).all()
    if account is None:
        return []
    by_operation = {str(r.operation_id): r for r in posted}
    snapshot = account_out(account)
    updates = []
    for e in visible:
        entry = by_operation.get(e["id"])
        own = e.get("account_id") == str(account_id)
        updates.append(
            AccountUpdate(
                operation=OperationChange(
                    id=e["id"],
                    type=e["type"],
                    status=e["status"],
                    error_code=e.get("error_code") if own else None,
                ),
                amount=format_amount(entry.amount, account.currency) if entry else None,
                balance_after=format_amount(entry.balance_after, account.currency)
                if entry
                else None,
                account=snapshot,
            )
        )
    return updates


@websocket("/ws/accounts/{account_id:uuid}", opt={"operation_id": "followAccount"})
async def follow_account(socket: WebSocket[Principal, Any, Any], account_id: UUID) -> None:
    """Sends `{"type": "account", ...}` on connect, then `{"type": "operation", ...}` for every
    operation touching the account that reaches its final state, with the new balance. Another
    user's account (or none) is refused before the handshake completes."""
    services = services_of(socket.app)
    owner_id = socket.user.id
    with services.waiters.following(str(account_id)) as batches:
        # Following before reading: nothing applied between the snapshot and the first event is lost.
        async with services.engine.connect() as conn:
            account = await queries.account_for_owner(conn, account_id, owner_id)
        if account is None:
            await socket.close(code=WS_1008_POLICY_VIOLATION, reason="No such account.")
            return
        await socket.accept()
        await socket.send_text(
            msgspec.json.encode(AccountSnapshot(account=account_out(account))).decode()
        )

        async def push() -> None:
            while True:
                events = await batches.get()
                for update in await _updates(services, account_id, owner_id, events):
                    await socket.send_text(msgspec.json.encode(update).decode())

        async def until_disconnected() -> None:
            # Clients send nothing; reading is how a disconnect is noticed while nothing is pushed.
            async for _ in socket.iter_data("text"):
                pass

        tasks = [asyncio.create_task(push()), asyncio.create_task(until_disconnected())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Whichever ends first (the client left, or pushing failed) ends the other: the
            # follower is unregistered on the way out.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    failures = [
        exc
        for task in done
        if not task.cancelled()
        and (exc := task.exception()) is not None
        and not isinstance(exc, WebSocketDisconnect)
    ]
    if failures:
        log.warning("account_follow_failed", account_id=str(account_id), error=repr(failures[0]))
        with contextlib.suppress(WebSocketDisconnect):
            await socket.close(code=WS_1011_INTERNAL_ERROR, reason="internal error")
