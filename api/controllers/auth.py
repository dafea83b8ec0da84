"""Registration and tokens. (Credentials are checked by the authentication middleware, not here.)"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Controller, Request, Response, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from api.auth import Principal, hash_password, issue_token
from api.errors import ApiError
from api.schemas import RegisterRequest, TokenOut, UserOut
from api.state import services_of
from worker.store import queries

# RFC 6749 5.1: responses carrying credentials must not be cached.
NO_STORE = {"Cache-Control": "no-store"}


class AuthController(Controller):
    path = "/api/v1/auth"
    tags = ["auth"]

    @post("/register", operation_id="register", status_code=HTTP_201_CREATED)
    async def register(self, request: Request[Any, Any, Any], data: RegisterRequest) -> UserOut:
        """Create a user. Usernames are unique regardless of case."""
        services = services_of(request.app)
        password_hash = await anyio.to_thread.run_sync(hash_password, data.password)
        try:
            async with services.engine.begin() as conn:
                row = await queries.create_user(conn, data.username, password_hash)
        except queries.UsernameTaken:
            raise ApiError(
                409, "username_taken", "That username is taken.", field="username"
            ) from None
        return UserOut(id=row.id, username=row.username, created_at=row.created_at)

    @post("/token", operation_id="issueToken", status_code=HTTP_200_OK)
    async def issue_token(self, request: Request[Principal, Any, Any]) -> Response[TokenOut]:
        """Exchange HTTP Basic credentials for a bearer token (`Authorization: Bearer ...`).

        The token acts as the user with every non-admin scope until it expires
        (`expires_in` seconds; LEDGERQ_TOKEN_TTL).
        """
        settings = services_of(request.app).settings
        token = issue_token(settings.require_secret_key(), request.user, settings.token_ttl)
        body = TokenOut(access_token=token, token_type="bearer", expires_in=settings.token_ttl)  # noqa: S106
        return Response(body, headers=NO_STORE)
