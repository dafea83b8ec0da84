"""api/pagination.py: the one keyset page path (cursor in, limit + 1 rows read, page out)."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import pytest

from api.errors import ApiError
from api.pagination import Keyset, page
from api.schemas import Page

ACCOUNTS = Keyset.by_id("account")
ENTRIES = Keyset.by_number("entry", "id")
ID = UUID("01933b6e-0000-7000-8000-000000000001")


def cursor_of(raw: str) -> str:
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def test_cursors_keep_the_format_clients_already_hold() -> None:
    assert ACCOUNTS.encode(SimpleNamespace(id=ID)) == cursor_of(f"account:{ID}")
    assert ENTRIES.encode(SimpleNamespace(id=42)) == cursor_of("entry:42")
    assert ACCOUNTS.decode(cursor_of(f"account:{ID}")) == ID
    assert ENTRIES.decode(cursor_of("entry:42")) == 42
    assert ENTRIES.decode(None) is None


@pytest.mark.parametrize(
    ("keyset", "cursor"),
    [
        (ACCOUNTS, cursor_of(f"entry:{ID}")),  # another route's cursor
        (ACCOUNTS, cursor_of("account:not-a-uuid")),
        (ACCOUNTS, cursor_of("account:")),
        (ENTRIES, cursor_of("entry:-1")),
        (ENTRIES, cursor_of("entry:1.5")),
        (ENTRIES, cursor_of("entry:\u00b2")),  # a digit to str.isdigit, not to int() (was a 500)
        (ENTRIES, "%%%"),
        (ENTRIES, "_w"),  # one byte 0xff: not UTF-8
    ],
)
def test_a_cursor_this_route_did_not_give_is_refused(keyset: Keyset[Any], cursor: str) -> None:
    with pytest.raises(ApiError) as refused:
        keyset.decode(cursor)
    assert refused.value.status_code == 422 and refused.value.code == "invalid_cursor"


def rows(*ids: int) -> list[SimpleNamespace]:
    return [SimpleNamespace(id=i, name=f"row {i}") for i in ids]


async def test_a_page_reads_one_row_more_than_it_answers() -> None:
    asked: list[tuple[int | None, int]] = []

    async def fetch(before: int | None, n: int) -> Sequence[SimpleNamespace]:
        asked.append((before, n))
        return rows(9, 8, 7)[:n]

    first = await page(ENTRIES, None, 2, fetch, lambda r: r.name)
    assert first == Page(items=["row 9", "row 8"], next_cursor=cursor_of("entry:8"))
    last = await page(ENTRIES, first.next_cursor, 3, fetch, lambda r: r.name)
    assert last == Page(items=["row 9", "row 8", "row 7"], next_cursor=None)  # exactly full
    assert asked == [(None, 3), (8, 4)]


async def test_an_empty_page_and_a_bad_cursor_read_nothing() -> None:
    async def nothing(after: UUID | None, n: int) -> list[Any]:
        return []

    assert await page(ACCOUNTS, None, 100, nothing, str) == Page(items=[], next_cursor=None)

    async def must_not_read(after: UUID | None, n: int) -> list[Any]:
        raise AssertionError("read before the cursor was checked")

    with pytest.raises(ApiError):
        await page(ACCOUNTS, cursor_of("account:x"), 100, must_not_read, str)
