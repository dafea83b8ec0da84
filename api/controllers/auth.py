"""Registration. (Credentials are checked by the authentication middleware, not here.)"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from litestar import Controller, Request, post
from litestar.status_codes import HTTP_201_CREATED

from api.auth import hash_password
from api.errors import ApiError
from api.schemas import RegisterRequest, UserOut
from api.state import services_of
from worker.store import queries


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
