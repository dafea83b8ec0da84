"""Unit tests for domain.idempotency: Idempotency-Key parsing and request fingerprints."""

import hashlib
from decimal import Decimal
from uuid import UUID

import pytest

from domain.errors import IDEMPOTENCY_KEY_INVALID, IDEMPOTENCY_KEY_MISSING, InvalidIdempotencyKey
from domain.idempotency import MAX_KEY_LENGTH, parse_idempotency_key, request_fingerprint


@pytest.mark.parametrize(
    ("header", "key"),
    [
        ("abc", "abc"),
        ("8e03978e-40d5-43e8-bc93-6894a57f9324", "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"8e03978e-40d5-43e8-bc93-6894a57f9324"', "8e03978e-40d5-43e8-bc93-6894a57f9324"),
        ('"abc"', "abc"),
        ('"a b"', "a b"),
        (r'"say \"hi\""', 'say "hi"'),
        (r'"back\\slash"', "back\\slash"),
        (r'"\\\""', '\\"'),
        ("  abc\t", "abc"),  # optional whitespace around a field value is not part of it
        (' "abc" ', "abc"),
        ("order:42/retry", "order:42/retry"),
        ("a\\b", "a\\b"),  # outside quotes a backslash is an ordinary character
        ("x" * MAX_KEY_LENGTH, "x" * MAX_KEY_LENGTH),
        ('"' + "x" * MAX_KEY_LENGTH + '"', "x" * MAX_KEY_LENGTH),
        # 255 characters once unescaped, although the header itself is longer
        ('"' + '\\"' * MAX_KEY_LENGTH + '"', '"' * MAX_KEY_LENGTH),
    ],
)
def test_parse_accepts(header: str, key: str) -> None:
    assert parse_idempotency_key(header) == key


def test_bare_and_quoted_forms_name_the_same_key() -> None:
    assert parse_idempotency_key("k-1") == parse_idempotency_key('"k-1"')


@pytest.mark.parametrize("header", [None, "", "   ", "\t"])
def test_missing_key(header: str | None) -> None:
    with pytest.raises(InvalidIdempotencyKey) as info:
        parse_idempotency_key(header)
    assert info.value.code == IDEMPOTENCY_KEY_MISSING
    assert "Idempotency-Key" in info.value.message


@pytest.mark.parametrize(
    ("header", "fragment"),
    [
        ("x" * (MAX_KEY_LENGTH + 1), "at most 255 characters, got 256"),
        ('"' + "x" * (MAX_KEY_LENGTH + 1) + '"', "at most 255 characters, got 256"),
        ('""', "must not be empty"),
        ('"abc', "no closing quote"),
        ('"abc\\', "only the escapes"),
        ('"abc\\"', "no closing quote"),
        (r'"a\nb"', "only the escapes"),
        (r'"a\tb"', "only the escapes"),
        ('"abc"def', "after its closing quote"),
        ('"abc";a=1', "after its closing quote"),
        ('"a"b"', "after its closing quote"),
        ('ab"c', "double quote"),
        ("abc\x00", "printable ASCII"),
        ("ab\x7fc", "printable ASCII"),
        ("ab\ncd", "printable ASCII"),
        ('"ab\x01cd"', "printable ASCII"),
        ('"ab\tcd"', "printable ASCII"),
        ("caf\u00e9", "printable ASCII"),
        ('"caf\u00e9"', "printable ASCII"),
    ],
)
def test_invalid_key(header: str, fragment: str) -> None:
    with pytest.raises(InvalidIdempotencyKey) as info:
        parse_idempotency_key(header)
    assert info.value.code == IDEMPOTENCY_KEY_INVALID
    assert info.value.message.startswith("Idempotency-Key")
    assert fragment in info.value.message


ACCOUNT = UUID("8e03978e-40d5-43e8-bc93-6894a57f9324")


def test_fingerprint_ignores_key_order_at_every_level() -> None:
    first = {"type": "deposit", "account_id": ACCOUNT, "meta": {"a": 1, "b": [1, 2]}}
    second = {"meta": {"b": [1, 2], "a": 1}, "account_id": ACCOUNT, "type": "deposit"}
    assert request_fingerprint(first) == request_fingerprint(second)


def test_fingerprint_is_sha256_of_compact_sorted_json() -> None:
    payload = {"b": "x", "a": 1, "amount": Decimal("12.50"), "account_id": ACCOUNT}
    canonical = (
        '{"a":1,"account_id":"8e03978e-40d5-43e8-bc93-6894a57f9324","amount":"12.50","b":"x"}'
    )
    assert request_fingerprint(payload) == hashlib.sha256(canonical.encode()).hexdigest()


def test_fingerprint_treats_uuid_and_decimal_as_their_strings() -> None:
    native = {"account_id": ACCOUNT, "amount": Decimal("12.50")}
    strings = {"account_id": str(ACCOUNT), "amount": "12.50"}
    assert request_fingerprint(native) == request_fingerprint(strings)


@pytest.mark.parametrize(
    "other",
    [
        {"type": "deposit", "amount": "12.51"},
        {"type": "withdrawal", "amount": "12.50"},
        {"type": "deposit", "amount": "12.50", "description": None},
        {"type": "deposit", "amount": 12.5},
        {"type": "deposit"},
    ],
)
def test_different_requests_have_different_fingerprints(other: dict[str, object]) -> None:
    assert request_fingerprint({"type": "deposit", "amount": "12.50"}) != request_fingerprint(other)


def test_fingerprint_of_a_set_does_not_depend_on_insertion_order() -> None:
    first = {"tags": {"a", "b", "c"}}
    second = {"tags": {"c", "b", "a"}}
    assert request_fingerprint(first) == request_fingerprint(second)
    assert request_fingerprint(first) == request_fingerprint({"tags": ["a", "b", "c"]})
