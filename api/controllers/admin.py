"""Administration (the master key, or a key with the admin scope): every user and every account,
a customer account's overdraft limit and name, freezing and unfreezing it, the state of each
partition's queue, deposit limits, and deposits past them."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from uuid import UUID

import structlog
from litestar import Controller, Request, Response, get, patch, post, put

from api import intake
from api.auth import Principal
from api.errors import ApiError
from api.metrics import read_queue_facts
from api.operations import IdempotencyKey, Prefer, control_request, submit_one
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import admin_account_out, limits_out, queue_view, user_out
from api.rawjson import field_text
from api.schemas import (
    AdminAccountOut,
    AdminAccountPage,
    AdminAccountUpdate,
    AdminDepositRequest,
    AdminReversalRequest,
    DepositLimitsOut,
    DepositLimitsSet,
    OperationOut,
    OperationRequest,
    QueueView,
    UserPage,
)
from api.state import Services, services_of
from domain.limits import API_KEY, USER, parse_limit
from domain.money import check_amount_token, exponent, format_amount, parse_amount
from worker.store import access

log = structlog.get_logger(__name__)

USERS = Keyset.by_id("user")
ALL_ACCOUNTS = Keyset.by_id("admin_account")


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


def parse_overdraft_limit(value: Decimal, text: bytes | None, currency: str) -> int:
    """An overdraft limit in minor units of `currency`: zero or more, exact in the currency."""
    field = "overdraft_limit"
    if text is not None:
        check_amount_token(text, field)
    if value < 0:
        raise ApiError(422, "invalid_amount", f"{field} must be zero or more", field=field)
    if value == 0:
        places = value.as_tuple().exponent
        if isinstance(places, int) and -places > exponent(currency):
            raise ApiError(
                422,
                "invalid_amount",
                f"{field} has more decimal places than {currency} allows ({exponent(currency)})",
                field=field,
            )
        return 0
    return parse_amount(value, currency, field)


async def update_account(
    services: Services, account_id: UUID, data: AdminAccountUpdate, body: bytes
) -> AdminAccountOut:
    """The admin's PATCH of a customer account (`AdminController.admin_update_account`)."""
    async with services.engine.begin() as conn:
        row = await access.customer_account(conn, account_id)
        if row is None:
            raise ApiError(404, "account_not_found", "No such customer account.")
        limit = None
        if data.overdraft_limit is not None:
            limit = parse_overdraft_limit(
                data.overdraft_limit, field_text(body, "overdraft_limit"), row.currency
            )
        try:
            row = await access.update_customer_account(
                conn, account_id, name=data.name, overdraft_limit=limit
            )
        except access.OverdraftInUse as exc:
            used = -(exc.row.balance - exc.row.held)
            currency = exc.row.currency
            raise ApiError(
                409,
                "overdraft_in_use",
                f"The account already uses {format_amount(used, currency)} {currency} of "
                "overdraft (balance less holds), more than the limit asked for; nothing was "
                "changed.",
                field="overdraft_limit",
                extra={"overdraft_used": format_amount(used, currency)},
            ) from None
    if row is None:
        raise ApiError(404, "account_not_found", "No such customer account.")
    log.info(
        "account_updated_by_admin",
        account_id=str(account_id),
        overdraft_limit=limit,
        renamed=data.name is not None,
    )
    return admin_account_out(row)


class AdminController(Controller):
    path = "/api/v1/admin"
    tags = ["admin"]

    @get("/users", operation_id="listUsers")
    async def list_users(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> UserPage:
        """Every user, oldest first, in cursor pages."""
        fetch = reads(services_of(request.app).reads, access.users_page)
        return await page(USERS, cursor, limit, fetch, user_out)

    @get("/accounts", operation_id="listAllAccounts")
    async def list_all_accounts(
        self,
        request: Request[Principal, Any, Any],
        limit: Limit = 100,
        cursor: Cursor = None,
        owner_id: UUID | None = None,
    ) -> AdminAccountPage:
        """Every account (system accounts too, without an owner), or one owner's, in cursor pages."""
        fetch = reads(services_of(request.app).reads, access.accounts_page, owner_id)
        return await page(ALL_ACCOUNTS, cursor, limit, fetch, admin_account_out)

    @patch("/accounts/{account_id:uuid}", operation_id="adminUpdateAccount")
    async def admin_update_account(
        self, request: Request[Principal, Any, Any], account_id: UUID, data: AdminAccountUpdate
    ) -> AdminAccountOut:
        """Set a customer account's overdraft limit (an amount of its currency, zero or more)
        and/or its name; absent fields stay. A limit below what the account already uses
        (balance less holds below minus the limit) answers 409 `overdraft_in_use` and changes
        nothing. The workers read the limit under the account's row lock, from their next
        operation on. World and custody accounts: 404."""
        return await update_account(
            services_of(request.app), account_id, data, await request.body()
        )

    @post("/accounts/{account_id:uuid}/freeze", operation_id="freezeAccount", status_code=202)
    async def freeze_account(
        self,
        request: Request[Principal, Any, Any],
        account_id: UUID,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[OperationOut]:
        """Freeze a customer account: a `freeze` operation, applied in the account's order
        (answered like `POST /operations`). From then on its debits fail `account_frozen`;
        credits still apply."""
        return await submit_one(
            request, control_request("freeze", account_id), idempotency_key, prefer, admin=True
        )

    @post("/accounts/{account_id:uuid}/unfreeze", operation_id="unfreezeAccount", status_code=202)
    async def unfreeze_account(
        self,
        request: Request[Principal, Any, Any],
        account_id: UUID,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[OperationOut]:
        """Unfreeze a customer account: an `unfreeze` operation, applied in the account's
        order; debits apply again after it."""
        return await submit_one(
            request, control_request("unfreeze", account_id), idempotency_key, prefer, admin=True
        )

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
        return queue_view(facts, static=services.settings.worker_partitions is not None)

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
        deposit = OperationRequest(
            type="deposit",
            account_id=data.account_id,
            amount=data.amount,
            category=data.category,
            description=data.description,
        )
        return await submit_one(request, deposit, idempotency_key, prefer, admin=True)

    @post("/reversals", operation_id="adminReversal", status_code=202)
    async def admin_reversal(
        self,
        request: Request[Principal, Any, Any],
        data: AdminReversalRequest,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[OperationOut]:
        """Reverse any customer's succeeded deposit, withdrawal, transfer or capture, fully or
        partly (a refund or chargeback the operator decided): the same operation a customer
        submits as `reversal`, for any account, including those that take money from the world
        (a withdrawal's reversal). Idempotent like any submit; `Prefer: wait=N`."""
        reversal = OperationRequest(
            type="reversal",
            operation_id=data.operation_id,
            amount=data.amount,
            category=data.category,
            description=data.description,
            metadata=data.metadata,
        )
        return await submit_one(request, reversal, idempotency_key, prefer, admin=True)
