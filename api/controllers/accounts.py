"""Accounts: open (optionally with a first deposit), list, read with balances (now or as of an
instant), change (name, metadata), close, and the entry history.

Opening with `initial_deposit`
------------------------------
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
import datetime as dt
import hashlib
from collections.abc import Sequence
from typing import Annotated, Any, cast
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, Response, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from api import intake
from api.auth import Principal
from api.errors import ApiError
from api.metrics import OPERATIONS_SUBMITTED
from api.operations import IdempotencyKey, Prefer, location, submit_one
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import account_out, entry_out
from api.schemas import (
    AccountChange,
    AccountCreate,
    AccountOut,
    AccountPage,
    EntryPage,
    OperationOut,
    OperationRequest,
    SubmittedType,
)
from api.state import Services, services_of
from domain.errors import IDEMPOTENCY_KEY_MISSING
from domain.idempotency import parse_idempotency_key, request_fingerprint
from domain.metadata import canonical
from domain.money import check_amount_token, exponent, parse_amount
from worker.store import queries

log = structlog.get_logger(__name__)

ACCOUNTS = Keyset.by_id("account")
ENTRIES = Keyset.by_number("entry", "id")

AsOf = Annotated[
    dt.datetime | None,
    Parameter(
        description="An instant (RFC 3339 with a time zone offset), not in the future nor "
        "before the account was opened: balances (or entries) as they stood then."
    ),
]


def account_not_found() -> ApiError:
    return ApiError(404, "account_not_found", "No such account.")


def account_closed() -> ApiError:
    return ApiError(409, "account_closed", "The account is closed: it takes no change.")


def account_location(account_id: UUID) -> str:
    return f"/api/v1/accounts/{account_id}"


def control_request(kind: str, account_id: UUID) -> OperationRequest:
    """An account control (freeze, unfreeze, close) for api/operations.py `submit_one`: not a
    type clients submit in a body (api/schemas.py `SubmittedType`), only through its route."""
    return OperationRequest(type=cast(SubmittedType, kind), account_id=account_id)


def raw_decimal(body: bytes, name: str) -> bytes | None:
    """A decimal field's JSON text as the client wrote it (api/rawjson.py says why it matters)."""
    try:
        raw = msgspec.json.decode(body, type=dict[str, msgspec.Raw]).get(name)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return bytes(raw) if raw is not None else None


# ---------------------------------------------------------------- as of an instant


def check_as_of(as_of: dt.datetime, created_at: dt.datetime, now: dt.datetime) -> None:
    """`as_of` (with an offset: the caller checked) must lie between the account's opening and
    the database's now."""
    if as_of > now:
        raise ApiError(
            422,
            "as_of_in_future",
            "as_of is in the future: nothing is known of it yet.",
            field="as_of",
        )
    if as_of < created_at:
        raise ApiError(
            422,
            "as_of_before_account",
            f"as_of is before the account was opened ({created_at.isoformat()}).",
            field="as_of",
        )


def require_offset(name: str, value: dt.datetime | None) -> None:
    if value is not None and value.tzinfo is None:
        raise ApiError(422, "validation_error", f"{name} needs a time zone offset", field=name)


# ---------------------------------------------------------------- opening with a deposit


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
    text = raw_decimal(body, "initial_deposit")
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
    if idempotency_key is None or not idempotency_key.strip():
        raise ApiError(
            422,
            IDEMPOTENCY_KEY_MISSING,
            "An account opened with initial_deposit needs an Idempotency-Key header (it names "
            "the deposit, so a retry opens nothing twice).",
        )
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


class AccountController(Controller):
    path = "/api/v1/accounts"
    tags = ["accounts"]

    @post("/", operation_id="createAccount", status_code=HTTP_201_CREATED)
    async def create_account(
        self,
        request: Request[Principal, Any, Any],
        data: AccountCreate,
        idempotency_key: IdempotencyKey = None,
    ) -> Response[AccountOut]:
        """Open a checking or savings account in one currency, with a zero balance, or with
        `initial_deposit`: the account and that deposit are stored together or not at all.

        With `initial_deposit` the `Idempotency-Key` header is required and names the deposit:
        201 with the account, its `Location` and the deposit's `Operation-Location` (poll it:
        the deposit applies asynchronously, like any); the same key and body again answer 200
        with the same account and `Idempotent-Replayed: true`; the same key with another body,
        422 `idempotency_key_reused`. A refused deposit (`invalid_amount`,
        `deposit_limit_exceeded`, `backlog_full`) leaves no account. Without `initial_deposit`
        the key is not used."""
        exponent(data.currency)  # unknown currencies are a 422 before anything is stored
        if data.initial_deposit is not None:
            return await open_with_deposit(request, data, idempotency_key)
        async with services_of(request.app).engine.begin() as conn:
            row = await queries.create_account(
                conn, request.user.id, data.name, data.type, data.currency, canonical(data.metadata)
            )
        return Response(
            account_out(row),
            status_code=HTTP_201_CREATED,
            headers={"Location": account_location(row.id)},
        )

    @get("/", operation_id="listAccounts")
    async def list_accounts(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> AccountPage:
        """Your accounts, oldest first, in cursor pages."""
        fetch = reads(services_of(request.app).reads, queries.accounts_for_owner, request.user.id)
        return await page(ACCOUNTS, cursor, limit, fetch, account_out)

    @get("/{account_id:uuid}", operation_id="getAccount")
    async def get_account(
        self, request: Request[Principal, Any, Any], account_id: UUID, as_of: AsOf = None
    ) -> AccountOut:
        """One of your accounts: `balance` is applied money, `held_balance` what open holds
        reserve, `available_balance` the balance less holds and pending debits.

        `as_of`: the balances as they stood at that instant (`balance` from the entries,
        `held_balance` from the holds then open; nothing was pending then, so
        `available_balance` is their difference); the other fields are as they are now."""
        services = services_of(request.app)
        if as_of is None:
            row = await queries.fast_account_for_owner(services.fast, account_id, request.user.id)
            if row is None:
                raise account_not_found()
            return account_out(row)
        require_offset("as_of", as_of)
        async with services.reads.connect() as conn:
            row = await queries.account_as_of(conn, account_id, request.user.id, as_of)
        if row is None:
            raise account_not_found()
        check_as_of(as_of, row.created_at, row.now)
        return account_out(row, as_of=as_of)

    @patch("/{account_id:uuid}", operation_id="updateAccount")
    async def update_account(
        self, request: Request[Principal, Any, Any], account_id: UUID, data: AccountChange
    ) -> AccountOut:
        """Rename one of your accounts and/or replace its metadata (`{}` clears it); absent
        fields stay. A closed account takes no change (409 `account_closed`)."""
        changes: dict[str, Any] = {}
        if data.name is not None:
            changes["name"] = data.name
        if data.metadata is not None:
            changes["metadata"] = canonical(data.metadata)
        try:
            async with services_of(request.app).engine.begin() as conn:
                row = await queries.change_account(conn, account_id, request.user.id, changes)
        except queries.AccountClosed:
            raise account_closed() from None
        if row is None:
            raise account_not_found()
        return account_out(row)

    @post("/{account_id:uuid}/close", operation_id="closeAccount", status_code=202)
    async def close_account(
        self,
        request: Request[Principal, Any, Any],
        account_id: UUID,
        idempotency_key: IdempotencyKey = None,
        prefer: Prefer = None,
    ) -> Response[OperationOut]:
        """Close one of your accounts: a `close` operation, applied in the account's order
        (answered like `POST /operations`: 202, `Location`, `Prefer: wait=N`). It fails
        `account_not_empty` unless the balance is zero and no hold is open; once it succeeded
        the account takes no operation (409 `account_closed`)."""
        return await submit_one(
            request, control_request("close", account_id), idempotency_key, prefer
        )

    @get("/{account_id:uuid}/entries", operation_id="listEntries")
    async def list_entries(
        self,
        request: Request[Principal, Any, Any],
        account_id: UUID,
        limit: Limit = 100,
        cursor: Cursor = None,
        category: Annotated[str | None, Parameter(max_length=64)] = None,
        since: Annotated[
            dt.datetime | None, Parameter(query="from", description="Inclusive, ISO 8601.")
        ] = None,
        until: Annotated[
            dt.datetime | None, Parameter(query="to", description="Exclusive, ISO 8601.")
        ] = None,
        as_of: AsOf = None,
    ) -> EntryPage:
        """The account's ledger entries, newest first, with each entry's balance after it;
        `as_of`: only those dated up to that instant (the history as it stood then)."""
        services = services_of(request.app)
        owner_id = request.user.id

        async def fetch(before: int | None, n: int) -> Sequence[queries.Record]:
            # After the cursor (a bad one is refused first, as it always was).
            for name, value in (("from", since), ("to", until), ("as_of", as_of)):
                require_offset(name, value)
            filters = queries.EntryFilter(category=category, since=since, until=until, as_of=as_of)
            async with services.reads.connect() as conn:
                clock = await queries.account_clock(conn, account_id, owner_id)
                if clock is None:
                    raise account_not_found()
                if as_of is not None:
                    check_as_of(as_of, clock.created_at, clock.now)
                return await queries.entries_for_account(conn, account_id, before, n, filters)

        return await page(ENTRIES, cursor, limit, fetch, entry_out)
