"""Authentication and access: one middleware turns credentials into a Principal, one guard checks
what the principal may do. Controllers never parse credentials.

A request carries exactly one of: HTTP Basic (username and password), `Authorization: Bearer`
(a token from POST /api/v1/auth/token), or `X-API-Key` (an API key, or the master key).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import secrets
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

import anyio.to_thread
import jwt
import structlog
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import AbstractAuthenticationMiddleware, AuthenticationResult
from litestar.middleware.base import DefineMiddleware
from litestar.types import Scope

from api.errors import ApiError
from api.revocation import RevocationUnavailable, denylist_for
from api.state import Services, services_of
from worker.store import access, queries

log = structlog.get_logger(__name__)

_hasher = PasswordHasher()
# Verifying against a dummy hash for unknown users keeps response time from revealing which names exist.
_DUMMY_HASH = _hasher.hash("ledgerq-dummy-password")

# ---------------------------------------------------------------- principals and scopes

ACCOUNTS_READ = "accounts:read"
OPERATIONS_WRITE = "operations:write"
ADMIN = "admin"
SCOPES = (ACCOUNTS_READ, OPERATIONS_WRITE, ADMIN)
# What a user's own password (or a token from it) may do: everything but administration.
USER_SCOPES = frozenset({ACCOUNTS_READ, OPERATIONS_WRITE})

Method = Literal["basic", "bearer", "api_key", "master_key"]
# The master key is no user; it owns nothing, so user-scoped queries with this id find nothing.
MASTER_ID = UUID(int=0)


@dataclass(frozen=True)
class Principal:
    """Who is calling, however they proved it. Every query is scoped to `id` (a user id)."""

    id: UUID
    username: str
    method: Method
    scopes: frozenset[str]
    is_admin: bool = False
    api_key_id: UUID | None = None
    # Requests per rate limit window, when an API key sets its own (None: LEDGERQ_RATE_LIMIT).
    rate_limit: int | None = None
    # Bearer tokens: the token's id (its `jti`) and expiry, for revocation (api/revocation.py).
    token_id: str | None = None
    token_expires: int | None = None

    @property
    def rate_limit_key(self) -> str:
        """The bucket this principal's requests count against: each API key has its own."""
        if self.api_key_id is not None:
            return f"key:{self.api_key_id}"
        return "master" if self.method == "master_key" else f"user:{self.id}"


def user_principal(user_id: UUID, username: str, method: Method) -> Principal:
    return Principal(id=user_id, username=username, method=method, scopes=USER_SCOPES)


# The principal of the request being served, set by the authentication middleware. Intake reads
# it to count deposits against the API key a request came with (api/intake.py); each request runs
# in a task of its own, so the value never outlives its request.
_current_principal: ContextVar[Principal | None] = ContextVar("principal", default=None)


def current_principal() -> Principal | None:
    return _current_principal.get()


# ---------------------------------------------------------------- access rules: the one table

# Pseudo-requirements besides the scopes.
BASIC_ONLY = "basic"  # HTTP Basic itself: a token or key must not mint tokens
MANAGE_KEYS = "manage_keys"  # a password or token, or the admin: keys never mint keys
AUTHENTICATED = "authenticated"  # any principal at all
# accounts:read, or the admin: the asset catalog (read by clients who trade in it and by the admin
# who keeps it) and webhooks (a user's for its accounts, the admin's for all); the master key holds
# the admin scope only.
READ_OR_ADMIN = "read_or_admin"

# operationId -> what the principal needs. Routes excluded from authentication (health, docs,
# register) have no principal and are not listed; an authenticated route missing here is refused.
ACCESS: dict[str, str] = {
    "issueToken": BASIC_ONLY,
    "revokeToken": AUTHENTICATED,
    "createApiKey": MANAGE_KEYS,
    "listApiKeys": MANAGE_KEYS,
    "revokeApiKey": MANAGE_KEYS,
    "createAccount": OPERATIONS_WRITE,
    "listAccounts": ACCOUNTS_READ,
    "getAccount": ACCOUNTS_READ,
    "listEntries": ACCOUNTS_READ,
    "getStatement": ACCOUNTS_READ,
    "updateAccount": OPERATIONS_WRITE,
    "closeAccount": OPERATIONS_WRITE,
    "listHolds": ACCOUNTS_READ,
    "getHold": ACCOUNTS_READ,
    "submitOperation": OPERATIONS_WRITE,
    "submitOperationBatch": OPERATIONS_WRITE,
    "cancelOperation": OPERATIONS_WRITE,
    "getOperation": ACCOUNTS_READ,
    "listOperations": ACCOUNTS_READ,
    "followOperation": ACCOUNTS_READ,
    "followAccount": ACCOUNTS_READ,
    "listUsers": ADMIN,
    "listAllAccounts": ADMIN,
    "listQueues": ADMIN,
    "getUserDepositLimits": ADMIN,
    "setUserDepositLimits": ADMIN,
    "getApiKeyDepositLimits": ADMIN,
    "setApiKeyDepositLimits": ADMIN,
    "adminDeposit": ADMIN,
    "adminReversal": ADMIN,
    "adminUpdateAccount": ADMIN,
    "freezeAccount": ADMIN,
    "unfreezeAccount": ADMIN,
    "createAsset": ADMIN,
    "upsertPrices": ADMIN,
    "listAssets": READ_OR_ADMIN,
    "getAsset": READ_OR_ADMIN,
    "listPrices": READ_OR_ADMIN,
    "getPortfolio": ACCOUNTS_READ,
    "listClients": ADMIN,
    "listClientAllocations": ADMIN,
    "getCaptado": ADMIN,
    "followCaptado": ADMIN,
    # Webhooks push the events accounts:read could read; the admin's may cover every account.
    "createWebhook": READ_OR_ADMIN,
    "listWebhooks": READ_OR_ADMIN,
    "getWebhook": READ_OR_ADMIN,
    "updateWebhook": READ_OR_ADMIN,
    "deleteWebhook": READ_OR_ADMIN,
    "rotateWebhookSecret": READ_OR_ADMIN,
    "disableWebhook": READ_OR_ADMIN,
    "enableWebhook": READ_OR_ADMIN,
    "listWebhookDeliveries": READ_OR_ADMIN,
    "retryWebhookDelivery": READ_OR_ADMIN,
}


def forbidden(code: str, detail: str, **extra: Any) -> ApiError:
    return ApiError(403, code, detail, extra=extra or None)


async def require_access(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    """The app's one guard: the principal must hold what ACCESS names for the route."""
    principal = connection.scope.get("user")
    if principal is None:
        return  # a public route: the authentication middleware excluded it
    # WebSocket handlers have no OpenAPI operation; they name theirs in `opt`.
    operation_id = getattr(handler, "operation_id", None) or handler.opt.get("operation_id")
    requirement = ACCESS.get(operation_id) if isinstance(operation_id, str) else None
    if requirement is None:
        log.error("route_without_access_rule", operation_id=str(operation_id))
        raise forbidden("forbidden", "This endpoint has no access rule.")
    if requirement == AUTHENTICATED:
        return
    if requirement == BASIC_ONLY:
        if principal.method != "basic":
            raise unauthenticated("Exchange HTTP Basic credentials (username and password).")
    elif requirement == MANAGE_KEYS:
        if not (principal.is_admin or principal.method in ("basic", "bearer")):
            raise forbidden(
                "forbidden", "API keys are managed with a password or a token, not with a key."
            )
    elif requirement == READ_OR_ADMIN:
        if not (principal.is_admin or ACCOUNTS_READ in principal.scopes):
            raise forbidden(
                "insufficient_scope",
                f"This needs the {ACCOUNTS_READ} scope (or the admin's).",
                required_scope=ACCOUNTS_READ,
            )
    elif requirement not in principal.scopes:
        raise forbidden(
            "insufficient_scope",
            f"This needs the {requirement} scope.",
            required_scope=requirement,
        )


# ---------------------------------------------------------------- 401s

CHALLENGES = 'Basic realm="ledgerq", charset="UTF-8", Bearer realm="ledgerq"'


def unauthenticated(detail: str, bearer_error: str | None = None) -> ApiError:
    challenge = CHALLENGES
    if bearer_error is not None:
        # RFC 6750: say why a presented token was refused.
        challenge = f'Basic realm="ledgerq", charset="UTF-8", Bearer realm="ledgerq", error="{bearer_error}"'
    return ApiError(401, "unauthenticated", detail, headers={"WWW-Authenticate": challenge})


# ---------------------------------------------------------------- passwords (HTTP Basic)


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
        self._locks: dict[bytes, anyio.Lock] = {}

    def lock_for(self, username: str, password: str) -> anyio.Lock:
        """One verification at a time per credential pair: when an entry expires under load, one
        request checks the password and the others wait for its answer instead of repeating it."""
        digest = self._digest(username, password)
        if len(self._locks) >= self._max:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(digest, anyio.Lock())

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


def parse_basic(encoded: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise unauthenticated("Malformed Basic credentials.") from None
    username, sep, password = decoded.partition(":")
    if not sep or not username:
        raise unauthenticated("Malformed Basic credentials.")
    return username, password


# argon2 takes 64 MiB per check: a few at a time, so a burst of logins (or of guesses) cannot
# take the process's memory with it (64 connections opening at once reached 1.8 GB unbounded).
_password_checks = anyio.Semaphore(4)


async def verify_password(password_hash: str, password: str) -> bool:
    def check() -> bool:
        try:
            return _hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    # argon2 is deliberately slow: keep it off the event loop.
    return await anyio.to_thread.run_sync(check)


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    return connection.client.host if connection.client else "unknown"


async def authenticate_basic(
    services: Services, encoded: str, connection: ASGIConnection[Any, Any, Any, Any]
) -> Principal:
    username, password = parse_basic(encoded)
    address = client_address(connection)
    # Before anything looks at the password, even the cache: a throttled guess learns nothing.
    earlier_failures = await services.login_throttle.check(username, address)
    cached = services.credentials.get(username, password)
    if cached is not None:
        return cached
    async with services.credentials.lock_for(username, password), _password_checks:
        # Look again: a request with the same credentials may have verified them while we waited.
        cached = services.credentials.get(username, password)
        if cached is not None:
            return cached
        async with services.reads.connect() as conn:
            user = await queries.user_by_username(conn, username)
        ok = await verify_password(user.password_hash if user else _DUMMY_HASH, password)
        if user is not None and ok:
            services.credentials.put(
                username, password, user_principal(user.id, user.username, "basic")
            )
    if user is None or not ok:
        await services.login_throttle.record_failure(username, address)
        raise unauthenticated("Invalid username or password.")
    if earlier_failures:
        await services.login_throttle.record_success(username, address)
    principal = user_principal(user.id, user.username, "basic")
    services.credentials.put(username, password, principal)
    return principal


# ---------------------------------------------------------------- bearer tokens

JWT_ISSUER = "ledgerq"
JWT_ALGORITHM = "HS256"


def issue_token(secret_key: str, principal: Principal, ttl_seconds: int) -> str:
    now = int(time.time())
    claims = {
        "iss": JWT_ISSUER,
        "sub": str(principal.id),
        "name": principal.username,
        "iat": now,
        "exp": now + ttl_seconds,
        # The token's id: what a revocation names (api/revocation.py).
        "jti": secrets.token_urlsafe(16),
    }
    return jwt.encode(claims, secret_key, algorithm=JWT_ALGORITHM)


# Tokens whose signature this process has checked, until they expire: decoding and checking a
# JWT took about 60 us of the 450 us a balance read costs. Keyed by an HMAC of the token under
# the signing key (never the token itself), so a key rotation invalidates every entry.
_verified_tokens: dict[bytes, tuple[int, Principal]] = {}
_VERIFIED_TOKENS_MAX = 10_000


def verify_token(secret_key: str, token: str) -> Principal:
    """A token is its own proof (signature and expiry): no database lookup per request."""
    digest = hmac.new(secret_key.encode(), token.encode(), hashlib.sha256).digest()
    hit = _verified_tokens.get(digest)
    if hit is not None:
        expires, principal = hit
        if time.time() < expires:
            return principal
        del _verified_tokens[digest]
    principal, expires = _decode_token(secret_key, token)
    if len(_verified_tokens) >= _VERIFIED_TOKENS_MAX:
        _verified_tokens.clear()
    _verified_tokens[digest] = (expires, principal)
    return principal


def _decode_token(secret_key: str, token: str) -> tuple[Principal, int]:
    try:
        claims = jwt.decode(
            token,
            secret_key,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["iss", "sub", "iat", "exp"]},
        )
        user_id = UUID(claims["sub"])
        username = str(claims.get("name", ""))
        expires = int(claims["exp"])
        # Tokens issued before revocation existed have no jti: their digest names them.
        token_id = str(claims.get("jti") or hashlib.sha256(token.encode()).hexdigest())
    except jwt.ExpiredSignatureError:
        raise unauthenticated("The token has expired.", bearer_error="invalid_token") from None
    except (jwt.InvalidTokenError, ValueError, TypeError):
        raise unauthenticated("The token is not valid.", bearer_error="invalid_token") from None
    principal = Principal(
        id=user_id,
        username=username,
        method="bearer",
        scopes=USER_SCOPES,
        token_id=token_id,
        token_expires=expires,
    )
    return principal, expires


async def check_not_revoked(services: Services, principal: Principal) -> None:
    """A revoked token is refused like an invalid one. Memory answers (no round trip) while this
    process's subscription to revocations is up; otherwise Redis does, or, when Redis does not
    answer, the memory of a process that has been subscribed (api/revocation.py); a process that
    never was refuses the request with 503 rather than let a revoked token through."""
    assert principal.token_id is not None
    denylist = denylist_for(services.settings.redis_url)
    try:
        revoked = await denylist.is_revoked(principal.token_id)
    except RevocationUnavailable:
        log.warning("token_revocation_check_unavailable")
        raise ApiError(
            503,
            "token_check_unavailable",
            "Cannot check the token against revocations now; retry shortly, or use HTTP "
            "Basic or an API key.",
            headers={"Retry-After": "1"},
        ) from None
    if revoked:
        raise unauthenticated("The token has been revoked.", bearer_error="invalid_token")


# ---------------------------------------------------------------- API keys and the master key

API_KEY_PREFIX = "lq_"
# The stored lookup prefix: "lq_" and 9 characters (54 random bits) of the secret.
API_KEY_LOOKUP_LENGTH = 12
_API_KEY_LENGTH = len(API_KEY_PREFIX) + 43  # 32 bytes in unpadded urlsafe base64
_URLSAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass(frozen=True)
class NewApiKey:
    secret: str
    prefix: str
    secret_hash: bytes


def secret_hash(secret: str) -> bytes:
    # SHA-256 suffices: the secret has 256 random bits, nothing to brute-force as with passwords.
    return hashlib.sha256(secret.encode()).digest()


def new_api_key() -> NewApiKey:
    secret = API_KEY_PREFIX + secrets.token_urlsafe(32)
    return NewApiKey(secret, secret[:API_KEY_LOOKUP_LENGTH], secret_hash(secret))


def _looks_like_api_key(value: str) -> bool:
    return (
        len(value) == _API_KEY_LENGTH
        and value.startswith(API_KEY_PREFIX)
        and set(value[len(API_KEY_PREFIX) :]) <= _URLSAFE
    )


def _is_master_key(services: Services, value: str) -> bool:
    master = services.settings.master_key
    if master is None:
        return False
    # Digests first: compare_digest is constant time only for inputs of equal length.
    return hmac.compare_digest(secret_hash(value), secret_hash(master))


def master_principal() -> Principal:
    return Principal(
        id=MASTER_ID, username="(master key)", method="master_key", scopes=frozenset({ADMIN}),
        is_admin=True,
    )  # fmt: skip


async def authenticate_api_key(services: Services, value: str) -> Principal:
    if _is_master_key(services, value):
        return master_principal()
    if not _looks_like_api_key(value):
        raise unauthenticated("Invalid API key.")
    digest = secret_hash(value)
    # One indexed lookup per request and no cache, so a revoked key fails on its next request
    # in every API process. Autocommit: each statement stands alone, no BEGIN/COMMIT round trips.
    async with services.reads.connect() as conn:
        candidates = await access.live_keys_with_prefix(conn, value[:API_KEY_LOOKUP_LENGTH])
        key = next((k for k in candidates if hmac.compare_digest(k.secret_hash, digest)), None)
        if key is None:
            raise unauthenticated("Invalid API key.")
        stale = dt.datetime.now(dt.UTC) - access.LAST_USED_INTERVAL
        if key.last_used_at is None or key.last_used_at < stale:
            await access.touch_api_key(conn, key.id)
    scopes = frozenset(key.scopes)
    return Principal(
        id=key.user_id,
        username=key.username,
        method="api_key",
        scopes=scopes,
        is_admin=ADMIN in scopes,
        api_key_id=key.id,
        rate_limit=key.rate_limit,
    )


# ---------------------------------------------------------------- the middleware


def credential_headers(scope: Scope) -> tuple[str | None, str | None]:
    """`Authorization` and `X-API-Key`, straight from the ASGI scope (building Litestar's Headers
    object for two lookups was 3% of a balance read). A repeated header: the first one counts."""
    authorization = api_key = None
    for name, value in scope.get("headers", ()):
        if name == b"authorization" and authorization is None:
            authorization = value.decode("latin-1")
        elif name == b"x-api-key" and api_key is None:
            api_key = value.decode("latin-1")
    return authorization, api_key


class AuthenticationMiddleware(AbstractAuthenticationMiddleware):
    async def authenticate_request(
        self, connection: ASGIConnection[Any, Any, Any, Any]
    ) -> AuthenticationResult:
        authorization, api_key = credential_headers(connection.scope)
        services = services_of(connection.app)
        if authorization is not None and api_key is not None:
            raise unauthenticated("Use one authentication method per request, not two.")
        if api_key is not None:
            principal = await authenticate_api_key(services, api_key.strip())
        elif authorization is not None:
            scheme, _, credentials = authorization.strip().partition(" ")
            if scheme.lower() == "basic" and credentials:
                principal = await authenticate_basic(services, credentials, connection)
            elif scheme.lower() == "bearer" and credentials:
                principal = verify_token(
                    services.settings.require_secret_key(), credentials.strip()
                )
                await check_not_revoked(services, principal)
            else:
                raise unauthenticated("Use HTTP Basic, a Bearer token or an X-API-Key.")
        else:
            raise unauthenticated("Authentication required.")
        _current_principal.set(principal)
        return AuthenticationResult(user=principal, auth=principal.method)


PUBLIC_PATHS = [
    "^/health$",
    "^/ready$",
    "^/metrics$",
    "^/docs",
    "^/schema",
    "^/api/v1/auth/register$",
]

authentication_middleware = DefineMiddleware(AuthenticationMiddleware, exclude=PUBLIC_PATHS)
