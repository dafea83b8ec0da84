"""Account statements as CSV: rows, quoting and the spreadsheet formula guard. Pure: no I/O.

GET /api/v1/accounts/{id}/statement?format=csv (api/controllers/statements.py) streams one table:

    row_type,time,entry_id,operation_id,operation_type,category,description,amount,balance_after,currency
    opening_balance,<from>,,,,,,,<opening balance>,<currency>
    entry,<entry's time>,<id>,<operation id>,<type>,<category>,<description>,<amount>,<balance after>,<currency>
    ...
    closing_balance,<to>,,,,,,,<closing balance>,<currency>

The opening and closing balances are rows of the table (its first and last), so the file alone is
the statement and it still opens as one rectangular sheet. Amounts and balances are decimal
strings in the account's currency (`domain.money.format_amount`), times RFC 3339 in UTC.

Quoting is RFC 4180: CRLF line ends; a field holding a comma, a double quote, CR or LF is
enclosed in double quotes with its quotes doubled; other fields are written as they are.

Formula guard: a spreadsheet reads a cell that starts with = + - @ (or a tab or CR, which some
strip before looking) as a formula, so a description such as `=HYPERLINK(...)` would run when the
file is opened ("CSV injection"). Text the account's users wrote (description, category) that
starts with one of those characters is written with a single quote (') before it, which the
spreadsheet shows as text. Amounts and balances are never guarded ("-12.50" stays a number); the
JSON statement carries every text as stored.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from domain.money import format_amount

CSV_COLUMNS = (
    "row_type",
    "time",
    "entry_id",
    "operation_id",
    "operation_type",
    "category",
    "description",
    "amount",
    "balance_after",
    "currency",
)
CRLF = "\r\n"
# Characters a spreadsheet takes as the start of a formula (OWASP's CSV injection list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = frozenset(',"\r\n')


def guard_formula(text: str) -> str:
    """Text a spreadsheet would read as a formula, made plain text by a leading single quote."""
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_field(text: str) -> str:
    """One field as RFC 4180 writes it: quoted, quotes doubled, when it holds , " CR or LF."""
    if _NEEDS_QUOTES.isdisjoint(text):
        return text
    return '"' + text.replace('"', '""') + '"'


def csv_line(fields: Iterable[str]) -> str:
    return ",".join(csv_field(f) for f in fields) + CRLF


def format_time(instant: dt.datetime) -> str:
    """RFC 3339 in UTC with a `Z`, as the JSON answers write instants (microseconds when any)."""
    return instant.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def filename_time(instant: dt.datetime) -> str:
    """An instant for a file name: UTC, basic format, no colons (20250131T235959Z)."""
    return instant.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def statement_filename(account_id: object, since: dt.datetime, until: dt.datetime) -> str:
    return f"statement-{account_id}-{filename_time(since)}-{filename_time(until)}.csv"


def csv_header() -> str:
    return csv_line(CSV_COLUMNS)


def balance_line(kind: str, instant: dt.datetime, balance: int, currency: str) -> str:
    """The opening_balance or closing_balance row: the balance at `instant`."""
    amount_columns = ("", "", "", "", "", "")  # entry_id .. amount: none on a balance row
    return csv_line(
        (kind, format_time(instant), *amount_columns, format_amount(balance, currency), currency)
    )


def entry_line(
    *,
    entry_id: int,
    created_at: dt.datetime,
    operation_id: object,
    operation_type: str,
    category: str | None,
    description: str | None,
    amount: int,
    balance_after: int,
    currency: str,
) -> str:
    """One ledger entry's row; description and category pass the formula guard."""
    return csv_line(
        (
            "entry",
            format_time(created_at),
            str(entry_id),
            str(operation_id),
            operation_type,
            guard_formula(category or ""),
            guard_formula(description or ""),
            format_amount(amount, currency),
            format_amount(balance_after, currency),
            currency,
        )
    )
