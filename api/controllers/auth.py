"""Registration and tokens. (Credentials are checked by the authentication middleware, not here.)"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import structlog
from litestar import Controller, Request, Response, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from redis.exceptions import RedisError

from api.auth import Principal, hash_password, issue_token, verify_token
from api.errors import ApiError
from api.presenters import user_out
from api.revocation import denylist_for
from api.schemas import RegisterRequest, TokenOut, TokenRevoke, TokenRevoked, UserOut
from api.state import services_of
from worker.store import queries

log = structlog.get_logger(__name__)

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
        return user_out(row)

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

    @post("/revoke", operation_id="revokeToken", status_code=HTTP_200_OK)
    async def revoke_token(
        self, request: Request[Principal, Any, Any], data: TokenRevoke
    ) -> Response[TokenRevoked]:
        """Revoke a bearer token (log out): from this answer on, every API process refuses it
        with 401. Send the token in the body; any authenticated caller may revoke a token it
        holds (holding it is already the power to use it), including the one it authenticates
        with. An expired or malformed token answers `revoked: false` (RFC 7009: nothing to do).
        """
        settings = services_of(request.app).settings
        try:
            victim = verify_token(settings.require_secret_key(), data.token)
        except ApiError:
            return Response(TokenRevoked(revoked=False, confirmed=True), headers=NO_STORE)
        assert victim.token_id is not None and victim.token_expires is not None
        try:
            confirmed, listening = await denylist_for(settings.redis_url).revoke(
                victim.token_id, victim.token_expires
            )
        except RedisError as exc:
            raise ApiError(
                503,
                "revocation_unavailable",
                "The token could not be revoked now (Redis is unavailable); retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        log.info("token_revoked", user_id=str(victim.id), confirmed=confirmed, listening=listening)
        body = TokenRevoked(revoked=True, confirmed=confirmed >= listening)
        return Response(body, headers=NO_STORE)
