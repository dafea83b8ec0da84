"""Keyset pages, one path for every cursor-paged route.

A route declares its `Keyset` (the cursor's kind, how a row's key is read, how it is parsed back)
and answers `await page(KEYSET, cursor, limit, fetch, present)`: the cursor is decoded (422
`invalid_cursor` before anything is read), `fetch(after, limit + 1)` reads one row more than the
page holds, and the page is the first `limit` rows presented, with the next cursor when there
were more. Cursors are opaque: clients pass back what they were given and never parse it.

The query parameters every paged route takes (`Limit`, `Cursor`) live here too, and how the one
generic page type (api/schemas.py `Page`) is named in OpenAPI (`PageSchemaPlugin`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from operator import attrgetter
from typing import TYPE_CHECKING, Annotated, Any, Generic, TypeVar, get_origin
from uuid import UUID

import msgspec
from litestar.params import KwargDefinition, Parameter
from litestar.plugins import OpenAPISchemaPlugin
from litestar.typing import FieldDefinition

from api.errors import ApiError
from api.schemas import Page

if TYPE_CHECKING:
    from litestar.openapi.spec import Schema
    from sqlalchemy.ext.asyncio import AsyncEngine

MAX_PAGE = 500

Limit = Annotated[int, Parameter(ge=1, le=MAX_PAGE, description="Page size, 1-500.")]
Cursor = Annotated[str | None, Parameter(description="`next_cursor` of the previous page.")]

K = TypeVar("K")  # a row's key in the cursor: an id (UUID) or a sequence number (int)
R = TypeVar("R")  # a row as read
T = TypeVar("T")  # an item as answered

Fetch = Callable[[K | None, int], Awaitable[Sequence[R]]]


def _invalid_cursor() -> ApiError:
    return ApiError(
        422, "invalid_cursor", "cursor is not one this endpoint returned", field="cursor"
    )


def _int_key(value: str) -> int:
    if not value.isdigit():
        raise ValueError(value)
    return int(value)


class Keyset(Generic[K]):
    """One route's cursors: `kind` tells them apart (another route's cursor is refused), `key`
    names the row attribute the rows are ordered by, `parse` reads it back from a cursor."""

    __slots__ = ("_key", "kind", "parse")

    def __init__(self, kind: str, key: str, parse: Callable[[str], K]) -> None:
        self.kind = kind
        self.parse = parse
        self._key = attrgetter(key)

    @staticmethod
    def by_id(kind: str, key: str = "id") -> Keyset[UUID]:
        """Rows ordered by a UUID column, oldest first (UUIDv7 ids sort by creation)."""
        return Keyset(kind, key, UUID)

    @staticmethod
    def by_number(kind: str, key: str) -> Keyset[int]:
        """Rows ordered by an integer column (an identity), newest first."""
        return Keyset(kind, key, _int_key)

    def encode(self, row: Any) -> str:
        raw = f"{self.kind}:{self._key(row)}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    def decode(self, cursor: str | None) -> K | None:
        if cursor is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raw = ""
        kind, _, value = raw.partition(":")
        if kind != self.kind or not value:
            raise _invalid_cursor()
        try:
            return self.parse(value)
        except ValueError:
            raise _invalid_cursor() from None


async def page(
    keyset: Keyset[K],
    cursor: str | None,
    limit: int,
    fetch: Fetch[K, R],
    present: Callable[[R], T],
) -> Page[T]:
    """One page: `fetch(after, limit + 1)` reads the rows after the cursor's key (in the route's
    order), the first `limit` are presented, and the last of them keys the next cursor when
    there were more."""
    after = keyset.decode(cursor)
    rows = await fetch(after, limit + 1)
    more = len(rows) > limit
    if more:
        rows = rows[:limit]
    return Page(
        items=[present(row) for row in rows],
        next_cursor=keyset.encode(rows[-1]) if more else None,
    )


def reads(
    engine: AsyncEngine, query: Callable[..., Awaitable[Sequence[R]]], *args: Any
) -> Fetch[Any, R]:
    """The fetch of a page that is one statement: `query(conn, *args, after, n)` on `engine`
    (the autocommit reads engine), connected only once the cursor is known to be good."""

    async def fetch(after: Any, n: int) -> Sequence[R]:
        async with engine.connect() as conn:
            return await query(conn, *args, after, n)

    return fetch


class PageSchemaPlugin(OpenAPISchemaPlugin):
    """Documents `Page[T]` under the name its route gives it (api/schemas.py `named_page`), and
    titled with it: the document each route had when it had a page Struct of its own. (Litestar
    would name it `Page_api.schemas.AccountOut_` and title it `Page[AccountOut]`.)"""

    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        return get_origin(field_definition.annotation) is Page

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        named = field_definition.kwarg_definition
        if not isinstance(named, KwargDefinition) or not named.schema_component_key:
            raise TypeError(
                f"{field_definition.annotation!r} needs its name: Annotated[..., named_page(...)]"
            )
        hints = field_definition.get_type_hints(resolve_generics=True)
        fields = msgspec.structs.fields(Page)
        schema: Schema = schema_creator.create_component_schema(
            field_definition,
            required=sorted(f.encode_name for f in fields if f.required),
            property_fields={
                f.encode_name: FieldDefinition.from_annotation(hints[f.name], name=f.encode_name)
                for f in fields
            },
            title=named.schema_component_key,
        )
        return schema
