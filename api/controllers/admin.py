"""Administration (the master key, or a key with the admin scope): every user and every account,
and the state of each partition's queue."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
from litestar import Controller, Request, get
from msgspec.structs import asdict

from api.auth import Principal
from api.controllers.accounts import Cursor, Limit, account_out
from api.errors import ApiError
from api.metrics import read_queue_facts
from api.pagination import decode_uuid_cursor, encode_cursor
from api.schemas import AdminAccountOut, AdminAccountPage, UserOut, UserPage
from api.state import services_of
from worker.store import access


class PartitionQueue(msgspec.Struct, kw_only=True):
    partition: int
    pending: int
    # Seconds the oldest pending operation has waited; null when nothing is pending.
    oldest_pending_age_seconds: float | None
    # Completed in the last 60 seconds, as counted by the workers.
    applied_last_minute: int
    failed_last_minute: int
    # The worker holding the partition's lease (`auto` workers); "static" when workers are given
    # fixed partitions (LEDGERQ_WORKER_PARTITIONS); null when nobody holds it.
    holder: str | None


class QueueView(msgspec.Struct, kw_only=True):
    partitions: list[PartitionQueue]
    # Workers with a live heartbeat in the lease registry (`auto` workers only).
    workers_alive: int


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]

    @get("/users", operation_id="listUsers")
    async def list_users(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> UserPage:
        """Every user, oldest first, in cursor pages."""
        after = decode_uuid_cursor("user", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await access.users_page(conn, after, limit + 1)
        items = [
            UserOut(id=r.id, username=r.username, created_at=r.created_at) for r in rows[:limit]
        ]
        next_cursor = encode_cursor("user", items[-1].id) if len(rows) > limit else None
        return UserPage(items=items, next_cursor=next_cursor)

    @get("/accounts", operation_id="listAllAccounts")
    async def list_all_accounts(
        self,
        request: Request[Principal, Any, Any],
        limit: Limit = 100,
        cursor: Cursor = None,
        owner_id: UUID | None = None,
    ) -> AdminAccountPage:
        """Every account (system accounts too, without an owner), or one owner's, in cursor pages."""
        after = decode_uuid_cursor("admin_account", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await access.accounts_page(conn, owner_id, after, limit + 1)
        items = [
            AdminAccountOut(**asdict(account_out(r)), owner_id=r.owner_id) for r in rows[:limit]
        ]
        next_cursor = encode_cursor("admin_account", items[-1].id) if len(rows) > limit else None
        return AdminAccountPage(items=items, next_cursor=next_cursor)

    @get("/queues", operation_id="listQueues")
    async def list_queues(self, request: Request[Principal, Any, Any]) -> QueueView:
        """Each partition: pending count, oldest pending age, completed in the last minute, holder."""
        services = services_of(request.app)
        facts = await read_queue_facts(services, recent=True)
        down = [source for source, ok in facts.sources.items() if not ok]
        if down:
            raise ApiError(
                503,
                "queue_facts_unavailable",
                f"Cannot read the queues now ({', '.join(down)} unavailable); retry shortly.",
                headers={"Retry-After": "1"},
            )
        static = services.settings.worker_partitions is not None
        return QueueView(
            partitions=[
                PartitionQueue(
                    partition=p,
                    pending=f.pending,
                    oldest_pending_age_seconds=round(f.oldest_pending_age, 3)
                    if f.oldest_pending_age is not None
                    else None,
                    applied_last_minute=f.applied_last_minute,
                    failed_last_minute=f.failed_last_minute,
                    holder=f.holder or ("static" if static else None),
                )
                for p, f in sorted(facts.partitions.items())
            ],
            workers_alive=facts.workers_alive or 0,
        )
