"""The operation paths routes share: one submit path (single and the admin's deposit), the batch
submit, the fast read of an operation and waiting for it to be final (`Prefer: wait`).

A single submit (`POST /api/v1/operations`, `POST /api/v1/admin/deposits`) is: parse the
`Idempotency-Key`, hand the body and its decimal texts to api/intake.py, count and log what was
accepted or replayed, answer `Location` (and `Idempotent-Replayed: true` on a replay), honour
`Prefer: wait=N`, and answer 202 while the operation is pending after being created here, 200
otherwise. The routes differ only in the body they build and whether limits apply (`admin`).
"""

from __future__ import annotations

from typing import Annotated, Any, cast
from uuid import UUID

import structlog
from litestar import Request, Response
from litestar.params import Parameter

from api import intake
from api.auth import Principal
from api.errors import ApiError
from api.metrics import OPERATIONS_SUBMITTED
from api.prefer import parse_prefer_wait
from api.presenters import batch_out, operation_out
from api.rawjson import batch_decimal_texts, decimal_texts
from api.schemas import BatchItem, BatchResponse, OperationOut, OperationRequest, SubmittedType
from api.state import Services, services_of
from domain.idempotency import parse_idempotency_key
from domain.model import TERMINAL_STATUSES
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


def control_request(kind: str, account_id: UUID) -> OperationRequest:
    """An account control (freeze, unfreeze, close) for `submit_one`: not a type clients submit
    in a body (api/schemas.py `SubmittedType`), only through its route."""
    return OperationRequest(type=cast(SubmittedType, kind), account_id=account_id)


def location(operation_id: UUID) -> str:
    return f"/api/v1/operations/{operation_id}"


async def read_operation(services: Services, operation_id: UUID, principal_id: UUID) -> Any:
    """The operation if `principal_id` submitted it (anyone else's reads as missing: None)."""
    return await queries.fast_operation_for_principal(services.fast, operation_id, principal_id)


async def wait_for_final(
    services: Services, operation_id: UUID, principal_id: UUID, wait: int
) -> Any:
    """The operation once it is final, or as it is after `wait` seconds."""

    async def read() -> Any:
        return await read_operation(services, operation_id, principal_id)

    return await services.waiters.wait_until(
        str(operation_id), wait, read, lambda row: row is None or row.status in TERMINAL_STATUSES
    )


async def submit_one(
    request: Request[Principal, Any, Any],
    data: OperationRequest,
    idempotency_key: str | None,
    prefer: str | None,
    *,
    admin: bool = False,
) -> Response[OperationOut]:
    """The one submit path (see the module's docstring). `admin`: the admin acting on any customer
    account (a deposit past every limit, a freeze or unfreeze), logged for audit as
    `admin_operation_accepted`."""
    key = parse_idempotency_key(idempotency_key)
    services = services_of(request.app)
    texts = decimal_texts(await request.body())
    principal = request.user
    [outcome] = await intake.submit(
        services, principal.id, [intake.Submission(key, data, texts)], admin=admin
    )
    if isinstance(outcome, ApiError):
        raise outcome
    row = outcome.row
    # Everything this request logs from here on is about this operation.
    structlog.contextvars.bind_contextvars(operation_id=str(row.id))
    headers = {"Location": location(row.id)}
    if outcome.created:
        OPERATIONS_SUBMITTED.labels(row.type).inc()
        if admin:
            log.info(
                "admin_operation_accepted",
                type=row.type,
                account_id=str(row.account_id),
                amount=row.amount,
                currency=row.currency,
                by=principal.username,
            )
        else:
            log.info("operation_accepted", type=row.type, partition=row.partition)
    else:
        headers["Idempotent-Replayed"] = "true"
        log.info("operation_replayed", type=row.type, status=row.status)
    wait = parse_prefer_wait(prefer, services.settings.max_wait)
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
        if row.status not in TERMINAL_STATUSES:
            row = await wait_for_final(services, row.id, principal.id, wait)
    status = 202 if outcome.created and row.status not in TERMINAL_STATUSES else 200
    return Response(operation_out(row), status_code=status, headers=headers)


async def submit_many(
    request: Request[Principal, Any, Any], items: list[BatchItem]
) -> BatchResponse:
    """Each item with its own key, stored together; one result per item (api/presenters.py
    `batch_out`)."""
    services = services_of(request.app)
    texts = batch_decimal_texts(await request.body(), len(items))
    submissions = [
        intake.Submission(item.idempotency_key, item, item_texts)
        for item, item_texts in zip(items, texts, strict=True)
    ]
    outcomes = await intake.submit(services, request.user.id, submissions)
    for outcome in outcomes:
        if not isinstance(outcome, ApiError) and outcome.created:
            OPERATIONS_SUBMITTED.labels(outcome.row.type).inc()
    body = batch_out(outcomes)
    log.info(
        "operation_batch_accepted",
        operation_ids=[
            str(r.operation.id) for r in body.results if r.status == 202 and r.operation
        ],
        replayed=body.replayed,
        rejected=body.rejected,
    )
    return body
