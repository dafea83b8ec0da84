"""Opening an account with `initial_deposit` (`POST /api/v1/accounts`).

The account and its first deposit are one request: both are stored or neither, and a retry
with the same `Idempotency-Key` and body answers the same account without creating anything.
The deposit is an ordinary operation submitted through intake (api/intake.py `submit`), so the
deposit limits, the backlog and the queue apply to it and it shows in the account's operations;
the header's key is the deposit's idempotency key, in the user's key space (a key already used
by another operation answers 422 `idempotency_key_reused`).

Intake writes in its own group commit, so the account row cannot share the deposit's
transaction. Instead:

1. The account's id is a new UUIDv7 (time-ordered like every id: the account lists where a new
   account lists) whose last 48 bits, random otherwise, are a digest of (user, key, body)
   (`_opening_tail`). The id thus says which request opened the account.
2. A stored operation under the key answers at once: it is this request's deposit when it is a
   deposit of the same amount and currency into an account whose id carries this request's
   digest (200, `Idempotent-Replayed: true`, the account as it is now); anything else is 422
   `idempotency_key_reused`.
3. Otherwise the account is inserted (an account of the user carrying the digest, left by an
   attempt that died before its deposit was stored, is taken instead) and the deposit submitted.
   Stored: 201. Refused (a deposit limit, a full backlog, the database): the account this request
   inserted is deleted, if no operation names it, and the problem is answered: nothing stays. A
   twin request that stored the deposit first (into its own account) makes this one a replay of
   it, and this one's account is deleted.

The account's kind, currency and owner, which API processes cache (api/directory.py), are those
of the request its id digests; the process forgets a deleted account. The steps after the checks
run shielded from the request's cancellation, so a client that goes away cannot leave an account
behind a refused deposit. A process that dies between the insert and the deposit's commit leaves
an empty account, which the retry of the same request takes as its own (step 3).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from uuid import UUID

import structlog
from litestar import Request, Response
from litestar.status_codes import HTTP_201_CREATED

from api import intake
from api.auth import Principal
from api.errors import ApiError
from api.metrics import OPERATIONS_SUBMITTED
from api.operations import location
from api.presenters import account_out
from api.rawjson import field_text
from api.schemas import AccountCreate, AccountOut, OperationRequest
from api.state import Services, services_of
from domain.idempotency import parse_idempotency_key, request_fingerprint
from domain.metadata import canonical
from domain.money import check_amount_token, parse_amount
from worker.store import queries

log = structlog.get_logger(__name__)


def account_location(account_id: UUID) -> str:
    return f"/api/v1/accounts/{account_id}"


def _opening_tail(
    owner_id: UUID, key: str, data: AccountCreate, amount: int, metadata: dict[str, str] | None
) -> int:
    """The digest an account opened by this request carries in its id (queries.new_id_with_tail)."""
    fingerprint = request_fingerprint(
        {
            "name": data.name,
            "type": data.type,
            "currency": data.currency,
            "initial_deposit": amount,
            "metadata": metadata,
        }
    )
    digest = hashlib.sha256(f"{owner_id}\n{key}\n{fingerprint}".encode()).digest()
    return int.from_bytes(digest[: queries.ID_TAIL_BITS // 8], "big")


def _opening_amount(body: bytes, data: AccountCreate) -> int:
    """`initial_deposit` in minor units, held to the amount grammar as written."""
    assert data.initial_deposit is not None
    text = field_text(body, "initial_deposit")
    if text is not None:
        check_amount_token(text, "initial_deposit")
    return parse_amount(data.initial_deposit, data.currency, "initial_deposit")


def _is_opening(row: Any, tail: int, amount: int, currency: str) -> bool:
    """Whether a stored operation is the deposit of the opening whose digest is `tail`."""
    return (
        row.type == "deposit"
        and queries.id_tail(row.account_id) == tail
        and row.amount == amount
        and row.currency == currency
    )


def _opened(row: Any, operation_id: UUID, status: int) -> Response[AccountOut]:
    headers = {
        "Location": account_location(row.id),
        "Operation-Location": location(operation_id),
    }
    if status == 200:
        headers["Idempotent-Replayed"] = "true"
    return Response(account_out(row), status_code=status, headers=headers)


async def _replay(services: Services, owner_id: UUID, deposit: Any) -> Response[AccountOut]:
    """The answer to a retry of an opening whose deposit is stored: the account as it is now."""
    async with services.reads.connect() as conn:
        row = await queries.account_for_owner(conn, deposit.account_id, owner_id)
    if row is None:  # cannot be: the deposit names it and accounts that are named stay
        raise intake.key_reused(deposit)
    log.info("account_opening_replayed", account_id=str(row.id))
    return _opened(row, deposit.id, 200)


async def _stored_under(services: Services, owner_id: UUID, key: str) -> Any:
    stored = await queries.operations_by_keys(services.fast, [(owner_id, key)])
    return stored.get((owner_id, key))


async def _discard(services: Services, owner_id: UUID, account_id: UUID) -> None:
    """Delete an account this request inserted, its deposit refused (if no operation names it:
    a twin's deposit may have been stored into it meanwhile)."""
    try:
        async with services.engine.begin() as conn:
            deleted = await queries.delete_unused_account(conn, account_id, owner_id)
    except Exception as exc:  # the refusal is the answer; the account stays empty and unshown
        log.warning("account_discard_failed", account_id=str(account_id), error=str(exc))
        return
    if deleted:
        services.accounts.forget([account_id])


async def _open(
    services: Services,
    owner_id: UUID,
    key: str,
    data: AccountCreate,
    metadata: dict[str, str] | None,
    amount: int,
    tail: int,
) -> Response[AccountOut]:
    """Steps 3 of the module's docstring: the account, then its deposit through intake."""
    async with services.reads.connect() as conn:
        left = await queries.accounts_with_id_tail(conn, owner_id, tail)
    orphan = next((r for r in left if (r.kind, r.currency) == (data.type, data.currency)), None)
    inserted = False
    if orphan is not None:
        account_id = orphan.id
    else:
        account_id = queries.new_id_with_tail(tail)
        async with services.engine.begin() as conn:
            inserted = await queries.insert_account(
                conn,
                account_id=account_id,
                owner_id=owner_id,
                name=data.name,
                kind=data.type,
                currency=data.currency,
                metadata=metadata,
            )
    deposit = OperationRequest(type="deposit", account_id=account_id, amount=data.initial_deposit)
    try:
        [outcome] = await intake.submit(services, owner_id, [intake.Submission(key, deposit)])
    except Exception:
        # Refused whole (a deposit limit), or the database failed: the deposit was not stored
        # (and if it were, the delete would leave the account it names).
        if inserted:
            await _discard(services, owner_id, account_id)
        raise
    if isinstance(outcome, ApiError):
        if inserted:
            await _discard(services, owner_id, account_id)
        if outcome.code == "idempotency_key_reused":
            # A twin request stored its deposit under the key first, into its own account.
            stored = await _stored_under(services, owner_id, key)
            if stored is not None and _is_opening(stored, tail, amount, data.currency):
                return await _replay(services, owner_id, stored)
        raise outcome
    row = outcome.row
    if not outcome.created:  # a twin's deposit into this very account
        return await _replay(services, owner_id, row)
    OPERATIONS_SUBMITTED.labels(row.type).inc()
    log.info(
        "account_opened",
        account_id=str(account_id),
        operation_id=str(row.id),
        initial_deposit=amount,
        currency=data.currency,
    )
    async with services.reads.connect() as conn:
        account = await queries.account_for_owner(conn, account_id, owner_id)
    assert account is not None  # its deposit names it
    return _opened(account, row.id, HTTP_201_CREATED)


async def open_with_deposit(
    request: Request[Principal, Any, Any], data: AccountCreate, idempotency_key: str | None
) -> Response[AccountOut]:
    """POST /accounts with `initial_deposit` (the module's docstring)."""
    # Required here as on every submit (400 when missing): it names the deposit.
    key = parse_idempotency_key(idempotency_key)
    services = services_of(request.app)
    owner_id = request.user.id
    amount = _opening_amount(await request.body(), data)
    metadata = canonical(data.metadata)
    tail = _opening_tail(owner_id, key, data, amount, metadata)
    stored = await _stored_under(services, owner_id, key)
    if stored is not None:
        if _is_opening(stored, tail, amount, data.currency):
            return await _replay(services, owner_id, stored)
        raise intake.key_reused(stored)
    # From the insert on, the request's cancellation must not stop a refused deposit's cleanup.
    return await asyncio.shield(_open(services, owner_id, key, data, metadata, amount, tail))
