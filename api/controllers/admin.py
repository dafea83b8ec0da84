"""Administration (the master key, or a key with the admin scope): every user and every account."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from litestar import Controller, Request, get
from msgspec.structs import asdict

from api.auth import Principal
from api.controllers.accounts import Cursor, Limit, account_out
from api.pagination import decode_uuid_cursor, encode_cursor
from api.schemas import AdminAccountOut, AdminAccountPage, UserOut, UserPage
from api.state import services_of
from worker.store import access


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
