"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from litestar import Request, Response, get

from api.schemas import Health
from api.state import services_of


@get("/health", operation_id="health", tags=["ops"], exclude_from_auth=True)
async def health() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@get("/ready", operation_id="ready", tags=["ops"], exclude_from_auth=True)
async def ready(request: Request[Any, Any, Any]) -> Response[Health]:
    """PostgreSQL and Redis answer; 503 otherwise."""
    services = services_of(request.app)
    checks: dict[str, str] = {}
    try:
        async with services.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as exc:
        checks["postgres"] = f"error: {type(exc).__name__}"
    try:
        await services.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    healthy = all(v == "ok" for v in checks.values())
    return Response(
        Health(status="ok" if healthy else "unavailable", checks=checks),
        status_code=200 if healthy else 503,
    )
