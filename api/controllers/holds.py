"""Holds: list and read them. Holds are made, captured and voided as operations
(`POST /api/v1/operations` with type hold, capture, void)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

from litestar import Controller, Request, get

from api.auth import Principal
from api.errors import ApiError
from api.pagination import Cursor, Keyset, Limit, page
from api.presenters import hold_out
from api.schemas import HoldOut, HoldPage
from api.state import services_of
from worker.store import holds, queries

HOLDS = Keyset.by_id("hold")


class HoldController(Controller):
    path = "/api/v1/holds"
    tags = ["holds"]

    @get("/", operation_id="listHolds")
    async def list_holds(
        self,
        request: Request[Principal, Any, Any],
        limit: Limit = 100,
        cursor: Cursor = None,
        account_id: UUID | None = None,
        status: Literal["open", "captured", "voided", "expired"] | None = None,
    ) -> HoldPage:
        """Holds on your accounts, oldest first; filter by account and status."""
        services = services_of(request.app)
        owner_id = request.user.id

        async def fetch(after: UUID | None, n: int) -> Sequence[queries.Record]:
            async with services.reads.connect() as conn:
                if (
                    account_id is not None
                    and await queries.account_for_owner(conn, account_id, owner_id) is None
                ):
                    raise ApiError(404, "account_not_found", "No such account.", field="account_id")
                return await holds.holds_for_owner(
                    conn, owner_id, after, n, account_id=account_id, status=status
                )

        return await page(HOLDS, cursor, limit, fetch, hold_out)

    @get("/{hold_id:uuid}", operation_id="getHold")
    async def get_hold(self, request: Request[Principal, Any, Any], hold_id: UUID) -> HoldOut:
        """A hold on one of your accounts: amount, captured, released, status and expiry. A hold
        that is still pending (or failed) has no hold yet: see its operation."""
        async with services_of(request.app).reads.connect() as conn:
            row = await holds.hold_for_owner(conn, hold_id, request.user.id)
        if row is None:
            raise ApiError(404, "hold_not_found", "No such hold.")
        return hold_out(row)
