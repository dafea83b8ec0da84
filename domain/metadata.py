"""Metadata: the string pairs operations and accounts carry for their owner (order ids, customer
references), bounded so one object can neither bloat a row nor the index over it."""

from __future__ import annotations

from collections.abc import Mapping

MAX_PAIRS = 20
MAX_KEY_LENGTH = 40
MAX_VALUE_LENGTH = 500
KEY_PATTERN = r"^[A-Za-z0-9_.:\-]+$"


def canonical(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """The stored form: keys sorted, an empty object stored as none (they mean the same)."""
    if not metadata:
        return None
    return {key: metadata[key] for key in sorted(metadata)}
