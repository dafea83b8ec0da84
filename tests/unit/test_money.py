"""Unit tests for domain.money: strict amount parsing, formatting and currency exponents."""

import pickle
from decimal import Decimal, localcontext

import pytest

from domain.errors import (
    IDEMPOTENCY_KEY_MISSING,
    INVALID_AMOUNT,
    UNKNOWN_CURRENCY,
    DomainError,
    InvalidAmount,
    InvalidIdempotencyKey,
    UnknownCurrency,
)
from domain.money import (
    CURRENCY_EXPONENTS,
    MAX_MINOR_UNITS,
    check_amount_token,
    exponent,
    format_amount,
    parse_amount,
)

REQUIRED_CURRENCIES = [
    "USD",
    "EUR",
    "BRL",
    "GBP",
    "JPY",
    "CHF",
    "CAD",
    "AUD",
    "NZD",
    "CNY",
    "INR",
    "MXN",
    "KRW",
    "CLP",
    "SEK",
    "NOK",
    "DKK",
    "PLN",
    "CZK",
    "HUF",
    "ZAR",
    "TRY",
    "ILS",
    "SGD",
    "HKD",
    "BHD",
    "KWD",
    "JOD",
    "OMR",
    "TND",
    "ISK",
    "VND",
]


@pytest.mark.parametrize("currency", REQUIRED_CURRENCIES)
def test_required_currencies_are_supported(currency: str) -> None:
    assert exponent(currency) in (0, 2, 3)


@pytest.mark.parametrize(
    ("currency", "expected"),
    [("USD", 2), ("EUR", 2), ("BRL", 2), ("JPY", 0), ("KRW", 0), ("ISK", 0), ("BHD", 3)],
)
def test_exponent(currency: str, expected: int) -> None:
    assert exponent(currency) == expected


@pytest.mark.parametrize("currency", ["usd", "US", "USDX", "", " USD", "XYZ", "ÚSD"])
def test_exponent_rejects_unknown_or_malformed_currency(currency: str) -> None:
    with pytest.raises(UnknownCurrency) as info:
        exponent(currency)
    assert info.value.code == UNKNOWN_CURRENCY
    assert info.value.field == "currency"
    assert "currency" in info.value.message


def test_currency_table_is_read_only() -> None:
    with pytest.raises(TypeError):
        CURRENCY_EXPONENTS["XXX"] = 2  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "currency", "minor"),
    [
        ("12", "USD", 1200),
        ("12.5", "USD", 1250),
        ("12.50", "USD", 1250),
        ("0.01", "USD", 1),
        ("0.5", "EUR", 50),
        ("100", "JPY", 100),
        ("1", "KRW", 1),
        ("0.001", "BHD", 1),
        ("1.5", "BHD", 1500),
        ("12.345", "KWD", 12345),
        (Decimal("12.50"), "USD", 1250),
        (Decimal("12.5"), "USD", 1250),
        (Decimal("100"), "JPY", 100),
        (Decimal("1E+2"), "JPY", 100),
        (Decimal("0.001"), "BHD", 1),
        (7, "USD", 700),
        (7, "JPY", 7),
        (7, "BHD", 7000),
        # The limit is inclusive.
        ("10000000000000", "USD", MAX_MINOR_UNITS),
        ("9999999999999.99", "USD", MAX_MINOR_UNITS - 1),
        ("1000000000000000", "JPY", MAX_MINOR_UNITS),
        ("1000000000000", "BHD", MAX_MINOR_UNITS),
        (Decimal("1E+13"), "USD", MAX_MINOR_UNITS),
        (10**13, "USD", MAX_MINOR_UNITS),
        (10**15, "JPY", MAX_MINOR_UNITS),
    ],
)
def test_parse_amount_accepts(value: Decimal | str | int, currency: str, minor: int) -> None:
    assert parse_amount(value, currency) == minor


def test_parse_amount_is_exact_under_a_low_precision_context() -> None:
    with localcontext() as context:
        context.prec = 3
        assert parse_amount("1234567890123.45", "USD") == 123456789012345
        assert parse_amount(Decimal("1234567890123.45"), "USD") == 123456789012345


NOT_PLAIN = "plain decimal string"
NOT_POSITIVE = "greater than zero"
TOO_PRECISE = "more decimal places than"
TOO_LARGE = "must be at most"
NOT_FINITE = "finite"


@pytest.mark.parametrize(
    ("value", "currency", "fragment"),
    [
        ("1e3", "USD", NOT_PLAIN),
        ("1E3", "JPY", NOT_PLAIN),
        (" 1", "USD", NOT_PLAIN),
        ("1 ", "USD", NOT_PLAIN),
        ("+1", "USD", NOT_PLAIN),
        ("1.", "USD", NOT_PLAIN),
        (".5", "USD", NOT_PLAIN),
        ("1,000.00", "USD", NOT_PLAIN),
        ("1_000", "USD", NOT_PLAIN),
        ("012", "USD", NOT_PLAIN),
        ("", "USD", NOT_PLAIN),
        ("abc", "USD", NOT_PLAIN),
        ("NaN", "USD", NOT_PLAIN),
        ("Infinity", "USD", NOT_PLAIN),
        ("0x10", "USD", NOT_PLAIN),
        ("١٢", "USD", NOT_PLAIN),  # Arabic-Indic digits: int() would take them, we do not
        ("12.5\n", "USD", NOT_PLAIN),
        ("0", "USD", NOT_POSITIVE),
        ("0.00", "USD", NOT_POSITIVE),
        ("-1", "USD", NOT_POSITIVE),
        ("-0.01", "USD", NOT_POSITIVE),
        (Decimal("0"), "USD", NOT_POSITIVE),
        (Decimal("-0"), "USD", NOT_POSITIVE),
        (Decimal("-5"), "USD", NOT_POSITIVE),
        (0, "USD", NOT_POSITIVE),
        (-3, "USD", NOT_POSITIVE),
        ("12.345", "USD", TOO_PRECISE),
        ("12.500", "USD", TOO_PRECISE),
        ("1.5", "JPY", TOO_PRECISE),
        ("1.0", "JPY", TOO_PRECISE),
        ("0.0001", "BHD", TOO_PRECISE),
        (Decimal("12.500"), "USD", TOO_PRECISE),
        (Decimal("0.001"), "USD", TOO_PRECISE),
        (Decimal("1.0"), "JPY", TOO_PRECISE),
        ("10000000000000.01", "USD", TOO_LARGE),
        ("1000000000000001", "JPY", TOO_LARGE),
        ("1000000000000.001", "BHD", TOO_LARGE),
        ("9" * 5000, "USD", TOO_LARGE),
        (Decimal("1E+13") + 1, "USD", TOO_LARGE),
        (Decimal("1E+999999999"), "USD", TOO_LARGE),
        (10**13 + 1, "USD", TOO_LARGE),
        (10**15 + 1, "JPY", TOO_LARGE),
        (Decimal("NaN"), "USD", NOT_FINITE),
        (Decimal("sNaN"), "USD", NOT_FINITE),
        (Decimal("Infinity"), "USD", NOT_FINITE),
        (Decimal("-Infinity"), "USD", NOT_FINITE),
        (True, "USD", "boolean"),
        (False, "USD", "boolean"),
        (12.5, "USD", "not float"),
    ],
)
def test_parse_amount_rejects(value: object, currency: str, fragment: str) -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount(value, currency)  # type: ignore[arg-type]
    error = info.value
    assert error.code == INVALID_AMOUNT
    assert error.field == "amount"
    assert error.message.startswith("amount ")
    assert fragment in error.message


def test_rejection_names_the_field_and_the_currency_exponent() -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount("12.345", "USD", field="legs[0].amount")
    assert info.value.field == "legs[0].amount"
    assert info.value.message == "legs[0].amount has more decimal places than USD allows (2)"


def test_too_large_message_states_the_limit() -> None:
    with pytest.raises(InvalidAmount) as info:
        parse_amount("10000000000001", "USD")
    assert info.value.message == "amount must be at most 10000000000000.00 USD"


def test_unknown_currency_is_reported_on_the_currency_field() -> None:
    with pytest.raises(UnknownCurrency) as info:
        parse_amount("1.00", "XYZ", field="price")
    assert info.value.field == "currency"


@pytest.mark.parametrize(
    ("minor", "currency", "text"),
    [
        (1250, "USD", "12.50"),
        (1, "USD", "0.01"),
        (0, "USD", "0.00"),
        (-5, "USD", "-0.05"),
        (-1250, "USD", "-12.50"),
        (100, "JPY", "100"),
        (-100, "JPY", "-100"),
        (1, "BHD", "0.001"),
        (12345, "KWD", "12.345"),
        (MAX_MINOR_UNITS, "USD", "10000000000000.00"),
    ],
)
def test_format_amount(minor: int, currency: str, text: str) -> None:
    assert format_amount(minor, currency) == text


@pytest.mark.parametrize("currency", ["USD", "JPY", "BHD"])
@pytest.mark.parametrize("minor", [1, 7, 10, 999, 1000, 123456789, MAX_MINOR_UNITS])
def test_format_then_parse_round_trips(minor: int, currency: str) -> None:
    assert parse_amount(format_amount(minor, currency), currency) == minor


@pytest.mark.parametrize(
    "error",
    [
        InvalidAmount("amount must be greater than zero", "amount"),
        UnknownCurrency("currency XYZ is not supported", "currency"),
        InvalidIdempotencyKey("required", code=IDEMPOTENCY_KEY_MISSING),
        DomainError("some_code", "some message"),
    ],
)
def test_domain_errors_survive_pickling(error: DomainError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.code, copy.message, copy.field) == (error.code, error.message, error.field)
    assert str(copy) == error.message


@pytest.mark.parametrize(
    "token",
    [b'"12.50"', b'"12"', b'"0.01"', b"12.5", b"12", b"0.5", b"null", b'"-1"', b"-1"],
)
def test_amount_tokens_in_the_grammar_pass(token: bytes) -> None:
    # Negative amounts pass the grammar: parse_amount answers them "must be greater than zero".
    check_amount_token(token)


@pytest.mark.parametrize(
    "token",
    [
        b'" 1.00"', b'"1.00 "', b'"1_000"', b'"1e2"', b'"+1"', b'"01.00"', b'"1."', b'".5"',
        b'"1,00"', b'"NaN"', b'"Infinity"', b'"\\u0031"', b'""', b"1e2", b"1E+2", b"1.5e0",
    ],
)  # fmt: skip
def test_amount_tokens_outside_the_grammar_are_refused(token: bytes) -> None:
    with pytest.raises(InvalidAmount) as raised:
        check_amount_token(token, "amount")
    assert raised.value.field == "amount"
