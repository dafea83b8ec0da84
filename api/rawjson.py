"""The decimal fields of a request body as the client wrote them.

Litestar decodes `amount` and `quantity` into Decimal with msgspec, which reads a string the way
Python's Decimal does: " 1.00", "1_000", "+1" and "1e2" all pass. The documented grammar is
stricter (domain.money.check_amount_token), so the submit routes also read those fields' raw JSON
text, here, and intake checks it before it uses the decoded values. One more decode of a small
body: a few microseconds, against the tens of a submit.
"""

from __future__ import annotations

import msgspec

DECIMAL_FIELDS = ("amount", "quantity")


class _Texts(msgspec.Struct):
    """Any body with the decimal fields of an operation; every other field is ignored here."""

    # An empty Raw when the field is absent (msgspec takes Raw alone, not in a union).
    amount: msgspec.Raw = msgspec.Raw()
    quantity: msgspec.Raw = msgspec.Raw()


class _BatchTexts(msgspec.Struct):
    operations: list[_Texts] = []


_single = msgspec.json.Decoder(_Texts)
_batch = msgspec.json.Decoder(_BatchTexts)


def _present(texts: _Texts) -> dict[str, bytes]:
    return {name: bytes(raw) for name in DECIMAL_FIELDS if (raw := getattr(texts, name))}


def decimal_texts(body: bytes) -> dict[str, bytes]:
    """The raw JSON of `amount` and `quantity` in one operation's body (empty when the body is
    not what the route decoded: then the route's own decoding has already answered)."""
    try:
        return _present(_single.decode(body))
    except (msgspec.DecodeError, msgspec.ValidationError):
        return {}


def batch_decimal_texts(body: bytes, items: int) -> list[dict[str, bytes]]:
    """decimal_texts of each item of a batch body's `operations`, in order."""
    try:
        decoded = _batch.decode(body).operations
    except (msgspec.DecodeError, msgspec.ValidationError):
        decoded = []
    texts = [_present(t) for t in decoded]
    return texts if len(texts) == items else [{} for _ in range(items)]


def field_text(body: bytes, name: str) -> bytes | None:
    """The raw JSON of one top-level decimal field of a body (an account's `initial_deposit`, an
    `overdraft_limit`), or None when absent or the body is not a JSON object."""
    try:
        raw = msgspec.json.decode(body, type=dict[str, msgspec.Raw]).get(name)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return bytes(raw) if raw is not None else None
