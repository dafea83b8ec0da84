"""Operation intake: validate submitted operations, store them with the next group commit.

Single submits and batch submits share this path; a single submit is a batch of one whose error
is raised instead of reported per item.

Deposits count against the submitter's deposit limits (domain/limits.py): the user's, and the API
key's when the request came with one. The check runs in the group commit (api/groupcommit.py),
once per group; a request whose new deposits would pass a limit is refused whole with
`deposit_limit_exceeded` (422 when it can never fit, 429 with Retry-After when it fits once
earlier deposits leave the rolling day), and nothing of it is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from uuid import UUID

import psycopg
import structlog

from api.auth import current_principal
from api.errors import ApiError, from_domain_error
from api.schemas import OperationRequest
from api.settings import Settings
from api.state import Services
from domain.errors import DomainError
from domain.idempotency import request_fingerprint
from domain.limits import DAILY, Limits, Refusal
from domain.model import CUSTOMER_KINDS
from domain.money import check_amount_token, format_amount, parse_amount
from domain.returns import parse_scaled
from worker.routing import partition_for
from worker.store import queries
from worker.store.queries import NewOperation, OperationKey, Record, Stored

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Submission:
    idempotency_key: str
    request: OperationRequest
    # The decimal fields as the client wrote them (api/rawjson.py), held to the amount grammar
    # before their decoded values are used: the JSON decoder reads " 1.00" or "1e2" leniently.
    texts: Mapping[str, bytes] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Accepted:
    """The operation stored for a submission; `created` is False for an idempotent replay."""

    row: Record
    created: bool


Outcome = Accepted | ApiError


def _invalid(code: str, detail: str, field: str) -> ApiError:
    return ApiError(422, code, detail, field=field)


INVESTMENTS = ("allocation", "redemption")


def check_shape(data: OperationRequest) -> ApiError | None:
    """Rules that need no database: which fields each operation type takes."""
    investment = data.type in INVESTMENTS
    problems: list[tuple[bool, str, str, str]] = [
        (data.type == "transfer" and data.to_account_id is None,
         "validation_error", "to_account_id is required for a transfer", "to_account_id"),
        (data.type != "transfer" and data.to_account_id is not None,
         "validation_error", f"to_account_id is not allowed for a {data.type}", "to_account_id"),
        (data.to_account_id is not None and data.to_account_id == data.account_id,
         "same_account", "a transfer needs two different accounts", "to_account_id"),
        (investment and data.asset_id is None,
         "validation_error", f"asset_id is required for an {data.type}", "asset_id"),
        (not investment and data.asset_id is not None,
         "validation_error", f"asset_id is not allowed for a {data.type}", "asset_id"),
        (data.quantity is not None and data.type != "redemption",
         "validation_error", "quantity is only for a redemption", "quantity"),
        (data.type == "redemption" and (data.amount is None) == (data.quantity is None),
         "validation_error", "a redemption takes exactly one of amount or quantity", "amount"),
        (data.amount is None and data.type != "redemption",
         "validation_error", "amount is required", "amount"),
    ]  # fmt: skip
    for failed, code, detail, field in problems:
        if failed:
            return _invalid(code, detail, field)
    return None


def prepare(
    principal_id: UUID,
    submission: Submission,
    accounts: dict[UUID, Record],
    partitions: int,
    asset_currencies: dict[UUID, str],
    *,
    limits: Limits | None = None,
    api_key_id: UUID | None = None,
    any_owner: bool = False,
) -> NewOperation | ApiError:
    """The operation to store for a submission, or why not. `limits` (deposits: the defaults where
    the admin set none; None: not limited) and `api_key_id` travel with it to the group commit.
    `any_owner`: the admin's deposits, into any customer account."""
    data = submission.request
    if (error := check_shape(data)) is not None:
        return error
    account = accounts.get(data.account_id)
    if any_owner and account is not None and account.kind not in CUSTOMER_KINDS:
        account = None
    if account is None or (account.owner_id != principal_id and not any_owner):
        # Someone else's account is indistinguishable from a missing one.
        return ApiError(404, "account_not_found", "No such account.", field="account_id")
    try:
        for name, text in submission.texts.items():
            check_amount_token(text, name)
        amount = parse_amount(data.amount, account.currency) if data.amount is not None else 0
        quantity = parse_scaled(data.quantity, "quantity") if data.quantity is not None else None
    except DomainError as exc:
        return from_domain_error(exc)
    if data.asset_id is not None:
        asset_currency = asset_currencies.get(data.asset_id)
        if asset_currency is None:
            return _invalid("asset_not_found", "asset_id names no asset", "asset_id")
        if asset_currency != account.currency:
            return _invalid(
                "currency_mismatch",
                f"the asset trades in {asset_currency}, the account holds {account.currency}",
                "asset_id",
            )
    if data.to_account_id is not None:
        target = accounts.get(data.to_account_id)
        if target is None or target.kind not in CUSTOMER_KINDS:
            return _invalid("account_not_found", "to_account_id names no account", "to_account_id")
        if target.currency != account.currency:
            return _invalid(
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
            "asset_id": data.asset_id,
            "quantity": quantity,
        }
    )
    return NewOperation(
        principal_id=principal_id,
        idempotency_key=submission.idempotency_key,
        fingerprint=fingerprint,
        type=data.type,
        account_id=data.account_id,
        to_account_id=data.to_account_id,
        amount=amount,
        currency=account.currency,
        partition=partition_for(data.account_id, partitions),
        category=data.category,
        description=data.description,
        asset_id=data.asset_id,
        quantity=quantity,
        limits=limits,
        api_key_id=api_key_id,
    )


def default_limits(settings: Settings) -> Limits:
    """LEDGERQ_DEPOSIT_MAX_PER_OPERATION and LEDGERQ_DEPOSIT_DAILY_LIMIT."""
    return Limits(settings.deposit_max_per_operation, settings.deposit_daily_limit)


def limit_exceeded(refusal: Refusal) -> ApiError:
    """The problem a request refused by a deposit limit answers: 422 when it can never fit, 429
    with Retry-After when it fits once earlier deposits have left the rolling day."""
    currency = refusal.currency

    def money(minor: int) -> str:
        return format_amount(minor, currency)

    whose = "your user" if refusal.subject.kind == "user" else "this API key"
    if refusal.limit == DAILY:
        detail = (
            f"This request deposits {money(refusal.requested)} {currency}; {whose} may deposit "
            f"{money(refusal.limit_amount)} {currency} in any 24 hours, "
            f"{money(refusal.remaining)} {currency} more now."
        )
    else:
        detail = (
            f"A deposit of {money(refusal.requested)} {currency} is over the largest {whose} may "
            f"make, {money(refusal.limit_amount)} {currency}."
        )
    headers = None
    if refusal.retry_after is not None:
        detail += f" It fits in {refusal.retry_after} seconds."
        headers = {"Retry-After": str(refusal.retry_after)}
    return ApiError(
        429 if refusal.retry_after is not None else 422,
        "deposit_limit_exceeded",
        detail + " Nothing of this request was stored.",
        headers=headers,
        extra={
            "limit": refusal.limit,
            "limit_scope": refusal.subject.kind,
            "currency": currency,
            "limit_amount": money(refusal.limit_amount),
            "requested": money(refusal.requested),
            "remaining": money(refusal.remaining),
        },
    )


def key_reused(row: Record) -> ApiError:
    return ApiError(
        422,
        "idempotency_key_reused",
        "This Idempotency-Key was already used with a different request.",
        headers={"Location": f"/api/v1/operations/{row.id}"},
    )


async def submit(
    services: Services,
    principal_id: UUID,
    submissions: Sequence[Submission],
    *,
    admin: bool = False,
) -> list[Outcome]:
    """Validate each submission, store the valid ones with their process's next group commit.

    Deposits count against the limits of `principal_id` and of the API key the request was
    authenticated with (auth.current_principal); a request over a limit raises ApiError
    deposit_limit_exceeded, nothing of it stored. `admin`: the admin's deposits, into any
    customer account and past every limit (api/controllers/admin.py).
    The partitions are rung after the commit, off the request path (api/ringer.py).
    """
    settings = services.settings
    caller = current_principal()
    api_key_id = caller.api_key_id if caller is not None and caller.id == principal_id else None
    limits = None if admin else default_limits(settings)
    referenced: set[UUID] = set()
    for s in submissions:
        referenced.add(s.request.account_id)
        if s.request.to_account_id is not None:
            referenced.add(s.request.to_account_id)

    outcomes: list[Outcome | NewOperation] = []
    accounts = await services.accounts.lookup(referenced)
    asset_ids = {s.request.asset_id for s in submissions if s.request.asset_id is not None}
    asset_currencies = await queries.asset_currencies(services.fast, asset_ids) if asset_ids else {}
    for s in submissions:
        prepared = prepare(
            principal_id,
            s,
            accounts,
            settings.partitions,
            asset_currencies,
            limits=limits,
            api_key_id=api_key_id,
            any_owner=admin,
        )
        outcomes.append(prepared)
    outcomes = await _hold_back(services, outcomes)
    news = [o for o in outcomes if isinstance(o, NewOperation)]
    if not news:
        return [o for o in outcomes if not isinstance(o, NewOperation)]
    try:
        stored = await services.committer(news)
    except psycopg.Error as exc:
        # The whole group was rolled back: nothing of this request was stored.
        raise ApiError(
            503,
            "database_unavailable",
            "The operation could not be stored; nothing was written. Retry with the same Idempotency-Key.",
            headers={"Retry-After": "1"},
        ) from exc
    if isinstance(stored, Stored) and stored.refused:
        refusal = next((stored.refused[n.id] for n in news if n.id in stored.refused), None)
        if refusal is not None:
            raise limit_exceeded(refusal)
    return [judge(o, stored) if isinstance(o, NewOperation) else o for o in outcomes]


async def _hold_back(
    services: Services, outcomes: list[Outcome | NewOperation]
) -> list[Outcome | NewOperation]:
    """Backpressure: a new operation for a partition whose backlog is full answers 503
    backlog_full. A key already stored is not new: a client retrying it (its first answer lost)
    learns its operation as any replay does, whatever the backlog; only this path reads it."""
    full = [
        o for o in outcomes if isinstance(o, NewOperation) and services.backlog.is_full(o.partition)
    ]
    if not full:
        return outcomes
    try:
        stored = await queries.operations_by_keys(
            services.fast, [(o.principal_id, o.idempotency_key) for o in full]
        )
    except psycopg.Error:
        stored = {}
    held = {id(o) for o in full}
    return [
        _held(o, stored) if id(o) in held and isinstance(o, NewOperation) else o for o in outcomes
    ]


def _held(new: NewOperation, stored: dict[OperationKey, Record]) -> Outcome:
    if (new.principal_id, new.idempotency_key) in stored:
        return judge(new, stored)
    return ApiError(
        503,
        "backlog_full",
        "Too many operations are waiting in this account's partition; retry shortly.",
        headers={"Retry-After": "1"},
    )


def judge(new: NewOperation, stored: dict[OperationKey, Record]) -> Outcome:
    """What a submission learns from its group: created (the stored row is its own), replayed
    (another submission stored the same request under this key), or a key reused for another body."""
    row = stored[(new.principal_id, new.idempotency_key)]
    if row.id == new.id:
        return Accepted(row, created=True)
    if row.fingerprint != new.fingerprint:
        return key_reused(row)
    return Accepted(row, created=False)
