"""Following without polling: an operation as server-sent events, an account over a WebSocket.

Both ride on the API process's one subscription to the worker's completion events (api/state.py
feeds api/waiters.py); an event only wakes a follower, and what is sent is read from PostgreSQL.
An event that never comes is made up for by the registry's periodic look at PostgreSQL
(`final_operations` and `balances` below, every LEDGERQ_FOLLOW_RECHECK seconds, api/waiters.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import msgspec
import structlog
from litestar import Request, WebSocket, get, websocket
from litestar.exceptions import WebSocketDisconnect
from litestar.response import ServerSentEvent, ServerSentEventMessage
from litestar.status_codes import WS_1008_POLICY_VIOLATION, WS_1011_INTERNAL_ERROR

from api.auth import Principal
from api.errors import ApiError
from api.operations import read_operation
from api.presenters import account_out, account_snapshot, account_update, operation_out
from api.schemas import AccountUpdate
from api.state import Services, services_of
from api.waiters import REREAD
from domain.model import TERMINAL_STATUSES
from worker.store import queries
from worker.store.db import is_unavailable
from worker.store.fast import first_line

log = structlog.get_logger(__name__)

# A comment line this often keeps proxies from closing a quiet stream (and re-reads the state).
KEEPALIVE_SECONDS = 15.0


# ----------------------------------------------------------------- the periodic look


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
        return await read_operation(services, operation_id, principal_id)

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
                try:
                    row = await read()
                except Exception as exc:
                    if not is_unavailable(exc):
                        raise
                    # PostgreSQL out of reach: keep the stream, read again at the next wake-up.
                    log.warning("operation_follow_read_failed", error=first_line(exc))
                else:
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


async def _read_account(services: Services, account_id: UUID, owner_id: UUID) -> Any:
    return await queries.fast_account_for_owner(services.fast, account_id, owner_id)


async def _updates(
    services: Services, account_id: UUID, owner_id: UUID, events: list[dict[str, Any]]
) -> tuple[list[AccountUpdate], int | None]:
    """What the account's owner may learn of one batch's events touching the account, and the
    account's balance now (None when nothing was read).

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
        return [], None
    ids = [UUID(e["id"]) for e in visible]
    async with services.reads.connect() as conn:
        account = await queries.account_for_owner(conn, account_id, owner_id)
        posted = await queries.entries_for_operations(conn, account_id, ids)
    if account is None:
        return [], None
    by_operation = {str(r.operation_id): r for r in posted}
    snapshot = account_out(account)
    updates = [
        account_update(
            e,
            e.get("account_id") == str(account_id),
            by_operation.get(e["id"]),
            account.currency,
            snapshot,
        )
        for e in visible
    ]
    return updates, int(account.balance)


@websocket("/ws/accounts/{account_id:uuid}", opt={"operation_id": "followAccount"})
async def follow_account(socket: WebSocket[Principal, Any, Any], account_id: UUID) -> None:
    """Sends `{"type": "account", ...}` on connect, then `{"type": "operation", ...}` for every
    operation touching the account that reaches its final state, with the new balance. Another
    user's account (or none) is refused before the handshake completes."""
    services = services_of(socket.app)
    owner_id = socket.user.id
    with services.waiters.following(str(account_id)) as follower:
        # Following before reading: nothing applied between the snapshot and the first event is lost.
        account = await _read_account(services, account_id, owner_id)
        if account is None:
            await socket.close(code=WS_1008_POLICY_VIOLATION, reason="No such account.")
            return
        await socket.accept()
        await socket.send_text(msgspec.json.encode(account_snapshot(account)).decode())
        follower.sent(int(account.balance))

        async def push() -> None:
            while True:
                events = await follower.get()
                try:
                    if events is REREAD:
                        await reread()
                        continue
                    updates, balance = await _updates(services, account_id, owner_id, events)
                except Exception as exc:
                    if not is_unavailable(exc):
                        raise
                    # PostgreSQL out of reach: the periodic look will catch the balance up.
                    log.warning("account_follow_read_failed", error=first_line(exc))
                    continue
                for update in updates:
                    await socket.send_text(msgspec.json.encode(update).decode())
                if balance is not None:
                    follower.sent(balance)

        async def reread() -> None:
            """The ledger moved and no event said so (lost): the account as it is now."""
            row = await _read_account(services, account_id, owner_id)
            if row is not None and int(row.balance) != follower.balance:
                await socket.send_text(msgspec.json.encode(account_snapshot(row)).decode())
                follower.sent(int(row.balance))

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
