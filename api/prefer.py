"""The `Prefer` request header (RFC 7240): only `wait` matters to us."""

from __future__ import annotations


def parse_prefer_wait(header: str | None, max_wait: int) -> int | None:
    """Seconds the client is willing to wait, capped at max_wait; None when it did not ask.

    Preferences are comma separated, each `token[=value]` with optional `;` parameters.
    A malformed wait is ignored, as RFC 7240 asks of preferences a server does not understand.
    """
    if not header:
        return None
    for preference in header.split(","):
        name, _, value = preference.split(";", 1)[0].strip().partition("=")
        if name.strip().lower() != "wait":
            continue
        value = value.strip().strip('"')
        if value.isdigit():
            return min(int(value), max_wait)
    return None
