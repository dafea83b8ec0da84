"""Accounts: create, list, read with balances, and the entry history."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from api.auth import Principal
from api.errors import ApiError
from api.pagination import MAX_PAGE, decode_int_cursor, decode_uuid_cursor, encode_cursor
from api.schemas import AccountCreate, AccountOut, AccountPage, EntryOut, EntryPage
from api.state import services_of
from domain.money import exponent, format_amount
from worker.store import queries

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="Page size, 1-500.")]
Cursor = Annotated[str | None, Parameter(description="`next_cursor` of the previous page.")]


def account_out(row: Any) -> AccountOut:
    return AccountOut(
        id=row.id,
        name=row.name,
        type=row.kind,
        currency=row.currency,
        balance=format_amount(row.balance, row.currency),
        available_balance=format_amount(row.balance - row.pending_debits, row.currency),
        overdraft_limit=format_amount(row.overdraft_limit, row.currency),
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


def not_found(what: str = "account") -> ApiError:
    return ApiError(404, f"{what}_not_found", f"No such {what}.")


class AccountController(Controller):
    path = "/api/v1/accounts"
    tags = ["accounts"]

    @post("/", operation_id="createAccount", status_code=HTTP_201_CREATED)
    async def create_account(
        self, request: Request[Principal, Any, Any], data: AccountCreate
    ) -> AccountOut:
        """Open a checking or savings account in one currency, with a zero balance."""
        exponent(data.currency)  # unknown currencies are a 422 before anything is stored
        async with services_of(request.app).engine.begin() as conn:
            row = await queries.create_account(
                conn, request.user.id, data.name, data.type, data.currency
            )
        return account_out(row)

    @get("/", operation_id="listAccounts")
    async def list_accounts(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> AccountPage:
        """Your accounts, oldest first, in cursor pages."""
        after = decode_uuid_cursor("account", cursor)
        async with services_of(request.app).reads.connect() as conn:
            rows = await queries.accounts_for_owner(conn, request.user.id, after, limit + 1)
        items = [account_out(r) for r in rows[:limit]]
        next_cursor = encode_cursor("account", items[-1].id) if len(rows) > limit else None
        return AccountPage(items=items, next_cursor=next_cursor)

    @get("/{account_id:uuid}", operation_id="getAccount")
    async def get_account(
        self, request: Request[Principal, Any, Any], account_id: UUID
    ) -> AccountOut:
        """One of your accounts: `balance` is applied money, `available_balance` also subtracts pending debits."""
        row = await services_of(request.app).fast.one(
            queries.FAST_ACCOUNT_FOR_OWNER, {"account_id": account_id, "owner_id": request.user.id}
        )
        if row is None:
            raise not_found()
        return account_out(row)

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
    ) -> EntryPage:
        """The account's ledger entries, newest first, with each entry's balance after it."""
        before = decode_int_cursor("entry", cursor)
        for name, value in (("from", since), ("to", until)):
            if value is not None and value.tzinfo is None:
                raise ApiError(
                    422, "validation_error", f"{name} needs a time zone offset", field=name
                )
        filters = queries.EntryFilter(category=category, since=since, until=until)
        async with services_of(request.app).reads.connect() as conn:
            account = await queries.account_for_owner(conn, account_id, request.user.id)
            if account is None:
                raise not_found()
            rows = await queries.entries_for_account(conn, account_id, before, limit + 1, filters)
        items = [
            EntryOut(
                id=str(r.id),
                operation_id=r.operation_id,
                operation_type=r.type,
                amount=format_amount(r.amount, r.currency),
                balance_after=format_amount(r.balance_after, r.currency),
                currency=r.currency,
                category=r.category,
                description=r.description,
                created_at=r.created_at,
            )
            for r in rows[:limit]
        ]
        next_cursor = encode_cursor("entry", rows[limit - 1].id) if len(rows) > limit else None
        return EntryPage(items=items, next_cursor=next_cursor)
