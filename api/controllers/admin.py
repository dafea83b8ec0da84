"""Administration (the master key, or a key with the admin scope): every user and every account,
the state of each partition's queue, deposit limits, and deposits past them."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, Response, get, post, put
from msgspec.structs import asdict

from api import intake
from api.auth import Principal
from api.controllers.accounts import Cursor, Limit, account_out
from api.controllers.operations import (
    IdempotencyKey,
    Prefer,
    location,
    operation_out,
    wait_for_final,
)
from api.errors import ApiError
from api.metrics import OPERATIONS_SUBMITTED, read_queue_facts
from api.pagination import decode_uuid_cursor, encode_cursor
from api.prefer import parse_prefer_wait
from api.rawjson import decimal_texts
from api.schemas import (
    AdminAccountOut,
    AdminAccountPage,
    AdminDepositRequest,
    DepositLimitOut,
    DepositLimitsOut,
    DepositLimitsSet,
    OperationOut,
    OperationRequest,
    UserOut,
    UserPage,
)
from api.state import Services, services_of
from domain.idempotency import parse_idempotency_key
from domain.limits import API_KEY, USER, Limits, bucket_of, parse_limit
from domain.model import TERMINAL_STATUSES
from domain.money import exponent, format_amount
from worker.store import access
from worker.store.queries import Record, window_of

log = structlog.get_logger(__name__)


def limits_out(
    subject_kind: str, subject_id: UUID, defaults: Limits, rows: list[Record]
) -> DepositLimitsOut:
    items = []
    for row in rows:
        currency = row.currency
        effective = defaults.overridden(row.per_operation, row.daily)
        used = window_of(row).rolled(bucket_of(row.now)).total() if row.window_sums else 0

        def money(minor: int | None, currency: str = currency) -> str | None:
            return None if minor is None else format_amount(minor, currency)

        items.append(
            DepositLimitOut(
                currency=currency,
                per_operation=format_amount(effective.per_operation, currency),
                daily=format_amount(effective.daily, currency),
                per_operation_set=money(row.per_operation),
                daily_set=money(row.daily),
                deposited_last_day=format_amount(used, currency),
                remaining=format_amount(max(0, effective.daily - used), currency),
            )
        )
    return DepositLimitsOut(
        subject_kind="user" if subject_kind == USER else "api_key",
        subject_id=subject_id,
        default_per_operation_minor=defaults.per_operation,
        default_daily_minor=defaults.daily,
        items=items,
    )


async def _subject_exists(services: Services, subject_kind: str, subject_id: UUID) -> None:
    async with services.reads.connect() as conn:
        if subject_kind == USER:
            if await access.user_by_id(conn, subject_id) is None:
                raise ApiError(404, "user_not_found", "No such user.")
        elif await access.live_key_by_id(conn, subject_id) is None:
            raise ApiError(404, "api_key_not_found", "No such API key.")


async def read_limits(services: Services, subject_kind: str, subject_id: UUID) -> DepositLimitsOut:
    await _subject_exists(services, subject_kind, subject_id)
    async with services.reads.connect() as conn:
        rows = list(await access.deposit_limit_rows(conn, subject_id))
    return limits_out(subject_kind, subject_id, intake.default_limits(services.settings), rows)


async def write_limits(
    services: Services, subject_kind: str, subject_id: UUID, data: DepositLimitsSet
) -> DepositLimitsOut:
    currency = data.currency
    exponent(currency)  # an unknown currency is a 422 unknown_currency
    per_operation = (
        parse_limit(data.per_operation, currency, "per_operation")
        if data.per_operation is not None
        else None
    )
    daily = parse_limit(data.daily, currency, "daily") if data.daily is not None else None
    await _subject_exists(services, subject_kind, subject_id)
    async with services.engine.begin() as conn:
        await access.set_deposit_limits(
            conn, subject_kind, subject_id, currency, per_operation, daily
        )
    log.info(
        "deposit_limits_set",
        subject_kind=subject_kind,
        subject_id=str(subject_id),
        currency=currency,
        per_operation=per_operation,
        daily=daily,
    )
    return await read_limits(services, subject_kind, subject_id)


class PartitionQueue(msgspec.Struct, kw_only=True):
    partition: int
    pending: int
    # Seconds the oldest pending operation has waited; null when nothing is pending.
    oldest_pending_age_seconds: float | None
    # Completed in the last 60 seconds, as counted by the workers.
    applied_last_minute: int
    failed_last_minute: int
    # The worker holding the partition's lease (`auto` workers); "static" when workers are given
    # fixed partitions (LEDGERQ_WORKER_PARTITIONS); null when nobody holds it.
    holder: str | None


class QueueView(msgspec.Struct, kw_only=True):
    partitions: list[PartitionQueue]
    # Workers with a live heartbeat in the lease registry (`auto` workers only).
    workers_alive: int


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]

    @get("/users", operation_id="listUsers")
    async def list_users(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> UserPage:
        """Every user, oldest first, in cursor pages."""
        after = decode_uuid_cursor("user", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await access.users_page(conn, after, limit + 1)
        items = [
            UserOut(id=r.id, username=r.username, created_at=r.created_at) for r in rows[:limit]
        ]
        next_cursor = encode_cursor("user", items[-1].id) if len(rows) > limit else None
        return UserPage(items=items, next_cursor=next_cursor)

    @get("/accounts", operation_id="listAllAccounts")
    async def list_all_accounts(
        self,
        request: Request[Principal, Any, Any],
        limit: Limit = 100,
        cursor: Cursor = None,
        owner_id: UUID | None = None,
    ) -> AdminAccountPage:
        """Every account (system accounts too, without an owner), or one owner's, in cursor pages."""
        after = decode_uuid_cursor("admin_account", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await access.accounts_page(conn, owner_id, after, limit + 1)
        items = [
            AdminAccountOut(**asdict(account_out(r)), owner_id=r.owner_id) for r in rows[:limit]
        ]
        next_cursor = encode_cursor("admin_account", items[-1].id) if len(rows) > limit else None
        return AdminAccountPage(items=items, next_cursor=next_cursor)

    @get("/queues", operation_id="listQueues")
    async def list_queues(self, request: Request[Principal, Any, Any]) -> QueueView:
        """Each partition: pending count, oldest pending age, completed in the last minute, holder."""
        services = services_of(request.app)
        facts = await read_queue_facts(services, recent=True)
        down = [source for source, ok in facts.sources.items() if not ok]
        if down:
            raise ApiError(
                503,
                "queue_facts_unavailable",
                f"Cannot read the queues now ({', '.join(down)} unavailable); retry shortly.",
                headers={"Retry-After": "1"},
            )
        static = services.settings.worker_partitions is not None
        return QueueView(
            partitions=[
                PartitionQueue(
                    partition=p,
                    pending=f.pending,
                    oldest_pending_age_seconds=round(f.oldest_pending_age, 3)
                    if f.oldest_pending_age is not None
                    else None,
                    applied_last_minute=f.applied_last_minute,
                    failed_last_minute=f.failed_last_minute,
                    holder=f.holder or ("static" if static else None),
                )
                for p, f in sorted(facts.partitions.items())
            ],
            workers_alive=facts.workers_alive or 0,
        )

    # ------------------------------------------------------------ deposit limits

    @get("/users/{client_id:uuid}/deposit-limits", operation_id="getUserDepositLimits")
    async def get_user_deposit_limits(
        self, request: Request[Principal, Any, Any], client_id: UUID
    ) -> DepositLimitsOut:
        """A user's deposit limits and what their rolling day holds, per currency with limits
        set or deposits counted; every other currency has the defaults."""
        return await read_limits(services_of(request.app), USER, client_id)

    @put("/users/{client_id:uuid}/deposit-limits", operation_id="setUserDepositLimits")
    async def set_user_deposit_limits(
        self, request: Request[Principal, Any, Any], client_id: UUID, data: DepositLimitsSet
    ) -> DepositLimitsOut:
        """Set a user's limits in one currency, as amounts of it (null: the default again). They
        apply from the user's next request on; deposits already counted stay counted."""
        return await write_limits(services_of(request.app), USER, client_id, data)

    @get("/api-keys/{key_id:uuid}/deposit-limits", operation_id="getApiKeyDepositLimits")
    async def get_api_key_deposit_limits(
        self, request: Request[Principal, Any, Any], key_id: UUID
    ) -> DepositLimitsOut:
        """An API key's deposit limits (on top of its user's) and what its rolling day holds."""
        return await read_limits(services_of(request.app), API_KEY, key_id)

    @put("/api-keys/{key_id:uuid}/deposit-limits", operation_id="setApiKeyDepositLimits")
    async def set_api_key_deposit_limits(
        self, request: Request[Principal, Any, Any], key_id: UUID, data: DepositLimitsSet
    ) -> DepositLimitsOut:
        """Set an API key's limits in one currency (null: the default again). Deposits made with
        the key count against both the key's limits and its user's."""
        return await write_limits(services_of(request.app), API_KEY, key_id, data)

    # ------------------------------------------------------------ past the limits

    @post("/deposits", operation_id="adminDeposit", status_code=202)
    async def admin_deposit(
        self,
        request: Request[Principal, Any, Any],
        data: AdminDepositRequest,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[OperationOut]:
        """Deposit into any customer account past every deposit limit (a transfer the operator
        has checked). Not counted against the owner's limits. Idempotent like any submit (the key
        is the admin's own); replaying the same request answers its current state, and
        `Prefer: wait=N` waits for it to be final."""
        key = parse_idempotency_key(idempotency_key)
        services = services_of(request.app)
        principal = request.user
        body = OperationRequest(
            type="deposit",
            account_id=data.account_id,
            amount=data.amount,
            category=data.category,
            description=data.description,
        )
        [outcome] = await intake.submit(
            services,
            principal.id,
            [intake.Submission(key, body, decimal_texts(await request.body()))],
            admin=True,
        )
        if isinstance(outcome, ApiError):
            raise outcome
        row = outcome.row
        headers = {"Location": location(row.id)}
        if outcome.created:
            OPERATIONS_SUBMITTED.labels(row.type).inc()
            log.info(
                "admin_deposit_accepted",
                operation_id=str(row.id),
                account_id=str(row.account_id),
                amount=row.amount,
                currency=row.currency,
                by=principal.username,
            )
        else:
            headers["Idempotent-Replayed"] = "true"
        wait = parse_prefer_wait(prefer, services.settings.max_wait)
        if wait is not None:
            headers["Preference-Applied"] = f"wait={wait}"
            if row.status not in TERMINAL_STATUSES:
                row = await wait_for_final(services, row.id, principal.id, wait)
        status = 202 if outcome.created and row.status not in TERMINAL_STATUSES else 200
        return Response(operation_out(row), status_code=status, headers=headers)
