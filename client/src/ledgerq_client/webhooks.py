"""Webhook signatures: check that a delivery comes from the API and is recent.

A delivery carries a header (`Ledgerq-Signature: t=<unix seconds>,v1=<hex>`) whose `v1` is the HMAC-SHA256, keyed
with the endpoint's secret, of the timestamp, a dot and the raw body: `f"{t}.{body}"`. While a
secret is being rotated the header carries one `v1` per live secret; any one matching a secret
you hold verifies the delivery. Verify the raw bytes as received, before parsing them.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

from ledgerq_client.errors import SignatureError

__all__ = ["DEFAULT_TOLERANCE", "SIGNATURE_HEADER", "sign", "signature_of", "verify_signature"]

# The request header a delivery's signature comes in.
SIGNATURE_HEADER = "Ledgerq-Signature"
DEFAULT_TOLERANCE = 300


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def signature_of(payload: bytes, secret: str | bytes, timestamp: int) -> str:
    """The hex HMAC-SHA256 of `f"{timestamp}.{payload}"` under `secret`."""
    message = f"{timestamp}.".encode() + payload
    return hmac.new(_key(secret), message, hashlib.sha256).hexdigest()


def sign(payload: bytes, secrets: Sequence[str | bytes], timestamp: int | None = None) -> str:
    """A signature header for `payload`, one `v1` per secret (what the API sends; for tests and
    for relaying deliveries)."""
    if not secrets:
        raise ValueError("at least one secret is needed")
    t = int(time.time()) if timestamp is None else timestamp
    return ",".join([f"t={t}", *(f"v1={signature_of(payload, s, t)}" for s in secrets)])


def _parse(header: str) -> tuple[int, list[str]]:
    timestamps: list[str] = []
    signatures: list[str] = []
    for item in header.split(","):
        name, eq, value = item.strip().partition("=")
        if not eq:
            raise SignatureError("signature_malformed", f"not a name=value pair: {item.strip()!r}")
        name, value = name.strip(), value.strip()
        if name == "t":
            timestamps.append(value)
        elif name == "v1":
            signatures.append(value.lower())
        # other schemes (v0, a future v2) are not ours to judge
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        raise SignatureError("signature_malformed", "the header needs exactly one t=<unix seconds>")
    if not signatures:
        raise SignatureError("signature_malformed", "the header has no v1 signature")
    return int(timestamps[0]), signatures


def verify_signature(
    payload: bytes,
    header: str | None,
    secrets: Sequence[str | bytes],
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Return if `header` signs `payload` with one of `secrets` at a time within `tolerance`
    seconds of `now` (default: the clock); raise `SignatureError` otherwise, with `code`:
    `signature_missing` (no header), `signature_malformed`, `signature_expired` (a timestamp
    older, or further ahead, than the tolerance: a replayed or delayed delivery) or
    `signature_mismatch` (no `v1` matches any secret: a forged or altered body, or a secret you
    do not hold)."""
    if not secrets:
        raise ValueError("at least one secret is needed")
    if header is None or not header.strip():
        raise SignatureError("signature_missing", "no signature header")
    timestamp, signatures = _parse(header)
    current = time.time() if now is None else now
    age = current - timestamp
    if age > tolerance:
        raise SignatureError(
            "signature_expired", f"signed {int(age)} s ago, more than the {tolerance} s allowed"
        )
    if -age > tolerance:
        raise SignatureError(
            "signature_expired", f"signed {int(-age)} s in the future, more than {tolerance} s"
        )
    expected = [signature_of(payload, secret, timestamp) for secret in secrets]
    matched = False
    for candidate in signatures:
        for good in expected:
            # Every pair is compared, in constant time: no early exit to time.
            matched |= hmac.compare_digest(candidate.encode(), good.encode())
    if not matched:
        raise SignatureError("signature_mismatch", "no v1 signature matches a secret")
