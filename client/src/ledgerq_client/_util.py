"""Small pure helpers: idempotency keys and decimal amounts."""

from __future__ import annotations

import uuid
from decimal import Decimal, InvalidOperation

__all__ = ["decimal_of", "decimal_text", "new_idempotency_key"]


def new_idempotency_key() -> str:
    """A fresh idempotency key: a random UUID (36 printable ASCII characters)."""
    return str(uuid.uuid4())


def decimal_of(value: object, name: str = "amount") -> Decimal:
    """`value` as an exact Decimal: a Decimal, an int or a decimal string; never a float (a float
    is not exact money, so it is refused rather than rounded)."""
    if isinstance(value, bool | float):
        raise TypeError(f"{name} must be a Decimal, an int or a decimal string, not {value!r}")
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{name} is not a decimal number: {value!r}") from None
    else:
        raise TypeError(f"{name} must be a Decimal, an int or a decimal string, not {value!r}")
    if not number.is_finite():
        raise ValueError(f"{name} must be finite, got {value!r}")
    # Plain notation ("100", never "1E+2"): the API reads amounts as written.
    return Decimal(format(number, "f"))


def decimal_text(value: object, name: str = "amount") -> str:
    """`value` (see `decimal_of`) as the decimal string the API takes: "12.50"."""
    return format(decimal_of(value, name), "f")
