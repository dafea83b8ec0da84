"""API keys: create (the secret is shown once), list without secrets, revoke."""

from __future__ import annotations

import datetime as dt
from typing import Any
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, post
from litestar.status_codes import HTTP_201_CREATED

from api.auth import ADMIN, SCOPES, Principal, forbidden, new_api_key
from api.errors import ApiError
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import api_key_created, api_key_out
from api.schemas import MAX_KEY_LIFETIME, ApiKeyCreate, ApiKeyCreated, ApiKeyPage
from api.state import services_of
from worker.store import access

NO_STORE = {"Cache-Control": "no-store"}

API_KEYS = Keyset.by_id("api_key")


def check_expiry(data: ApiKeyCreate) -> None:
    """At most one of expires_at and expires_in; expires_at in the future, within ten years."""
    if data.expires_at is not None and data.expires_in is not None:
        raise ApiError(
            422,
            "validation_error",
            "Give expires_at or expires_in, not both.",
            field="expires_in",
        )
    if data.expires_at is not None:
        left = (data.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
        if not 0 < left <= MAX_KEY_LIFETIME:
            raise ApiError(
                422,
                "validation_error",
                "expires_at must be in the future and within ten years.",
                field="expires_at",
            )


def key_owner(principal: Principal, data: ApiKeyCreate) -> UUID:
    """Whose key this is: your own, or, for the admin only, the named user's."""
    if data.user_id is None:
        if principal.method == "master_key":
            raise ApiError(422, "validation_error", "user_id is required", field="user_id")
        return principal.id
    if data.user_id != principal.id and not principal.is_admin:
        raise forbidden("forbidden", "Only the admin may create keys for another user.")
    return data.user_id


class ApiKeyController(Controller):
    path = "/api/v1/api-keys"
    tags = ["api keys"]

    @post("/", operation_id="createApiKey", status_code=HTTP_201_CREATED)
    async def create_api_key(
        self, request: Request[Principal, Any, Any], data: ApiKeyCreate
    ) -> Response[ApiKeyCreated]:
        """Create an API key. The answer holds the secret; it is not stored and cannot be shown again.

        Send it as `X-API-Key`. The key acts as its user, limited to its scopes, until it is
        revoked or, with `expires_at` or `expires_in`, until it expires (then it answers 401 like
        an unknown key).
        """
        principal = request.user
        check_expiry(data)
        scopes = [s for s in SCOPES if s in data.scopes]  # unique, in a fixed order
        if ADMIN in scopes and not principal.is_admin:
            raise forbidden("forbidden", "Only the admin may grant the admin scope.")
        owner = key_owner(principal, data)
        key = new_api_key()
        async with services_of(request.app).engine.begin() as conn:
            if owner != principal.id and await access.user_by_id(conn, owner) is None:
                raise ApiError(404, "user_not_found", "No such user.", field="user_id")
            row = await access.create_api_key(
                conn,
                user_id=owner,
                name=data.name,
                prefix=key.prefix,
                secret_hash=key.secret_hash,
                scopes=scopes,
                rate_limit=data.rate_limit,
                expires_at=data.expires_at,
                expires_in=data.expires_in,
            )
        return Response(
            api_key_created(row, key.secret), status_code=HTTP_201_CREATED, headers=NO_STORE
        )

    @get("/", operation_id="listApiKeys")
    async def list_api_keys(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> ApiKeyPage:
        """Your unrevoked API keys, oldest first, without secrets, expired ones marked
        `expired` (the admin sees everyone's)."""
        principal = request.user
        owner = None if principal.is_admin else principal.id
        fetch = reads(services_of(request.app).reads, access.api_keys_page, owner)
        return await page(API_KEYS, cursor, limit, fetch, api_key_out)

    @delete("/{key_id:uuid}", operation_id="revokeApiKey")
    async def revoke_api_key(self, request: Request[Principal, Any, Any], key_id: UUID) -> None:
        """Revoke a key: its next request, to any API process, is refused."""
        principal = request.user
        async with services_of(request.app).engine.begin() as conn:
            revoked = await access.revoke_api_key(
                conn, key_id, None if principal.is_admin else principal.id
            )
        if not revoked:
            raise ApiError(404, "api_key_not_found", "No such API key.")
