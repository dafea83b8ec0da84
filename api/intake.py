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

import msgspec
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
from domain.metadata import canonical
from domain.model import CUSTOMER_KINDS, REVERSIBLE_TYPES, OperationStatus, OperationType
from domain.money import check_amount_token, format_amount, parse_amount
from domain.returns import parse_scaled
from domain.reversals import Original, debited_by_reversal
from worker.routing import partition_for
from worker.store import holds, queries
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
# They act on the account of what they refer to (a hold, an operation), not on an account_id.
REFERRING = ("capture", "void", "reversal")
# Account controls move no money (their own routes submit them).
CONTROLS = ("freeze", "unfreeze", "close")
# An amount is optional (capture: all of the hold; reversal: all that is left) or not taken.
AMOUNT_OPTIONAL = ("redemption", "capture", "reversal")
NO_AMOUNT = ("void", *CONTROLS)


def check_shape(data: OperationRequest) -> ApiError | None:
    """Rules that need no database: which fields each operation type takes."""
    t = data.type
    investment = t in INVESTMENTS
    referring = t in REFERRING
    problems: list[tuple[bool, str, str, str]] = [
        (not referring and data.account_id is None,
         "validation_error", f"account_id is required for a {t}", "account_id"),
        (referring and data.account_id is not None,
         "validation_error", f"a {t} acts on the account of what it refers to: no account_id",
         "account_id"),
        (t == "transfer" and data.to_account_id is None,
         "validation_error", "to_account_id is required for a transfer", "to_account_id"),
        (t not in ("transfer", "hold") and data.to_account_id is not None,
         "validation_error", f"to_account_id is not allowed for a {t}", "to_account_id"),
        (data.to_account_id is not None and data.to_account_id == data.account_id,
         "same_account", f"a {t} needs two different accounts", "to_account_id"),
        (investment and data.asset_id is None,
         "validation_error", f"asset_id is required for an {t}", "asset_id"),
        (not investment and data.asset_id is not None,
         "validation_error", f"asset_id is not allowed for a {t}", "asset_id"),
        (data.quantity is not None and t != "redemption",
         "validation_error", "quantity is only for a redemption", "quantity"),
        (t == "redemption" and (data.amount is None) == (data.quantity is None),
         "validation_error", "a redemption takes exactly one of amount or quantity", "amount"),
        (data.amount is None and t not in AMOUNT_OPTIONAL and t not in NO_AMOUNT,
         "validation_error", "amount is required", "amount"),
        (data.amount is not None and t in NO_AMOUNT,
         "validation_error", f"a {t} takes no amount", "amount"),
        (t in ("capture", "void") and data.hold_id is None,
         "validation_error", f"hold_id is required for a {t}", "hold_id"),
        (t not in ("capture", "void") and data.hold_id is not None,
         "validation_error", f"hold_id is not allowed for a {t}", "hold_id"),
        (t == "reversal" and data.operation_id is None,
         "validation_error", "operation_id (the operation to reverse) is required", "operation_id"),
        (t != "reversal" and data.operation_id is not None,
         "validation_error", f"operation_id is not allowed for a {t}", "operation_id"),
        (t != "hold" and data.expires_in is not None,
         "validation_error", "expires_in is only for a hold", "expires_in"),
    ]  # fmt: skip
    for failed, code, detail, field in problems:
        if failed:
            return _invalid(code, detail, field)
    return None


@dataclass(frozen=True)
class Target:
    """Where an operation acts once its references are resolved: `account_id` (its partition),
    `to_account_id`, the amount a capture or void takes when none is given (0: resolved at apply),
    and `debited`, the account whose owner may submit it when that is not `account_id` (a
    reversal's; None with `admin_only`: it takes money from the world, only the admin may)."""

    account_id: UUID
    to_account_id: UUID | None
    default_amount: int = 0
    debited: UUID | None = None
    admin_only: bool = False


def resolve(data: OperationRequest, refs: Mapping[UUID, Record]) -> Target | ApiError:
    """The accounts a submission acts on: its own, or those of the hold or operation it names.
    Someone else's hold or operation reads as missing (checked with the account's owner later)."""
    if data.type in ("capture", "void"):
        hold = refs.get(data.hold_id) if data.hold_id is not None else None
        if hold is None or hold.type != "hold":
            return ApiError(404, "hold_not_found", "No such hold.", field="hold_id")
        return Target(
            hold.account_id,
            hold.to_account_id if data.type == "capture" else None,
            default_amount=hold.amount,
        )
    if data.type == "reversal":
        row = refs.get(data.operation_id) if data.operation_id is not None else None
        if row is None:
            return ApiError(404, "operation_not_found", "No such operation.", field="operation_id")
        original = _original(row)
        if original.type not in REVERSIBLE_TYPES:
            return _invalid("not_reversible", f"a {row.type} cannot be reversed", "operation_id")
        if not original.reversible:
            why = f"only a succeeded operation can be reversed; this one is {row.status}"
            return _invalid("not_reversible", why, "operation_id")
        debited = debited_by_reversal(original)
        return Target(
            row.account_id,
            row.to_account_id,
            debited=debited,
            admin_only=debited is None,
        )
    assert data.account_id is not None  # check_shape
    return Target(data.account_id, data.to_account_id)


def _original(row: Record) -> Original:
    return Original(
        id=row.id,
        type=OperationType(row.type),
        status=OperationStatus(row.status),
        account_id=row.account_id,
        to_account_id=row.to_account_id,
        amount=row.amount,
        reversed=row.reversed_amount,
    )


@dataclass(frozen=True)
class Context:
    """What a group of submissions is validated against, read once for all of them."""

    accounts: Mapping[UUID, Record]
    asset_currencies: Mapping[UUID, str]
    refs: Mapping[UUID, Record]
    settings: Settings


def prepare(
    principal_id: UUID,
    submission: Submission,
    context: Context,
    *,
    limits: Limits | None = None,
    api_key_id: UUID | None = None,
    admin: bool = False,
) -> NewOperation | ApiError:
    """The operation to store for a submission, or why not. `limits` (deposits: the defaults where
    the admin set none; None: not limited) and `api_key_id` travel with it to the group commit.
    `admin`: the admin acting on any customer account (its deposits, account controls,
    reversals)."""
    data = submission.request
    if (error := check_shape(data)) is not None:
        return error
    target = resolve(data, context.refs)
    if isinstance(target, ApiError):
        return target
    accounts = context.accounts
    account = accounts.get(target.account_id)
    if account is not None and account.kind not in CUSTOMER_KINDS:
        account = None  # system accounts take no operation from outside
    # Whose owner may submit it: the account it acts on, or the one a reversal takes money from.
    owner_of = accounts.get(target.debited) if target.debited is not None else account
    allowed = admin or (
        not target.admin_only and owner_of is not None and owner_of.owner_id == principal_id
    )
    if account is None or not allowed:
        # Someone else's account (or hold, or operation) is indistinguishable from a missing one.
        return _missing(data)
    try:
        for name, text in submission.texts.items():
            check_amount_token(text, name)
        amount = (
            parse_amount(data.amount, account.currency)
            if data.amount is not None
            else target.default_amount
        )
        quantity = parse_scaled(data.quantity, "quantity") if data.quantity is not None else None
    except DomainError as exc:
        return from_domain_error(exc)
    if (error := _check_references(data, amount, context.refs)) is not None:
        return error
    if data.asset_id is not None:
        asset_currency = context.asset_currencies.get(data.asset_id)
        if asset_currency is None:
            return _invalid("asset_not_found", "asset_id names no asset", "asset_id")
        if asset_currency != account.currency:
            return _invalid(
                "currency_mismatch",
                f"the asset trades in {asset_currency}, the account holds {account.currency}",
                "asset_id",
            )
    if target.to_account_id is not None:
        payee = accounts.get(target.to_account_id)
        if payee is None or payee.kind not in CUSTOMER_KINDS:
            return _invalid("account_not_found", "to_account_id names no account", "to_account_id")
        if payee.currency != account.currency:
            return _invalid(
                "currency_mismatch",
                f"to_account_id holds {payee.currency}, the debited account {account.currency}",
                "to_account_id",
            )
    payee = accounts.get(target.to_account_id) if target.to_account_id is not None else None
    for acting in (account, payee):
        if acting is not None and acting.closed_at is not None:
            return ApiError(
                409, "account_closed", f"Account {acting.id} is closed.", field="account_id"
            )
    expires_in = None
    if data.type == "hold":
        expires_in = data.expires_in or context.settings.hold_default_expiry
        if expires_in > context.settings.hold_max_expiry:
            return _invalid(
                "validation_error",
                f"a hold lives at most {context.settings.hold_max_expiry} seconds",
                "expires_in",
            )
    metadata = canonical(data.metadata)
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
            "hold_id": data.hold_id,
            "expires_in": expires_in,
            "operation_id": data.operation_id,
            "metadata": metadata,
        }
    )
    return NewOperation(
        principal_id=principal_id,
        idempotency_key=submission.idempotency_key,
        fingerprint=fingerprint,
        type=data.type,
        account_id=target.account_id,
        to_account_id=target.to_account_id,
        amount=amount,
        currency=account.currency,
        partition=partition_for(target.account_id, context.settings.partitions),
        category=data.category,
        description=data.description,
        asset_id=data.asset_id,
        quantity=quantity,
        hold_id=data.hold_id,
        expires_in=expires_in,
        reversal_of=data.operation_id,
        metadata=msgspec.json.encode(metadata).decode() if metadata is not None else None,
        limits=limits,
        api_key_id=api_key_id,
    )


def _missing(data: OperationRequest) -> ApiError:
    if data.hold_id is not None:
        return ApiError(404, "hold_not_found", "No such hold.", field="hold_id")
    if data.operation_id is not None:
        return ApiError(404, "operation_not_found", "No such operation.", field="operation_id")
    return ApiError(404, "account_not_found", "No such account.", field="account_id")


def _check_references(
    data: OperationRequest, amount: int, refs: Mapping[UUID, Record]
) -> ApiError | None:
    """What intake can already tell of a capture or reversal amount (the apply checks again, in
    order: a hold may close, other reversals may come first)."""
    if data.type == "capture" and data.hold_id is not None:
        hold = refs[data.hold_id]
        if not 0 < amount <= hold.amount:
            return _invalid(
                "invalid_amount",
                f"a capture takes at most the hold's {format_amount(hold.amount, hold.currency)}",
                "amount",
            )
    if data.type == "reversal" and data.operation_id is not None and data.amount is not None:
        row = refs[data.operation_id]
        left = row.amount - row.reversed_amount
        if amount > left:
            return _invalid(
                "reversal_exceeds_original",
                f"{format_amount(left, row.currency)} {row.currency} of the operation is left to "
                "reverse",
                "amount",
            )
    return None


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
    ref_ids = {
        i for s in submissions for i in (s.request.hold_id, s.request.operation_id) if i is not None
    }
    refs = await holds.referenced_operations(services.fast, ref_ids) if ref_ids else {}
    referenced: set[UUID] = set()
    for s in submissions:
        target = resolve(s.request, refs) if check_shape(s.request) is None else None
        if isinstance(target, Target):
            referenced.update(i for i in (target.account_id, target.to_account_id) if i is not None)

    outcomes: list[Outcome | NewOperation] = []
    asset_ids = {s.request.asset_id for s in submissions if s.request.asset_id is not None}
    context = Context(
        accounts=await services.accounts.lookup(referenced),
        asset_currencies=await queries.asset_currencies(services.fast, asset_ids)
        if asset_ids
        else {},
        refs=refs,
        settings=settings,
    )
    for s in submissions:
        prepared = prepare(
            principal_id,
            s,
            context,
            limits=limits,
            api_key_id=api_key_id,
            admin=admin,
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
