"""The statement's CSV (domain/statements.py): RFC 4180 quoting, the formula guard, its rows."""

from __future__ import annotations

import csv
import datetime as dt
import io
from uuid import UUID

import pytest

from domain.statements import (
    CSV_COLUMNS,
    balance_line,
    csv_field,
    csv_header,
    csv_line,
    entry_line,
    format_time,
    guard_formula,
    statement_filename,
)

OPERATION = UUID("0190f5b6-0000-7000-8000-000000000001")
AT = dt.datetime(2025, 3, 1, 12, 30, 5, 123456, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("plain", "plain"),
        ("", ""),
        ("a,b", '"a,b"'),
        ('say "hi"', '"say ""hi"""'),
        ('"', '""""'),
        ("two\nlines", '"two\nlines"'),
        ("cr\rhere", '"cr\rhere"'),
        ("crlf\r\nhere", '"crlf\r\nhere"'),
        ("  spaces kept  ", "  spaces kept  "),
        ("semi;colon", "semi;colon"),
        ("caf\u00e9 \u20ac", "caf\u00e9 \u20ac"),
    ],
)
def test_fields_are_quoted_as_rfc_4180_says(text: str, written: str) -> None:
    assert csv_field(text) == written


def test_a_line_ends_in_crlf_and_reads_back() -> None:
    fields = ["a,b", 'q"q', "x\ny", "", "z"]
    line = csv_line(fields)
    assert line == '"a,b","q""q","x\ny",,z\r\n'
    assert list(csv.reader(io.StringIO(line, newline=""))) == [fields]


@pytest.mark.parametrize(
    ("text", "guarded"),
    [
        ("=SUM(A1:A9)", "'=SUM(A1:A9)"),
        ("+1", "'+1"),
        ("-2", "'-2"),
        ("@cmd", "'@cmd"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("a=b", "a=b"),
        (" =x", " =x"),
        ("'quoted", "'quoted"),
        ("", ""),
        ("salary", "salary"),
    ],
)
def test_formula_guard(text: str, guarded: str) -> None:
    assert guard_formula(text) == guarded


def test_header_names_the_columns() -> None:
    assert csv_header() == ",".join(CSV_COLUMNS) + "\r\n"
    assert csv_header() == (
        "row_type,time,entry_id,operation_id,operation_type,category,description,"
        "amount,balance_after,currency\r\n"
    )


def test_entry_line_formats_amounts_times_and_guards_text() -> None:
    line = entry_line(
        entry_id=42,
        created_at=AT,
        operation_id=OPERATION,
        operation_type="withdrawal",
        category="-fees",
        description='=HYPERLINK("http://x", "click, here")',
        amount=-1250,
        balance_after=-5,
        currency="USD",
    )
    assert line == (
        f"entry,2025-03-01T12:30:05.123456Z,42,{OPERATION},withdrawal,'-fees,"
        '"\'=HYPERLINK(""http://x"", ""click, here"")",-12.50,-0.05,USD\r\n'
    )
    [row] = csv.reader(io.StringIO(line, newline=""))
    assert row[5:9] == ["'-fees", '\'=HYPERLINK("http://x", "click, here")', "-12.50", "-0.05"]


def test_entry_line_without_category_or_description() -> None:
    line = entry_line(
        entry_id=1,
        created_at=AT,
        operation_id=OPERATION,
        operation_type="deposit",
        category=None,
        description=None,
        amount=5,
        balance_after=5,
        currency="JPY",
    )
    assert line == f"entry,2025-03-01T12:30:05.123456Z,1,{OPERATION},deposit,,,5,5,JPY\r\n"


def test_balance_lines_fill_the_table() -> None:
    line = balance_line("opening_balance", AT, 1, "BHD")
    assert line == "opening_balance,2025-03-01T12:30:05.123456Z,,,,,,,0.001,BHD\r\n"
    [row] = csv.reader(io.StringIO(line, newline=""))
    assert len(row) == len(CSV_COLUMNS)
    assert balance_line("closing_balance", AT, -100, "USD").startswith("closing_balance,")


def test_times_are_utc_with_z() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert format_time(dt.datetime(2025, 1, 1, 2, 0, tzinfo=plus_two)) == "2025-01-01T00:00:00Z"
    assert format_time(AT) == "2025-03-01T12:30:05.123456Z"


def test_filename_has_no_colons() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    name = statement_filename(OPERATION, AT, dt.datetime(2025, 4, 1, 2, 0, 0, 1, tzinfo=plus_two))
    assert name == f"statement-{OPERATION}-20250301T123005Z-20250401T000000Z.csv"
