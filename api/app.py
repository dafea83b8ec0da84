"""The Litestar application factory: the API process's composition root."""

from __future__ import annotations

import redis.asyncio
from litestar import Litestar
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from api.auth import CredentialCache, authentication_middleware
from api.controllers.accounts import AccountController
from api.controllers.auth import AuthController
from api.controllers.health import health, ready
from api.controllers.operations import OperationController
from api.errors import internal_error_handler, problem_details_plugin
from api.logging import configure_logging
from api.state import channels_plugin, lifespan_for
from worker.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    configure_logging(settings)
    redis_client = redis.asyncio.Redis.from_url(settings.redis_url)
    return Litestar(
        route_handlers=[health, ready, AuthController, AccountController, OperationController],
        middleware=[authentication_middleware],
        plugins=[problem_details_plugin(), channels_plugin(redis_client)],
        exception_handlers={Exception: internal_error_handler},
        lifespan=[lifespan_for(settings, redis_client, CredentialCache())],
        request_max_body_size=1024 * 1024,
        openapi_config=OpenAPIConfig(
            title="ledgerq",
            version="1.0.0",
            description="Asynchronous money operations with idempotency keys over a double-entry ledger.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(
                security_schemes={"basic": SecurityScheme(type="http", scheme="basic")}
            ),
            security=[{"basic": []}],
        ),
    )
