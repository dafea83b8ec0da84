"""Authentication: one middleware turns credentials into a Principal; controllers never parse them."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import time
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio.to_thread
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware

from api.errors import ApiError
from api.state import services_of
from worker.store import queries

WWW_AUTHENTICATE = 'Basic realm="ledgerq", charset="UTF-8"'
_hasher = PasswordHasher()
# Verifying against a dummy hash for unknown users keeps response time from revealing which names exist.
_DUMMY_HASH = _hasher.hash("ledgerq-dummy-password")


@dataclass(frozen=True)
class Principal:
    """Who is calling. Every query is scoped to `id`."""

    id: UUID
    username: str
    method: str


def hash_password(password: str) -> str:
    return _hasher.hash(password)


class CredentialCache:
    """Remembers a verified username/password pair briefly, so argon2 runs once per TTL, not per request.

    Keyed by an HMAC of the credentials with a per-process random key: the cache never holds the
    password or anything that can be checked offline against it.
    """

    def __init__(self, ttl_seconds: float = 60.0, max_entries: int = 10_000) -> None:
        self._key = os.urandom(32)
        self._ttl = ttl_seconds
        self._max = max_entries
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def _digest(self, username: str, password: str) -> bytes:
        message = username.lower().encode() + b"\x00" + password.encode()
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def get(self, username: str, password: str) -> Principal | None:
        digest = self._digest(username, password)
        hit = self._entries.get(digest)
        if hit is None:
            return None
        expires, principal = hit
        if expires < time.monotonic():
            self._entries.pop(digest, None)
            return None
        return principal

    def put(self, username: str, password: str, principal: Principal) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[self._digest(username, password)] = (time.monotonic() + self._ttl, principal)


def unauthenticated(detail: str) -> ApiError:
    return ApiError(401, "unauthenticated", detail, headers={"WWW-Authenticate": WWW_AUTHENTICATE})


def parse_basic(header: str) -> tuple[str, str]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        raise unauthenticated("Use HTTP Basic authentication.")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise unauthenticated("Malformed Basic credentials.") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise unauthenticated("Malformed Basic credentials.")
    return username, password


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    # argon2 is deliberately slow; keep it off the event loop.
    return await anyio.to_thread.run_sync(check)


class AuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        header = connection.headers.get("authorization")
        if not header:
            raise unauthenticated("Authentication required.")
        username, password = parse_basic(header)
        services = services_of(connection.app)
        cached = services.credentials.get(username, password)
        if cached is not None:
            return AuthenticationResult(user=cached, auth="basic")
        async with services.engine.connect() as conn:
            user = await queries.user_by_username(conn, username)
        ok = await verify_password(user.password_hash if user else _DUMMY_HASH, password)
        if user is None or not ok:
            raise unauthenticated("Invalid username or password.")
        principal = Principal(id=user.id, username=user.username, method="basic")
        services.credentials.put(username, password, principal)
        return AuthenticationResult(user=principal, auth="basic")


PUBLIC_PATHS = [
    "^/health$",
    "^/ready$",
    "^/metrics$",
    "^/docs",
    "^/schema",
    "^/api/v1/auth/register$",
]

authentication_middleware = DefineMiddleware(AuthenticationMiddleware, exclude=PUBLIC_PATHS)
