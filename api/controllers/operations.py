"""Operations: submit (idempotent), read (optionally waiting), list, cancel."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal
from uuid import UUID

import structlog
from litestar import Controller, Request, Response, delete, get, post

from api.auth import Principal
from api.errors import ApiError
from api.operations import (
    IdempotencyKey,
    Prefer,
    read_operation,
    submit_many,
    submit_one,
    wait_for_final,
)
from api.pagination import Cursor, Keyset, Limit, page
from api.prefer import parse_prefer_wait
from api.presenters import cancelled_completion, operation_out
from api.schemas import BatchRequest, BatchResponse, OperationOut, OperationPage, OperationRequest
from api.state import services_of
from worker.events import publish_completions_async
from worker.store import queries

log = structlog.get_logger(__name__)

OPERATIONS = Keyset.by_number("operation", "seq")


def metadata_filter(params: Iterable[tuple[str, str]]) -> tuple[str, str] | None:
    """The one `metadata[key]=value` pair of a listing's query, if any."""
    pairs = []
    for name, value in params:
        if name == "metadata" or (name.startswith("metadata[") and not name.endswith("]")):
            raise ApiError(
                422, "validation_error", "filter on metadata as metadata[key]=value", field=name
            )
        if name.startswith("metadata["):
            pairs.append((name[len("metadata[") : -1], value))
    if len(pairs) > 1:
        raise ApiError(422, "validation_error", "one metadata pair per listing", field="metadata")
    return pairs[0] if pairs else None


def operation_not_found() -> ApiError:
    return ApiError(404, "operation_not_found", "No such operation.")


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
        return await submit_one(request, data, idempotency_key, prefer)

    @post("/batch", operation_id="submitOperationBatch", status_code=207)
    async def submit_batch(
        self, request: Request[Principal, Any, Any], data: BatchRequest
    ) -> BatchResponse:
        """Submit up to 1,000 operations, each with its own `idempotency_key`, stored in one transaction.

        Answers 207 with one result per item, in order: 202 accepted, 200 replayed, or the item's
        problem (4xx). Invalid items are skipped; the others are stored.
        """
        return await submit_many(request, data.operations)

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
            raise operation_not_found()
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
        """Operations you submitted, newest first; filter by account (debited or credited), status,
        and one metadata pair: `?metadata[order_id]=A-1042`."""
        services = services_of(request.app)
        principal_id = request.user.id
        pair = metadata_filter(request.query_params.multi_items())

        async def fetch(before: int | None, n: int) -> Sequence[queries.Record]:
            async with services.reads.connect() as conn:
                if (
                    account_id is not None
                    and await queries.account_for_owner(conn, account_id, principal_id) is None
                ):
                    raise ApiError(404, "account_not_found", "No such account.", field="account_id")
                return await queries.operations_for_principal(
                    conn,
                    principal_id,
                    before,
                    n,
                    account_id=account_id,
                    status=status,
                    metadata=pair,
                )

        return await page(OPERATIONS, cursor, limit, fetch, operation_out)

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
                    raise operation_not_found()
                raise ApiError(
                    409, "operation_not_pending", f"The operation is already {current.status}."
                )
            # Its operation.cancelled webhook events, in the cancel's own transaction (outbox).
            from worker.store.webhooks import write_cancelled

            await write_cancelled(conn, row.id)
        log.info("operation_cancelled", operation_id=str(operation_id))
        # Followers (Prefer: wait, SSE, WebSockets) learn it now, as from an applied batch.
        await publish_completions_async(services.redis, [cancelled_completion(row)])
        return operation_out(row)
