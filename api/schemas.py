"""Request and response bodies (msgspec Structs): the public v1 contract."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal
from uuid import UUID

import msgspec
from msgspec import Meta, Struct

Username = Annotated[
    str,
    Meta(
        min_length=3,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$",
        description="3-64 characters: letters, digits, `_`, `.`, `-`; unique regardless of case.",
    ),
]
# argon2 hashes any length, but an unbounded password is a denial-of-service lever.
Password = Annotated[str, Meta(min_length=10, max_length=256)]
Currency = Annotated[
    str, Meta(pattern=r"^[A-Z]{3}$", description="ISO 4217 code", examples=["USD"])
]
AmountIn = Annotated[
    Decimal,
    Meta(
        description=(
            'Decimal string such as "12.50" (preferred). A JSON number is accepted only if it has'
            " no more decimals than the currency allows."
        ),
        examples=["12.50"],
    ),
]
Category = Annotated[str, Meta(min_length=1, max_length=64)]
Description = Annotated[str, Meta(max_length=500)]


class Body(Struct, forbid_unknown_fields=True, kw_only=True):
    """Requests reject unknown fields: a typo must not silently drop meaning from a money order."""


class RegisterRequest(Body):
    username: Username
    password: Password


class UserOut(Struct, kw_only=True):
    id: UUID
    username: str
    created_at: dt.datetime


class AccountCreate(Body):
    name: Annotated[str, Meta(min_length=1, max_length=100)]
    type: Literal["checking", "savings"]
    currency: Currency


class AccountOut(Struct, kw_only=True):
    id: UUID
    name: str
    type: str
    currency: str
    balance: str
    available_balance: str
    overdraft_limit: str
    created_at: dt.datetime
    updated_at: dt.datetime


class AccountPage(Struct, kw_only=True):
    items: list[AccountOut]
    next_cursor: str | None


class EntryOut(Struct, kw_only=True):
    id: str
    operation_id: UUID
    operation_type: str
    amount: str
    balance_after: str
    currency: str
    category: str | None
    description: str | None
    created_at: dt.datetime


class EntryPage(Struct, kw_only=True):
    items: list[EntryOut]
    next_cursor: str | None


class OperationRequest(Body):
    type: Literal["deposit", "withdrawal", "transfer"]
    account_id: UUID
    amount: AmountIn
    to_account_id: UUID | None = None
    category: Category | None = None
    description: Description | None = None


class BatchItem(OperationRequest, kw_only=True):
    # kw_only: a required field after OperationRequest's optional ones.
    idempotency_key: Annotated[str, Meta(min_length=1, max_length=255)]


class BatchRequest(Body):
    operations: Annotated[list[BatchItem], Meta(min_length=1, max_length=1000)]


class OperationError(Struct, kw_only=True):
    code: str
    message: str | None


class OperationOut(Struct, kw_only=True):
    id: UUID
    type: str
    status: str
    account_id: UUID
    to_account_id: UUID | None
    amount: str
    currency: str
    category: str | None
    description: str | None
    error: OperationError | None
    created_at: dt.datetime
    updated_at: dt.datetime
    applied_at: dt.datetime | None


class OperationPage(Struct, kw_only=True):
    items: list[OperationOut]
    next_cursor: str | None


class Problem(Struct, kw_only=True, omit_defaults=True):
    """RFC 9457 problem details, as embedded in a batch result."""

    type: str
    title: str
    status: int
    detail: str
    code: str
    field: str | None = None


class BatchItemResult(Struct, kw_only=True, omit_defaults=True):
    index: int
    status: int
    replayed: bool = False
    operation: OperationOut | None = None
    error: Problem | None = None


class BatchResponse(Struct, kw_only=True):
    accepted: int
    replayed: int
    rejected: int
    results: list[BatchItemResult]


class Health(Struct, kw_only=True):
    status: str
    checks: dict[str, str] = msgspec.field(default_factory=dict)
