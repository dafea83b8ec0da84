"""The HTTP edge of errors: every failure leaves as RFC 9457 problem details with a stable `code`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import structlog
from litestar import Request, Response
from litestar.exceptions import (
    HTTPException,
    NotAuthorizedException,
    NotFoundException,
    PermissionDeniedException,
    SerializationException,
    ValidationException,
)
from litestar.exceptions.http_exceptions import (
    ClientException,
    MethodNotAllowedException,
    RequestEntityTooLarge,
    TooManyRequestsException,
)
from litestar.openapi.datastructures import ResponseSpec
from litestar.plugins import ReceiveRoutePlugin
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from litestar.routes import BaseRoute, HTTPRoute

from api.schemas import Problem
from domain.errors import DomainError
from worker.store.db import is_unavailable
from worker.store.fast import first_line

log = structlog.get_logger(__name__)

PROBLEM_TYPE_BASE = "https://ledgerq.dev/problems/"


class ApiError(ProblemDetailsException):
    """A problem with a stable machine-readable code, raised by controllers and the auth layer."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        body: dict[str, Any] = {"code": code}
        if field is not None:
            body["field"] = field
        if extra:
            body.update(extra)
        super().__init__(
            detail=detail,
            status_code=status,
            headers=headers,
            extra=body,
            type_=PROBLEM_TYPE_BASE + code,
            title=HTTPStatus(status).phrase,
        )
        self.code = code


# The one table from domain error codes to HTTP statuses; anything not listed is a 422.
DOMAIN_STATUS: dict[str, int] = {
    "idempotency_key_missing": 400,
    "idempotency_key_invalid": 400,
}


def from_domain_error(exc: DomainError) -> ApiError:
    return ApiError(DOMAIN_STATUS.get(exc.code, 422), exc.code, exc.message, field=exc.field)


def _validation_field(message: str) -> str | None:
    # msgspec says "... - at `$.amount`"; expose the field name without the JSON path prefix.
    marker = "at `$."
    if marker in message:
        return message.split(marker, 1)[1].rstrip("`")
    return None


def from_validation_error(exc: ValidationException) -> ApiError:
    errors = exc.extra if isinstance(exc.extra, list) else []
    messages = [str(e.get("message", "")) for e in errors if isinstance(e, dict)]
    keys = [str(e.get("key")) for e in errors if isinstance(e, dict) and e.get("key")]
    detail = "; ".join(m for m in messages if m) or str(exc.detail)
    field = _validation_field(detail) or (keys[0] if keys else None)
    return ApiError(422, "validation_error", detail, field=field, extra={"errors": errors})


_GENERIC_CODES: dict[type[Exception], tuple[int, str]] = {
    NotAuthorizedException: (401, "unauthenticated"),
    PermissionDeniedException: (403, "forbidden"),
    NotFoundException: (404, "not_found"),
    MethodNotAllowedException: (405, "method_not_allowed"),
    TooManyRequestsException: (429, "rate_limited"),
    RequestEntityTooLarge: (413, "body_too_large"),
    SerializationException: (400, "malformed_body"),
}


def from_http_exception(exc: HTTPException) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ValidationException):
        return from_validation_error(exc)
    for exc_type, (status, code) in _GENERIC_CODES.items():
        if isinstance(exc, exc_type):
            return ApiError(status, code, str(exc.detail), headers=exc.headers)
    status = exc.status_code
    if isinstance(exc, ClientException) and status == 400:
        return ApiError(400, "bad_request", str(exc.detail), headers=exc.headers)
    code = HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    return ApiError(status, code, str(exc.detail), headers=exc.headers)


# Seconds a client is told to wait before retrying when PostgreSQL is out of reach.
DATABASE_RETRY_AFTER = "1"


def database_unavailable() -> ApiError:
    return ApiError(
        503,
        "database_unavailable",
        "The database is unavailable; nothing was done. Retry shortly (the same Idempotency-Key "
        "is safe).",
        headers={"Retry-After": DATABASE_RETRY_AFTER},
    )


def internal_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Never leak internals: log the exception, answer a bare 500 problem. PostgreSQL out of
    reach (down, restarting, a connection cut, no connection slot) is not a bug: 503
    `database_unavailable` with Retry-After, on every route."""
    if is_unavailable(exc):
        log.warning(
            "database_unavailable",
            path=request.url.path,
            error_type=type(exc).__name__,
            error=first_line(exc),
        )
        return database_unavailable().to_response(request)
    log.exception("unhandled_error", path=request.url.path, error_type=type(exc).__name__)
    return ApiError(500, "internal_error", "An internal error occurred.").to_response(request)


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                HTTPException: from_http_exception,
                DomainError: from_domain_error,
            }
        )
    )


# ---------------------------------------------------------------- request bodies are JSON

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def is_json_media_type(content_type: str) -> bool:
    """`application/json` or any `+json` type (parameters such as charset ignored)."""
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


async def require_json_body(request: Request[Any, Any, Any]) -> None:
    """Every body this API takes is JSON: a body of another declared type answers 415 before it is
    read (Litestar would otherwise parse a `text/plain` body as JSON all the same)."""
    if request.method not in _BODY_METHODS:
        return
    headers = request.headers
    if headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers:
        return  # no body (POST /api/v1/auth/token, say)
    if not is_json_media_type(headers.get("content-type", "")):
        raise ApiError(
            415,
            "unsupported_media_type",
            "Request bodies must be JSON: send Content-Type: application/json.",
            headers={"Accept": "application/json"},
        )


# ---------------------------------------------------------------- the problems, documented

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Problems particular to a route, beyond those every route of its kind can answer.
ROUTE_PROBLEMS: dict[str, set[int]] = {
    "register": {409},
    "cancelOperation": {409},
    # 409 account_closed; 503 backlog_full.
    "submitOperation": {409, 503},
    "submitOperationBatch": {409, 503},
    "createAccount": {503},
    "updateAccount": {409},
    "closeAccount": {409, 503},
    "adminUpdateAccount": {409},
    "freezeAccount": {409, 503},
    "unfreezeAccount": {409, 503},
    "adminReversal": {409, 503},
    "createAsset": {409},
    "listQueues": {503},
    # 409 webhook_limit_reached; webhook_disabled.
    "createWebhook": {409},
    "retryWebhookDelivery": {409},
}


class ProblemResponsesPlugin(ReceiveRoutePlugin):
    """Documents, on every route, the problem details it can answer, as they really are.

    Litestar documents a 400 with its own validation body (`status_code`, `detail`, `extra`) as
    `application/json`; this API answers every error as RFC 9457 `application/problem+json`
    (validation errors as 422). Clients and schemathesis read the OpenAPI document, so it says so.
    """

    def __init__(self, public_paths: Iterable[str], probe_paths: Iterable[str]) -> None:
        self.public = [re.compile(p) for p in public_paths]
        self.probes = [re.compile(p) for p in probe_paths]

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute) or any(p.match(route.path) for p in self.probes):
            return
        public = any(p.match(route.path) for p in self.public)
        for handler in route.route_handlers:
            if not handler.include_in_schema or "OPTIONS" in handler.http_methods:
                continue
            # 503: any route may find PostgreSQL out of reach (database_unavailable).
            statuses = {400, 422, 429, 503} | ROUTE_PROBLEMS.get(str(handler.operation_id), set())
            if not public:
                statuses |= {401, 403, 404}
            if "data" in handler.parsed_fn_signature.parameters:
                statuses |= {413, 415}
            documented = {
                status: ResponseSpec(
                    data_container=Problem,
                    media_type=PROBLEM_MEDIA_TYPE,
                    description=HTTPStatus(status).phrase,
                    generate_examples=False,
                )
                for status in sorted(statuses)
            }
            handler.responses = {**documented, **(handler.responses or {})}
