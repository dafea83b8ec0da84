"""Idempotency rules: parse the Idempotency-Key header and fingerprint a request body."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from domain.errors import IDEMPOTENCY_KEY_MISSING, InvalidIdempotencyKey

MAX_KEY_LENGTH = 255

_OWS = " \t"
_ESCAPABLE = '"\\'
_NOT_PRINTABLE = "Idempotency-Key must contain only printable ASCII characters"


def parse_idempotency_key(header: str | None) -> str:
    """Return the key carried by an Idempotency-Key header value.

    The IETF draft defines the value as an RFC 8941 sf-string ("\\"abc\\""); clients
    commonly send the bare key (abc), so both are accepted. The returned key is the
    unquoted value: 1 to MAX_KEY_LENGTH printable ASCII characters.
    """
    if header is None or not header.strip():
        raise InvalidIdempotencyKey(
            "the Idempotency-Key header is required", code=IDEMPOTENCY_KEY_MISSING
        )
    raw = header.strip(_OWS)
    key = _parse_sf_string(raw) if raw.startswith('"') else _parse_bare(raw)
    if not key:
        raise InvalidIdempotencyKey("Idempotency-Key must not be empty")
    if len(key) > MAX_KEY_LENGTH:
        raise InvalidIdempotencyKey(
            f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters, got {len(key)}"
        )
    return key


def _parse_bare(raw: str) -> str:
    if not all(_is_printable_ascii(char) for char in raw):
        raise InvalidIdempotencyKey(_NOT_PRINTABLE)
    # A stray quote means a mangled sf-string; guessing what the client meant could merge
    # two different keys.
    if '"' in raw:
        raise InvalidIdempotencyKey(
            "Idempotency-Key contains a double quote; send the whole key as a quoted string"
        )
    return raw


def _parse_sf_string(raw: str) -> str:
    # RFC 8941 section 4.2.5; raw[0] is the opening quote.
    chars: list[str] = []
    index = 1
    while index < len(raw):
        char = raw[index]
        if char == "\\":
            escaped = raw[index + 1 : index + 2]
            if escaped == "" or escaped not in _ESCAPABLE:
                raise InvalidIdempotencyKey(
                    'Idempotency-Key allows only the escapes \\" and \\\\ inside quotes'
                )
            chars.append(escaped)
            index += 2
            continue
        if char == '"':
            if index != len(raw) - 1:
                raise InvalidIdempotencyKey(
                    "Idempotency-Key has characters after its closing quote"
                )
            return "".join(chars)
        if not _is_printable_ascii(char):
            raise InvalidIdempotencyKey(_NOT_PRINTABLE)
        chars.append(char)
        index += 1
    raise InvalidIdempotencyKey("Idempotency-Key has an opening quote but no closing quote")


def _is_printable_ascii(char: str) -> bool:
    return " " <= char <= "~"


def request_fingerprint(payload: Mapping[str, object]) -> str:
    """Return the sha256 hex digest of a canonical JSON form of `payload`.

    Key order and whitespace do not matter; values JSON cannot hold natively (UUID,
    Decimal, datetime...) count as their str(). Normalise values first where two spellings
    mean the same request: Decimal("12.5") and Decimal("12.50") fingerprint differently.
    """
    canonical = json.dumps(
        dict(payload), sort_keys=True, separators=(",", ":"), default=_canonical_value
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def _canonical_value(value: object) -> object:
    # Mappings and sets get a structural form: their str() depends on insertion order.
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset):
        return sorted(
            value, key=lambda item: json.dumps(item, sort_keys=True, default=_canonical_value)
        )
    return str(value)
