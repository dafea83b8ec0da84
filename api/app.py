"""The Litestar application factory: the API process's composition root."""

from __future__ import annotations

import redis.asyncio
from litestar import Litestar
from litestar.middleware.base import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin, SwaggerRenderPlugin
from litestar.openapi.spec import Components, Reference, SecurityScheme

from api.auth import PUBLIC_PATHS, CredentialCache, authentication_middleware, require_access
from api.controllers.accounts import AccountController
from api.controllers.admin import AdminController
from api.controllers.api_keys import ApiKeyController
from api.controllers.auth import AuthController
from api.controllers.events import follow_account, follow_operation
from api.controllers.health import health, ready
from api.controllers.holds import HoldController
from api.controllers.investments import (
    AssetController,
    ClientController,
    PortfolioController,
    ReportController,
    follow_captado,
)
from api.controllers.operations import OperationController
from api.controllers.statements import StatementController
from api.controllers.webhooks import WebhookController
from api.errors import (
    ProblemResponsesPlugin,
    internal_error_handler,
    problem_details_plugin,
    require_json_body,
)
from api.logging import RequestEdge
from api.metrics import HttpMetrics, metrics
from api.pagination import PageSchemaPlugin
from api.ratelimit import (
    RATE_LIMIT_EXCLUDE,
    RATE_LIMIT_STORE,
    rate_limit_config,
    rate_limit_store,
)
from api.settings import Settings, get_settings
from api.state import channels_plugin, lifespan_for
from worker.logging_setup import configure_logging

SECURITY_SCHEMES: dict[str, SecurityScheme | Reference] = {
    "basic": SecurityScheme(type="http", scheme="basic", description="Username and password."),
    "bearer": SecurityScheme(
        type="http",
        scheme="bearer",
        bearer_format="JWT",
        description="A token from POST /api/v1/auth/token.",
    ),
    "apiKey": SecurityScheme(
        type="apiKey",
        name="X-API-Key",
        security_scheme_in="header",
        description="An API key (`lq_...`), or the master key.",
    ),
}


def create_app(settings: Settings | None = None) -> RequestEdge:
    """What the server runs: the Litestar app inside the request edge (ids, metrics)."""
    return RequestEdge(create_litestar(settings), HttpMetrics().record)


def create_litestar(settings: Settings | None = None) -> Litestar:
    settings = settings or get_settings()
    settings.require_secret_key()  # fail at start, not at the first token
    configure_logging(settings.log_format, settings.log_level)
    redis_client = redis.asyncio.Redis.from_url(settings.redis_url)
    # Request ids and HTTP metrics live in the edge around the app (below); inside it,
    # authentication first, so the rate limiter counts per principal.
    middleware: list[DefineMiddleware] = [authentication_middleware]
    if settings.rate_limit > 0:
        middleware.append(rate_limit_config(settings).middleware)
    return Litestar(
        route_handlers=[
            health,
            ready,
            metrics,
            AuthController,
            ApiKeyController,
            AccountController,
            StatementController,
            OperationController,
            HoldController,
            AdminController,
            AssetController,
            PortfolioController,
            ClientController,
            ReportController,
            follow_captado,
            follow_operation,
            follow_account,
            WebhookController,
        ],
        middleware=middleware,
        # Logging is configured above (worker/logging_setup.py), not by Litestar's defaults.
        logging_config=None,
        guards=[require_access],
        before_request=require_json_body,
        stores={RATE_LIMIT_STORE: rate_limit_store(redis_client)},
        plugins=[
            problem_details_plugin(),
            ProblemResponsesPlugin(PUBLIC_PATHS, probe_paths=RATE_LIMIT_EXCLUDE),
            channels_plugin(redis_client),
            PageSchemaPlugin(),
        ],
        exception_handlers={Exception: internal_error_handler},
        lifespan=[lifespan_for(settings, redis_client, CredentialCache())],
        request_max_body_size=1024 * 1024,
        openapi_config=OpenAPIConfig(
            title="ledgerq",
            version="1.0.0",
            description="Asynchronous money operations with idempotency keys over a double-entry ledger.",
            path="/docs",
            render_plugins=[ScalarRenderPlugin(), SwaggerRenderPlugin(path="/swagger")],
            components=Components(security_schemes=SECURITY_SCHEMES),
            security=[{name: []} for name in SECURITY_SCHEMES],
        ),
    )
