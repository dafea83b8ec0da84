"""Account statements: GET /api/v1/accounts/{id}/statement?from=&to=&format=csv|json.

A statement is the opening balance (as of `from`), every entry of the period oldest first, and
the closing balance (as of `to`). It is streamed: the bounds (period, balances, the first and
last entry ids) are read in one statement (worker/store/statements.py says why they agree with
the entries read later), then the entries in keyset chunks of `statements.CHUNK` rows, each read
on a connection taken from the read pool for that one query and given back before its rows are
formatted and sent. So a year of a busy account costs the process one chunk of rows and one
chunk of output at a time, however slowly the client reads (the server's `send` waits for the
socket to drain), and no connection waits on the client.

Errors (404 `account_not_found`, 422 `validation_error`) are answered before anything is sent.
A failure while the body is streamed (the database going away) can only cut the body short: a
CSV then lacks its closing_balance row, a JSON document its end.

CSV layout, quoting and the spreadsheet formula guard: domain/statements.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
import structlog
from litestar import Controller, Request, get
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Schema,
)
from litestar.openapi.spec.enums import OpenAPIType
from litestar.params import Parameter
from litestar.response import Stream
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import Principal
from api.errors import ApiError
from api.presenters import entry_out
from api.schemas import EntryOut
from api.state import services_of
from domain import statements as statement_csv
from domain.money import format_amount
from worker.store import statements

log = structlog.get_logger(__name__)

CSV_MEDIA_TYPE = "text/csv"  # Litestar adds "; charset=utf-8" to text/* types
JSON_MEDIA_TYPE = "application/json"

StatementFormat = Literal["csv", "json"]
# Entries read per query, and formatted and sent at a time.
CHUNK = statements.CHUNK
SLICE = 500


class Statement(msgspec.Struct, kw_only=True):
    """The JSON statement (streamed; documented here for OpenAPI)."""

    account_id: UUID
    currency: str
    from_: dt.datetime = msgspec.field(name="from")
    to: dt.datetime
    opening_balance: str
    closing_balance: str
    entries: list[EntryOut]


CSV_DESCRIPTION = (
    "RFC 4180 CSV (CRLF line ends), one table: a header row `"
    + ",".join(statement_csv.CSV_COLUMNS)
    + "`, an `opening_balance` row (at `from`), one `entry` row per ledger entry oldest first, "
    "and a `closing_balance` row (at `to`). Amounts are decimal strings in the account's "
    "currency, times RFC 3339 in UTC. A description or category starting with = + - @ (or a "
    "tab or CR) is written with a leading single quote, so a spreadsheet does not run it as a "
    "formula; the JSON statement has the text as stored."
)


@dataclass
class StatementOperation(Operation):
    """The operation as generated, its 200 answer given the CSV form and its headers too."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if not isinstance(ok, OpenAPIResponse):
            return
        ok.content = {
            **(ok.content or {}),
            CSV_MEDIA_TYPE: OpenAPIMediaType(
                schema=Schema(type=OpenAPIType.STRING, description=CSV_DESCRIPTION)
            ),
        }
        ok.headers = {
            **(ok.headers or {}),
            "Content-Disposition": OpenAPIHeader(
                schema=Schema(type=OpenAPIType.STRING),
                description='CSV only: `attachment; filename="statement-<account id>-<from>-'
                '<to>.csv"`, the instants in UTC as 20250131T235959Z.',
            ),
        }


def account_not_found() -> ApiError:
    return ApiError(404, "account_not_found", "No such account.")


def invalid(field: str, detail: str) -> ApiError:
    return ApiError(422, "validation_error", detail, field=field)


def check_period(since: dt.datetime | None, until: dt.datetime | None) -> None:
    for name, value in (("from", since), ("to", until)):
        if value is None:
            continue
        if value.tzinfo is None:
            raise invalid(name, f"{name} needs a time zone offset")
        try:  # 0001-01-01T00:00:00+01:00 is no instant PostgreSQL (or Python) can answer with
            value.astimezone(dt.UTC)
        except OverflowError:
            raise invalid(name, f"{name} is out of range") from None
    if since is not None and until is not None and since >= until:
        raise invalid("from", "from must be before to")


async def entry_chunks(
    reads: AsyncEngine, account_id: UUID, bounds: Any
) -> AsyncIterator[Sequence[statements.Record]]:
    """The statement's entries, oldest first, a chunk per query; the connection is back in the
    pool before the chunk is handed on."""
    after = bounds.after_id
    while after < bounds.last_id:
        async with reads.connect() as conn:
            rows = await statements.statement_entries(
                conn, account_id, after, bounds.last_id, bounds.since, bounds.until, CHUNK
            )
        if not rows:
            return
        after = rows[-1].id
        full = len(rows) == CHUNK
        yield rows
        del rows
        if not full:
            return


def csv_lines(rows: Sequence[statements.Record], currency: str) -> bytes:
    return "".join(
        [
            statement_csv.entry_line(
                entry_id=r.id,
                created_at=r.created_at,
                operation_id=r.operation_id,
                operation_type=r.type,
                category=r.category,
                description=r.description,
                amount=r.amount,
                balance_after=r.balance_after,
                currency=currency,
            )
            for r in rows
        ]
    ).encode()


async def slices(
    reads: AsyncEngine, account_id: UUID, bounds: Any
) -> AsyncIterator[Sequence[statements.Record]]:
    """The entries in slices of SLICE rows, letting the event loop run between them: formatting
    a whole chunk at once would keep the process's other requests waiting about 0.1 s."""
    async for rows in entry_chunks(reads, account_id, bounds):
        for start in range(0, len(rows), SLICE):
            yield rows[start : start + SLICE]
            await asyncio.sleep(0)


async def csv_body(reads: AsyncEngine, account_id: UUID, bounds: Any) -> AsyncIterator[bytes]:
    currency = bounds.currency
    first = statement_csv.csv_header() + statement_csv.balance_line(
        "opening_balance", bounds.since, bounds.opening, currency
    )
    yield first.encode()
    count = 0
    async for rows in slices(reads, account_id, bounds):
        count += len(rows)
        yield csv_lines(rows, currency)
    yield statement_csv.balance_line(
        "closing_balance", bounds.until, bounds.closing, currency
    ).encode()
    log.info("statement_sent", account_id=str(account_id), format="csv", entries=count)


async def json_body(reads: AsyncEngine, account_id: UUID, bounds: Any) -> AsyncIterator[bytes]:
    currency = bounds.currency
    head = msgspec.json.encode(
        {
            "account_id": account_id,
            "currency": currency,
            "from": bounds.since.astimezone(dt.UTC),
            "to": bounds.until.astimezone(dt.UTC),
            "opening_balance": format_amount(bounds.opening, currency),
            "closing_balance": format_amount(bounds.closing, currency),
        }
    )
    yield head[:-1] + b',"entries":['
    count = 0
    async for rows in slices(reads, account_id, bounds):
        items = msgspec.json.encode([entry_out(r) for r in rows])[1:-1]
        yield items if count == 0 else b"," + items
        count += len(rows)
    yield b"]}"
    log.info("statement_sent", account_id=str(account_id), format="json", entries=count)


class StatementController(Controller):
    path = "/api/v1/accounts"
    tags = ["accounts"]

    @get(
        "/{account_id:uuid}/statement",
        operation_id="getStatement",
        operation_class=StatementOperation,
        responses={
            200: ResponseSpec(
                Statement,
                media_type=JSON_MEDIA_TYPE,
                description="The statement, as JSON (`format=json`) or CSV (`format=csv`); "
                "streamed.",
                generate_examples=False,
            )
        },
    )
    async def get_statement(
        self,
        request: Request[Principal, Any, Any],
        account_id: UUID,
        since: Annotated[
            dt.datetime | None,
            Parameter(
                query="from",
                description="Start of the period, inclusive: RFC 3339 with a time zone offset. "
                "Default: the account's opening.",
            ),
        ] = None,
        until: Annotated[
            dt.datetime | None,
            Parameter(
                query="to",
                description="End of the period, exclusive: RFC 3339 with a time zone offset, "
                "after `from`. Default, and at most: now (a later `to` is taken as now).",
            ),
        ] = None,
        statement_format: Annotated[
            StatementFormat,
            Parameter(query="format", description="`json` (the default) or `csv`."),
        ] = "json",
    ) -> Stream:
        """One of your accounts' statement for a period: the opening balance (the balance as of
        `from`), every ledger entry dated in [`from`, `to`) oldest first, and the closing
        balance (the balance as of `to`), as one streamed JSON document or CSV file (download
        with `format=csv`). Any period length: the answer is streamed, never built in memory.

        JSON: `{account_id, currency, from, to, opening_balance, closing_balance, entries}`, the
        entries as `GET /accounts/{id}/entries` answers them. CSV: one table whose first row
        after the header is the opening balance and whose last is the closing balance; text
        starting with = + - @ is prefixed with a single quote (spreadsheet formula guard)."""
        check_period(since, until)
        reads = services_of(request.app).reads
        async with reads.connect() as conn:
            bounds = await statements.statement_bounds(
                conn, account_id, request.user.id, since, until
            )
        if bounds is None:
            raise account_not_found()
        if bounds.since >= bounds.until:
            # A `from` not before now, or (without `from`) a `to` not after the account's opening.
            if since is None:
                raise invalid("to", "to must be after the account was opened")
            raise invalid("from", "from must be before to, and not in the future")
        if statement_format == "json":
            return Stream(json_body(reads, account_id, bounds), media_type=JSON_MEDIA_TYPE)
        filename = statement_csv.statement_filename(account_id, bounds.since, bounds.until)
        return Stream(
            csv_body(reads, account_id, bounds),
            media_type=CSV_MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )
