"""Accounts: open (optionally with a first deposit), list, read with balances (now or as of an
instant), change (name, metadata), close, and the entry history.
Opening with a first deposit is api/opening.py.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID

import structlog
from litestar import Controller, Request, Response, get, patch, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from api import opening
from api.auth import Principal
from api.errors import ApiError
from api.operations import IdempotencyKey, Prefer, control_request, submit_one
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import account_out, entry_out
from api.schemas import (
    AccountChange,
    AccountCreate,
    AccountOut,
    AccountPage,
    EntryPage,
    OperationOut,
)
from api.state import services_of
from domain.metadata import canonical
from domain.money import exponent
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
            return await opening.open_with_deposit(request, data, idempotency_key)
        async with services_of(request.app).engine.begin() as conn:
            row = await queries.create_account(
                conn, request.user.id, data.name, data.type, data.currency, canonical(data.metadata)
            )
        return Response(
            account_out(row),
            status_code=HTTP_201_CREATED,
            headers={"Location": opening.account_location(row.id)},
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
