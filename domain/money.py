"""Money rules: ISO 4217 exponents and strict conversion between decimal amounts and minor units."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType

from domain.errors import InvalidAmount, UnknownCurrency

# ISO 4217 minor-unit exponents. Fund and metal codes (CLF, UYW, XAU...) are left out on
# purpose: they are not money a customer account holds.
CURRENCY_EXPONENTS: Mapping[str, int] = MappingProxyType(
    {
        "AED": 2,
        "ARS": 2,
        "AUD": 2,
        "BGN": 2,
        "BHD": 3,
        "BIF": 0,
        "BRL": 2,
        "CAD": 2,
        "CHF": 2,
        "CLP": 0,
        "CNY": 2,
        "COP": 2,
        "CZK": 2,
        "DJF": 0,
        "DKK": 2,
        "EGP": 2,
        "EUR": 2,
        "GBP": 2,
        "GNF": 0,
        "HKD": 2,
        "HUF": 2,
        "IDR": 2,
        "ILS": 2,
        "INR": 2,
        "IQD": 3,
        "ISK": 0,
        "JOD": 3,
        "JPY": 0,
        "KES": 2,
        "KMF": 0,
        "KRW": 0,
        "KWD": 3,
        "LYD": 3,
        "MXN": 2,
        "MYR": 2,
        "NGN": 2,
        "NOK": 2,
        "NZD": 2,
        "OMR": 3,
        "PEN": 2,
        "PHP": 2,
        "PLN": 2,
        "PYG": 0,
        "QAR": 2,
        "RON": 2,
        "RWF": 0,
        "SAR": 2,
        "SEK": 2,
        "SGD": 2,
        "THB": 2,
        "TND": 3,
        "TRY": 2,
        "TWD": 2,
        "UAH": 2,
        "UGX": 0,
        "USD": 2,
        "UYU": 2,
        "VND": 0,
        "VUV": 0,
        "XAF": 0,
        "XOF": 0,
        "XPF": 0,
        "ZAR": 2,
    }
)

MAX_MINOR_UNITS = 10**15

_CURRENCY_CODE = re.compile(r"[A-Z]{3}")
# Like a JSON number without sign, exponent or leading zeros; an optional "-" is captured only
# so that negative amounts get the clearer "must be greater than zero" message.
_PLAIN_DECIMAL = re.compile(r"(?P<minus>-)?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?")
# Any amount whose most significant digit sits at 10**16 minor units or above is over the limit;
# checking this first keeps huge exponents and digit strings from being expanded into integers.
_MAX_MINOR_DIGITS = len(str(MAX_MINOR_UNITS))


def exponent(currency: str) -> int:
    """Return the number of minor-unit digits of `currency` (USD 2, JPY 0, BHD 3)."""
    if not isinstance(currency, str) or _CURRENCY_CODE.fullmatch(currency) is None:
        raise UnknownCurrency(
            "currency must be a 3-letter uppercase ISO 4217 code", field="currency"
        )
    try:
        return CURRENCY_EXPONENTS[currency]
    except KeyError:
        raise UnknownCurrency(f"currency {currency} is not supported", field="currency") from None


def parse_amount(value: Decimal | str | int, currency: str, field: str = "amount") -> int:
    """Convert a positive decimal amount of `currency` into minor units, rejecting anything inexact.

    Strings must be plain decimals ("12", "12.5", "12.50"); integers count major units.
    Raises InvalidAmount (with `field`) or UnknownCurrency (field "currency").
    """
    exp = exponent(currency)
    if isinstance(value, bool):
        # bool is an int subclass; True must not quietly become 1.00.
        raise InvalidAmount(f"{field} must be a decimal string, not a boolean", field)
    if isinstance(value, int):
        if value <= 0:
            raise InvalidAmount(f"{field} must be greater than zero", field)
        return _check_limit(value * 10**exp, currency, field)
    if isinstance(value, str):
        match = _PLAIN_DECIMAL.fullmatch(value)
        if match is None:
            raise InvalidAmount(
                f'{field} must be a plain decimal string such as "12.50": digits with an '
                "optional fraction, no sign, exponent, spaces, separators or leading zeros",
                field,
            )
        if match["minus"] is not None:
            raise InvalidAmount(f"{field} must be greater than zero", field)
        value = Decimal(value)  # exact: construction does not round to the context precision
    elif not isinstance(value, Decimal):
        raise InvalidAmount(f"{field} must be a decimal string, not {type(value).__name__}", field)
    return _decimal_to_minor(value, exp, currency, field)


def check_amount_token(token: bytes, field: str = "amount") -> None:
    """Hold an amount to the documented grammar as it was written in the request's JSON.

    `token` is the amount's raw JSON text. A string must be a plain decimal ("12.50"); a number
    is a plain decimal too, without exponent. The JSON decoder turns both into Decimal leniently
    (Python's Decimal takes " 1.00", "1_000", "+1" and "1e2"), so the text is checked here, before
    its value is. null and other JSON types are left to the request's schema.
    """
    if token[:1] == b'"':
        text = token[1:-1]
        if b"\\" in text or _PLAIN_DECIMAL.fullmatch(text.decode("utf-8", "replace")) is None:
            raise InvalidAmount(
                f'{field} must be a plain decimal string such as "12.50": digits with an '
                "optional fraction, no sign, exponent, spaces, separators or leading zeros",
                field,
            )
    elif (token[:1].isdigit() or token[:1] == b"-") and _PLAIN_DECIMAL.fullmatch(
        token.decode("ascii", "replace")
    ) is None:
        raise InvalidAmount(
            f'{field} must be written without an exponent; send a decimal string such as "12.50"',
            field,
        )


def _decimal_to_minor(value: Decimal, exp: int, currency: str, field: str) -> int:
    if not value.is_finite():
        raise InvalidAmount(f"{field} must be a finite number", field)
    if value <= 0:
        raise InvalidAmount(f"{field} must be greater than zero", field)
    _, digits, value_exp = value.as_tuple()
    assert isinstance(value_exp, int)  # finite decimals always have an integer exponent
    # Trailing zeros count: Decimal("12.500") claims a precision USD does not have.
    if -value_exp > exp:
        raise InvalidAmount(
            f"{field} has more decimal places than {currency} allows ({exp})", field
        )
    if value.adjusted() + exp >= _MAX_MINOR_DIGITS:
        raise _too_large(currency, field)
    # Integer arithmetic only: Decimal arithmetic would round to the caller's context.
    coefficient = int("".join(map(str, digits)))
    return _check_limit(coefficient * 10 ** (value_exp + exp), currency, field)


def _check_limit(minor: int, currency: str, field: str) -> int:
    if minor > MAX_MINOR_UNITS:
        raise _too_large(currency, field)
    return minor


def _too_large(currency: str, field: str) -> InvalidAmount:
    limit = format_amount(MAX_MINOR_UNITS, currency)
    return InvalidAmount(f"{field} must be at most {limit} {currency}", field)


def format_amount(minor: int, currency: str) -> str:
    """Render minor units as a plain decimal string: 1250 USD -> "12.50", 1 BHD -> "0.001"."""
    exp = exponent(currency)
    sign = "-" if minor < 0 else ""
    major, fraction = divmod(abs(minor), 10**exp)
    if exp == 0:
        return f"{sign}{major}"
    return f"{sign}{major}.{fraction:0{exp}d}"
