"""Operations: submit (idempotent), read (optionally waiting), list, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from api import intake
from api.auth import Principal
from api.controllers.accounts import Cursor, Limit
from api.errors import ApiError
from api.metrics import OPERATIONS_SUBMITTED
from api.pagination import decode_int_cursor, encode_cursor
from api.prefer import parse_prefer_wait
from api.rawjson import batch_decimal_texts, decimal_texts
from api.schemas import (
    BatchItemResult,
    BatchRequest,
    BatchResponse,
    OperationError,
    OperationOut,
    OperationPage,
    OperationRequest,
    Problem,
)
from api.state import Services, services_of
from domain.idempotency import parse_idempotency_key
from domain.model import TERMINAL_STATUSES
from domain.money import format_amount
from domain.returns import format_scaled
from worker.store import queries

log = structlog.get_logger(__name__)

IdempotencyKey = Annotated[
    str | None,
    Parameter(
        header="Idempotency-Key",
        description='Required. Up to 255 characters; a structured-field string ("...") is accepted.',
    ),
]
Prefer = Annotated[
    str | None,
    Parameter(
        header="Prefer",
        description="`wait=N` (N <= 30): answer once the operation is final or after N seconds.",
    ),
]


def operation_out(row: Any) -> OperationOut:
    return OperationOut(
        id=row.id,
        type=row.type,
        status=row.status,
        account_id=row.account_id,
        to_account_id=row.to_account_id,
        # A redemption by quantity has no amount until it is priced.
        amount=format_amount(row.amount, row.currency) if row.amount else None,
        currency=row.currency,
        asset_id=row.asset_id,
        quantity=format_scaled(row.quantity) if row.quantity is not None else None,
        price=format_scaled(row.price) if row.price is not None else None,
        category=row.category,
        description=row.description,
        error=OperationError(code=row.error_code, message=row.error_message)
        if row.error_code
        else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        applied_at=row.applied_at,
    )


def problem_of(error: ApiError) -> Problem:
    body = error.extra if isinstance(error.extra, dict) else {}
    return Problem(
        type=error.type_ or "about:blank",
        title=error.title or "",
        status=error.status_code,
        detail=str(error.detail),
        code=error.code,
        field=body.get("field"),
    )


def location(operation_id: UUID) -> str:
    return f"/api/v1/operations/{operation_id}"


async def read_operation(services: Services, operation_id: UUID, principal_id: UUID) -> Any:
    params = {"operation_id": operation_id, "principal_id": principal_id}
    return await services.fast.one(queries.FAST_OPERATION_FOR_PRINCIPAL, params)


async def wait_for_final(
    services: Services, operation_id: UUID, principal_id: UUID, wait: int
) -> Any:
    async def read() -> Any:
        return await read_operation(services, operation_id, principal_id)

    return await services.waiters.wait_until(
        str(operation_id), wait, read, lambda row: row is None or row.status in TERMINAL_STATUSES
    )


class OperationController(Controller):
    path = "/api/v1/operations"
    tags = ["operations"]

    @post("/", operation_id="submitOperation", status_code=202)
    async def submit(
        self,
        request: Request[Principal, Any, Any],
        data: OperationRequest,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[OperationOut]:
        """Accept a deposit, withdrawal or transfer. 202 once it is durably stored; it applies asynchronously.

        The same `Idempotency-Key` with the same body answers 200 with the original operation and
        `Idempotent-Replayed: true`; with a different body, 422 `idempotency_key_reused`.
        """
        key = parse_idempotency_key(idempotency_key)
        services = services_of(request.app)
        texts = decimal_texts(await request.body())
        [outcome] = await intake.submit(
            services, request.user.id, [intake.Submission(key, data, texts)]
        )
        if isinstance(outcome, ApiError):
            raise outcome
        row = outcome.row
        # Everything this request logs from here on is about this operation.
        structlog.contextvars.bind_contextvars(operation_id=str(row.id))
        headers = {"Location": location(row.id)}
        if outcome.created:
            OPERATIONS_SUBMITTED.labels(row.type).inc()
            log.info("operation_accepted", type=row.type, partition=row.partition)
        else:
            headers["Idempotent-Replayed"] = "true"
            log.info("operation_replayed", type=row.type, status=row.status)
        wait = parse_prefer_wait(prefer, services.settings.max_wait)
        if wait is not None:
            headers["Preference-Applied"] = f"wait={wait}"
            if row.status not in TERMINAL_STATUSES:
                row = await wait_for_final(services, row.id, request.user.id, wait)
        status = 202 if outcome.created and row.status not in TERMINAL_STATUSES else 200
        return Response(operation_out(row), status_code=status, headers=headers)

    @post("/batch", operation_id="submitOperationBatch", status_code=207)
    async def submit_batch(
        self, request: Request[Principal, Any, Any], data: BatchRequest
    ) -> BatchResponse:
        """Submit up to 1,000 operations, each with its own `idempotency_key`, stored in one transaction.

        Answers 207 with one result per item, in order: 202 accepted, 200 replayed, or the item's
        problem (4xx). Invalid items are skipped; the others are stored.
        """
        services = services_of(request.app)
        texts = batch_decimal_texts(await request.body(), len(data.operations))
        submissions = [
            intake.Submission(item.idempotency_key, item, item_texts)
            for item, item_texts in zip(data.operations, texts, strict=True)
        ]
        outcomes = await intake.submit(services, request.user.id, submissions)
        results: list[BatchItemResult] = []
        for index, outcome in enumerate(outcomes):
            if isinstance(outcome, ApiError):
                results.append(
                    BatchItemResult(
                        index=index, status=outcome.status_code, error=problem_of(outcome)
                    )
                )
            else:
                if outcome.created:
                    OPERATIONS_SUBMITTED.labels(outcome.row.type).inc()
                results.append(
                    BatchItemResult(
                        index=index,
                        status=202 if outcome.created else 200,
                        replayed=not outcome.created,
                        operation=operation_out(outcome.row),
                    )
                )
        accepted = sum(1 for r in results if r.status == 202)
        replayed = sum(1 for r in results if r.replayed)
        log.info(
            "operation_batch_accepted",
            operation_ids=[str(r.operation.id) for r in results if r.status == 202 and r.operation],
            replayed=replayed,
            rejected=len(results) - accepted - replayed,
        )
        return BatchResponse(
            accepted=accepted,
            replayed=replayed,
            rejected=len(results) - accepted - replayed,
            results=results,
        )

    @get("/{operation_id:uuid}", operation_id="getOperation")
    async def get_operation(
        self, request: Request[Principal, Any, Any], operation_id: UUID, prefer: Prefer = None
    ) -> Response[OperationOut]:
        """The operation's current state. With `Prefer: wait=N`, answers as soon as it is final, or after N seconds."""
        services = services_of(request.app)
        wait = parse_prefer_wait(prefer, services.settings.max_wait)
        headers: dict[str, str] = {}
        if wait is None:
            row = await read_operation(services, operation_id, request.user.id)
        else:
            headers["Preference-Applied"] = f"wait={wait}"
            row = await wait_for_final(services, operation_id, request.user.id, wait)
        if row is None:
            raise ApiError(404, "operation_not_found", "No such operation.")
        return Response(operation_out(row), headers=headers)

    @get("/", operation_id="listOperations")
    async def list_operations(
        self,
        request: Request[Principal, Any, Any],
        limit: Limit = 100,
        cursor: Cursor = None,
        account_id: UUID | None = None,
        status: Literal["pending", "succeeded", "failed", "cancelled"] | None = None,
    ) -> OperationPage:
        """Operations you submitted, newest first; filter by account (debited or credited) and status."""
        before = decode_int_cursor("operation", cursor)
        services = services_of(request.app)
        async with services.reads.connect() as conn:
            if (
                account_id is not None
                and await queries.account_for_owner(conn, account_id, request.user.id) is None
            ):
                raise ApiError(404, "account_not_found", "No such account.", field="account_id")
            rows = await queries.operations_for_principal(
                conn, request.user.id, before, limit + 1, account_id=account_id, status=status
            )
        items = [operation_out(r) for r in rows[:limit]]
        next_cursor = encode_cursor("operation", rows[limit - 1].seq) if len(rows) > limit else None
        return OperationPage(items=items, next_cursor=next_cursor)

    @delete("/{operation_id:uuid}", operation_id="cancelOperation", status_code=200)
    async def cancel(
        self, request: Request[Principal, Any, Any], operation_id: UUID
    ) -> OperationOut:
        """Cancel an operation that is still pending; 409 once it has been applied or has failed."""
        services = services_of(request.app)
        async with services.engine.begin() as conn:
            row = await queries.cancel_operation(conn, operation_id, request.user.id)
            if row is None:
                current = await queries.operation_for_principal(conn, operation_id, request.user.id)
                if current is None:
                    raise ApiError(404, "operation_not_found", "No such operation.")
                raise ApiError(
                    409, "operation_not_pending", f"The operation is already {current.status}."
                )
        log.info("operation_cancelled", operation_id=str(operation_id))
        return operation_out(row)
