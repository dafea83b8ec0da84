"""Opaque keyset cursors: clients pass back what they were given and never parse it."""

from __future__ import annotations

import base64
import binascii
from uuid import UUID

from api.errors import ApiError

MAX_PAGE = 500


def encode_cursor(kind: str, value: object) -> str:
    return base64.urlsafe_b64encode(f"{kind}:{value}".encode()).decode().rstrip("=")


def _decode(kind: str, cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    prefix, _, value = raw.partition(":")
    if prefix != kind or not value:
        raise ApiError(
            422, "invalid_cursor", "cursor is not one this endpoint returned", field="cursor"
        )
    return value


def decode_int_cursor(kind: str, cursor: str | None) -> int | None:
    if cursor is None:
        return None
    value = _decode(kind, cursor)
    if not value.isdigit():
        raise ApiError(
            422, "invalid_cursor", "cursor is not one this endpoint returned", field="cursor"
        )
    return int(value)


def decode_uuid_cursor(kind: str, cursor: str | None) -> UUID | None:
    if cursor is None:
        return None
    try:
        return UUID(_decode(kind, cursor))
    except ValueError:
        raise ApiError(
            422, "invalid_cursor", "cursor is not one this endpoint returned", field="cursor"
        ) from None
