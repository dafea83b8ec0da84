"""Accounts: create, list, read with balances, and the entry history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Annotated, Any
from uuid import UUID

from litestar import Controller, Request, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_201_CREATED

from api.auth import Principal
from api.errors import ApiError
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import account_out, entry_out
from api.schemas import AccountCreate, AccountOut, AccountPage, EntryPage
from api.state import services_of
from domain.money import exponent
from worker.store import queries

ACCOUNTS = Keyset.by_id("account")
ENTRIES = Keyset.by_number("entry", "id")


def account_not_found() -> ApiError:
    return ApiError(404, "account_not_found", "No such account.")


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
        fetch = reads(services_of(request.app).reads, queries.accounts_for_owner, request.user.id)
        return await page(ACCOUNTS, cursor, limit, fetch, account_out)

    @get("/{account_id:uuid}", operation_id="getAccount")
    async def get_account(
        self, request: Request[Principal, Any, Any], account_id: UUID
    ) -> AccountOut:
        """One of your accounts: `balance` is applied money, `available_balance` also subtracts pending debits."""
        row = await queries.fast_account_for_owner(
            services_of(request.app).fast, account_id, request.user.id
        )
        if row is None:
            raise account_not_found()
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
        services = services_of(request.app)
        owner_id = request.user.id

        async def fetch(before: int | None, n: int) -> Sequence[queries.Record]:
            # After the cursor (a bad one is refused first, as it always was).
            for name, value in (("from", since), ("to", until)):
                if value is not None and value.tzinfo is None:
                    raise ApiError(
                        422, "validation_error", f"{name} needs a time zone offset", field=name
                    )
            filters = queries.EntryFilter(category=category, since=since, until=until)
            async with services.reads.connect() as conn:
                if await queries.account_for_owner(conn, account_id, owner_id) is None:
                    raise account_not_found()
                return await queries.entries_for_account(conn, account_id, before, n, filters)

        return await page(ENTRIES, cursor, limit, fetch, entry_out)
