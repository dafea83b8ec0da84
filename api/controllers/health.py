"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio.to_thread
import redis.asyncio
from kombu import Connection
from litestar import Request, Response, get
from litestar.openapi.datastructures import ResponseSpec

from api.schemas import Health
from api.state import Services, services_of
from worker.store.db import ping
from worker.store.migrate import head_revision, schema_versions

CHECK_TIMEOUT = 3.0
# A passed check trusted this long before it is asked again (probes come every few seconds): the
# schema changes only by a migration, and an AMQP broker costs a new connection per check. A
# failing check is asked again on every probe; PostgreSQL and Redis are asked every time.
TRUST_SECONDS = {"migrations": 30.0, "broker": 5.0}


class ReadinessChecks:
    """PostgreSQL, Redis and the broker reachable; the schema at the migrations' head revision."""

    def __init__(self) -> None:
        self._head: str | None = None
        self._passed: dict[str, float] = {}

    async def head(self) -> str:
        if self._head is None:
            # Reads the migrations folder once per process; the head cannot change while it runs.
            self._head = await anyio.to_thread.run_sync(head_revision)
        return self._head

    # Single statements: the autocommit pool (the transactions pool is kept for transactions).
    async def postgres(self, services: Services) -> str:
        async with services.reads.connect() as conn:
            await ping(conn)
        return "ok"

    async def migrations(self, services: Services) -> str:
        head = await self.head()
        async with services.reads.connect() as conn:
            versions = await schema_versions(conn)
        if versions is None:
            return f"error: not migrated (head is {head})"
        if versions != [head]:
            current = ",".join(versions) or "none"
            return f"error: database at {current}, code expects {head}"
        return "ok"

    async def redis(self, services: Services) -> str:
        await services.redis.ping()
        return "ok"

    async def broker(self, services: Services) -> str:
        url = services.settings.broker_url
        if url == services.settings.redis_url:
            await services.redis.ping()
        elif url.startswith(("redis://", "rediss://", "unix://")):
            client = redis.asyncio.Redis.from_url(url)
            try:
                await client.ping()
            finally:
                await client.aclose()
        else:

            def connect() -> None:
                with Connection(url, connect_timeout=CHECK_TIMEOUT) as conn:
                    conn.ensure_connection(max_retries=1)

            await anyio.to_thread.run_sync(connect)
        return "ok"

    async def run(self, services: Services) -> dict[str, str]:
        checks = {
            "postgres": self.postgres,
            "migrations": self.migrations,
            "redis": self.redis,
            "broker": self.broker,
        }
        now = time.monotonic()

        async def one(name: str) -> str:
            passed = self._passed.get(name)
            if passed is not None and now - passed < TRUST_SECONDS.get(name, 0.0):
                return "ok"
            try:
                async with asyncio.timeout(CHECK_TIMEOUT):
                    result = await checks[name](services)
            except TimeoutError:
                result = "error: timed out"
            except Exception as exc:
                result = f"error: {type(exc).__name__}"
            if result == "ok":
                self._passed[name] = time.monotonic()
            else:
                self._passed.pop(name, None)
            return result

        results = await asyncio.gather(*(one(name) for name in checks))
        return dict(zip(checks, results, strict=True))


_checks = ReadinessChecks()


@get("/health", operation_id="health", tags=["ops"], exclude_from_auth=True)
async def health() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@get(
    "/ready",
    operation_id="ready",
    tags=["ops"],
    exclude_from_auth=True,
    responses={503: ResponseSpec(Health, description="A check failed; `checks` says which.")},
)
async def ready(request: Request[Any, Any, Any]) -> Response[Health]:
    """PostgreSQL, Redis and the broker answer and the schema is at the code's migration head; 503
    naming the failed checks otherwise."""
    checks = await _checks.run(services_of(request.app))
    healthy = all(v == "ok" for v in checks.values())
    return Response(
        Health(status="ok" if healthy else "unavailable", checks=checks),
        status_code=200 if healthy else 503,
        headers={"Cache-Control": "no-store"},
    )
