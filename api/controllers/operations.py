"""Operations: submit (idempotent), read (optionally waiting), list, cancel."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

import anyio.to_thread
import structlog
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import Parameter

from api.auth import Principal
from api.controllers.accounts import Cursor, Limit
from api.errors import ApiError
from api.pagination import decode_int_cursor, encode_cursor
from api.prefer import parse_prefer_wait
from api.schemas import OperationError, OperationOut, OperationPage, OperationRequest
from api.state import Services, services_of
from domain.idempotency import parse_idempotency_key, request_fingerprint
from domain.model import CUSTOMER_KINDS, TERMINAL_STATUSES
from domain.money import format_amount, parse_amount
from worker.doorbell import claim_bell
from worker.routing import partition_for
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
        amount=format_amount(row.amount, row.currency),
        currency=row.currency,
        category=row.category,
        description=row.description,
        error=OperationError(code=row.error_code, message=row.error_message)
        if row.error_code
        else None,
        created_at=row.created_at,
        updated_at=row.updated_at,
        applied_at=row.applied_at,
    )


def location(operation_id: UUID) -> str:
    return f"/api/v1/operations/{operation_id}"


def invalid(code: str, detail: str, field: str) -> ApiError:
    return ApiError(422, code, detail, field=field)


async def ring_partition(services: Services, partition: int) -> None:
    """Tell the partition's worker there is work. Best effort: the sweeper covers a lost ring."""
    from worker.tasks import ring

    try:
        if await claim_bell(services.redis, partition):
            await anyio.to_thread.run_sync(ring, partition)
    except Exception as exc:
        log.warning("ring_failed", partition=partition, error=str(exc))


async def wait_for_final(
    services: Services, operation_id: UUID, principal_id: UUID, wait: int
) -> Any:
    async def read() -> Any:
        async with services.engine.connect() as conn:
            return await queries.operation_for_principal(conn, operation_id, principal_id)

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
        principal = request.user
        if data.type == "transfer" and data.to_account_id is None:
            raise invalid(
                "validation_error", "to_account_id is required for a transfer", "to_account_id"
            )
        if data.type != "transfer" and data.to_account_id is not None:
            raise invalid(
                "validation_error",
                f"to_account_id is not allowed for a {data.type}",
                "to_account_id",
            )
        if data.to_account_id is not None and data.to_account_id == data.account_id:
            raise invalid(
                "same_account", "a transfer needs two different accounts", "to_account_id"
            )

        async with services.engine.begin() as conn:
            account = await queries.account_for_owner(conn, data.account_id, principal.id)
            if account is None:
                raise ApiError(404, "account_not_found", "No such account.", field="account_id")
            amount = parse_amount(data.amount, account.currency)
            if data.to_account_id is not None:
                target = await queries.account_by_id(conn, data.to_account_id)
                if target is None or target.kind not in CUSTOMER_KINDS:
                    raise invalid(
                        "account_not_found", "to_account_id names no account", "to_account_id"
                    )
                if target.currency != account.currency:
                    raise invalid(
                        "currency_mismatch",
                        f"to_account_id holds {target.currency}, the debited account {account.currency}",
                        "to_account_id",
                    )
            fingerprint = request_fingerprint(
                {
                    "type": data.type,
                    "account_id": data.account_id,
                    "to_account_id": data.to_account_id,
                    "amount": amount,
                    "currency": account.currency,
                    "category": data.category,
                    "description": data.description,
                }
            )
            row, created = await queries.insert_operation(
                conn,
                queries.NewOperation(
                    principal_id=principal.id,
                    idempotency_key=key,
                    fingerprint=fingerprint,
                    type=data.type,
                    account_id=data.account_id,
                    to_account_id=data.to_account_id,
                    amount=amount,
                    currency=account.currency,
                    partition=partition_for(data.account_id, services.settings.partitions),
                    category=data.category,
                    description=data.description,
                ),
            )
        headers = {"Location": location(row.id)}
        if not created:
            if row.fingerprint != fingerprint:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used with a different request.",
                    headers={"Location": location(row.id)},
                )
            headers["Idempotent-Replayed"] = "true"
        else:
            # Only after the commit: a worker must never be told about an operation it cannot see.
            await ring_partition(services, row.partition)
            log.info(
                "operation_accepted",
                operation_id=str(row.id),
                type=row.type,
                partition=row.partition,
            )

        wait = parse_prefer_wait(prefer, services.settings.max_wait)
        if wait is not None:
            headers["Preference-Applied"] = f"wait={wait}"
            if row.status not in TERMINAL_STATUSES:
                row = await wait_for_final(services, row.id, principal.id, wait)
        status = 202 if created and row.status not in TERMINAL_STATUSES else 200
        return Response(operation_out(row), status_code=status, headers=headers)

    @get("/{operation_id:uuid}", operation_id="getOperation")
    async def get_operation(
        self, request: Request[Principal, Any, Any], operation_id: UUID, prefer: Prefer = None
    ) -> Response[OperationOut]:
        """The operation's current state. With `Prefer: wait=N`, answers as soon as it is final, or after N seconds."""
        services = services_of(request.app)
        wait = parse_prefer_wait(prefer, services.settings.max_wait)
        headers: dict[str, str] = {}
        if wait is None:
            async with services.engine.connect() as conn:
                row = await queries.operation_for_principal(conn, operation_id, request.user.id)
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
        async with services.engine.connect() as conn:
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
