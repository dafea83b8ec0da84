"""Abuse protection: per-principal request limits and failed-login limits, both counted in Redis.

Request limits use Litestar's `RateLimitConfig` and a `RedisStore` shared by every API process,
with three changes to the stock middleware: the identifier is the authenticated principal (the
middleware sits after authentication), an API key may carry its own limit, and the count is one
atomic INCR-with-expiry in Redis. The stock middleware reads a JSON history and writes it back,
which lets two API processes lose each other's hits and costs two round trips with a payload as
long as the limit; the limit must hold across processes, so the counting is done here.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis.asyncio
import structlog
from litestar.datastructures import MutableScopeHeaders
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware, get_remote_address
from litestar.stores.redis import RedisStore
from redis.exceptions import RedisError

from api.errors import ApiError

if TYPE_CHECKING:
    from litestar import Request
    from litestar.types import Message, Receive, Scope, Send

    from api.settings import Settings

log = structlog.get_logger(__name__)

RATE_LIMIT_STORE = "rate_limit"
# Probes must answer even when a client is throttled.
RATE_LIMIT_EXCLUDE = ["^/health$", "^/ready$", "^/metrics$"]

# Count one hit; the first hit of a window starts the key's expiry. Returns {count, ms left}.
_HIT_SCRIPT = """
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
    redis.call('PEXPIRE', KEYS[1], ARGV[1])
    ttl = tonumber(ARGV[1])
end
return {count, ttl}
"""


class RateLimitStore(RedisStore):
    """A RedisStore that can also count: `hit` is one atomic round trip, shared by all processes."""

    def __init__(self, client: redis.asyncio.Redis, namespace: str) -> None:
        super().__init__(client, namespace=namespace)
        self._hit = client.register_script(_HIT_SCRIPT)

    async def hit(self, key: str, window_seconds: int) -> tuple[int, float]:
        """Count a request against `key`; (requests in the current window, seconds until it ends)."""
        count, ttl_ms = await self._hit(keys=[self._make_key(key)], args=[window_seconds * 1000])
        return int(count), int(ttl_ms) / 1000


def principal_identifier(request: Request[Any, Any, Any]) -> str:
    """Whom a request counts against: its principal, or its client address on public routes."""
    principal = request.scope.get("user")
    if principal is not None:
        return str(principal.rate_limit_key)
    return f"addr:{get_remote_address(request)}"


@dataclass
class WindowRateLimitConfig(RateLimitConfig):
    """`RateLimitConfig` with a window of any number of seconds (the stock one knows four units)."""

    window: int = 60


class PrincipalRateLimitMiddleware(RateLimitMiddleware):
    config: WindowRateLimitConfig

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        if not await self.should_check_request(request=request):
            await self.app(scope, receive, send)
            return
        principal = scope.get("user")
        limit = (principal.rate_limit if principal is not None else None) or self.max_requests
        window = self.config.window
        store = self.config.get_store_from_app(app)
        assert isinstance(store, RateLimitStore)
        # The window is part of the key: processes configured differently never share a count.
        bucket = f"{self.cache_key_from_request(request)}:w{window}"
        try:
            count, left = await store.hit(bucket, window)
        except RedisError as exc:
            # Fail open: an unreachable Redis must not take every endpoint down with it.
            log.warning("rate_limit_unavailable", error=str(exc))
            await self.app(scope, receive, send)
            return
        reset = max(math.ceil(left), 1)
        headers = {
            self.config.rate_limit_policy_header_key: f"{limit};w={window}",
            self.config.rate_limit_limit_header_key: str(limit),
            self.config.rate_limit_remaining_header_key: str(max(limit - count, 0)),
            self.config.rate_limit_reset_header_key: str(reset),
        }
        if count > limit:
            raise ApiError(
                429,
                "rate_limited",
                f"More than {limit} requests in {window} seconds; retry after {reset} seconds.",
                headers={**headers, "Retry-After": str(reset)},
            )
        await self.app(scope, receive, _with_headers(send, headers))


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message.setdefault("headers", [])
            mutable = MutableScopeHeaders(message)
            for name, value in headers.items():
                mutable[name] = value
        await send(message)

    return send_with_headers


def rate_limit_config(settings: Settings) -> WindowRateLimitConfig:
    return WindowRateLimitConfig(
        # The unit is unused (the window is); the count is the default per-principal limit.
        rate_limit=("second", settings.rate_limit),
        window=settings.rate_limit_window,
        exclude=RATE_LIMIT_EXCLUDE,
        identifier_for_request=principal_identifier,
        middleware_class=PrincipalRateLimitMiddleware,
        store=RATE_LIMIT_STORE,
    )


def rate_limit_store(client: redis.asyncio.Redis) -> RateLimitStore:
    return RateLimitStore(client, namespace="ledgerq:ratelimit")


# ---------------------------------------------------------------- failed logins

# Count a failure on each key; the first failure starts the key's expiry.
_FAILURE_SCRIPT = """
for _, key in ipairs(KEYS) do
    if redis.call('INCR', key) == 1 then
        redis.call('EXPIRE', key, ARGV[1])
    end
end
return 0
"""


class LoginThrottle:
    """Failed password logins, counted per username and per client address.

    Checked before a password is verified, so a throttled guess is refused without learning
    whether it was right. Usernames are hashed into the key: no raw input reaches Redis key space.
    """

    def __init__(
        self,
        client: redis.asyncio.Redis,
        per_username: int,
        per_address: int,
        window: int,
        namespace: str = "ledgerq:login-failures",
    ) -> None:
        self.redis = client
        self.per_username = per_username
        self.per_address = per_address
        self.window = window
        self.namespace = namespace
        self._failure = client.register_script(_FAILURE_SCRIPT)

    def _keys(self, username: str, address: str) -> tuple[str, str]:
        digest = hashlib.sha256(username.lower().encode()).hexdigest()[:32]
        return f"{self.namespace}:user:{digest}", f"{self.namespace}:addr:{address}"

    async def check(self, username: str, address: str) -> int:
        """Raise 429 if either counter is at its limit; otherwise the username's failure count."""
        user_key, address_key = self._keys(username, address)
        try:
            user_count, address_count = await self.redis.mget(user_key, address_key)
            blocked = [
                key
                for key, count, limit in (
                    (user_key, user_count, self.per_username),
                    (address_key, address_count, self.per_address),
                )
                if int(count or 0) >= limit
            ]
            if not blocked:
                return int(user_count or 0)
            retry = max([await self.redis.ttl(key) for key in blocked] + [1])
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=str(exc))
            return 0
        raise ApiError(
            429,
            "too_many_failed_logins",
            f"Too many failed logins; retry after {retry} seconds.",
            headers={"Retry-After": str(retry)},
        )

    async def record_failure(self, username: str, address: str) -> None:
        try:
            await self._failure(keys=list(self._keys(username, address)), args=[self.window])
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=str(exc))

    async def record_success(self, username: str, address: str) -> None:
        """A right password clears the username's failures (not the address's: an attacker with
        one account of their own must not reset the count of their guesses at others)."""
        try:
            await self.redis.delete(self._keys(username, address)[0])
        except RedisError as exc:
            log.warning("login_throttle_unavailable", error=str(exc))


def login_throttle(client: redis.asyncio.Redis, settings: Settings) -> LoginThrottle:
    return LoginThrottle(
        client,
        per_username=settings.login_max_failures,
        per_address=settings.login_max_failures_per_address,
        window=settings.login_failure_window,
    )
