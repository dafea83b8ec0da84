"""When to retry, and how long to wait first: pure decisions, shared by both clients.

A request is retried only when sending it again cannot do anything twice:

- a connection that could not be made (the request never left): any request;
- otherwise (an answer 429, 500, 502, 503 or 504; a dropped connection, a timeout) only a *safe*
  request: a GET, a submit with its idempotency key (the same key and body again: the API
  answers the stored operation, `Idempotent-Replayed: true`), a PUT or PATCH of absolute values,
  an upsert.

Never any other 4xx. Waits grow exponentially with jitter; a `Retry-After` is honoured (never
retried sooner), and one longer than `max_retry_after` is not waited for: the error is raised
with its `retry_after`, for the caller to decide.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx

__all__ = ["NO_RETRY", "RETRY_STATUSES", "RetryPolicy", "parse_retry_after"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})

# The request never reached the server: safe to send again whatever it is.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts`: tries in all (1: never retry). The n-th retry waits a random time between
    half and all of min(`backoff_max`, `backoff` * 2**(n-1)) seconds, or the answer's
    `Retry-After` if that is longer; a `Retry-After` over `max_retry_after` is not waited for."""

    attempts: int = 5
    backoff: float = 0.2
    backoff_max: float = 5.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("waits must not be negative")

    def backoff_delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before retry number `retry` (1 for the first), jitter included."""
        ceiling = min(self.backoff_max, self.backoff * 2.0 ** (retry - 1))
        return ceiling / 2 + rand() * ceiling / 2

    def after_response(
        self,
        attempt: int,
        status: int,
        headers: Mapping[str, str],
        *,
        safe: bool,
        now: dt.datetime | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before sending again after answer `status` to try number `attempt`
        (1 for the first); None: do not retry (answer it, or raise its problem)."""
        if not safe or status not in RETRY_STATUSES or attempt >= self.attempts:
            return None
        delay = self.backoff_delay(attempt, rand)
        retry_after = parse_retry_after(headers.get("retry-after"), now)
        if retry_after is not None:
            if retry_after > self.max_retry_after:
                return None
            delay = max(delay, retry_after)
        return delay

    def after_error(
        self,
        attempt: int,
        error: Exception,
        *,
        safe: bool,
        rand: Callable[[], float] = random.random,
    ) -> float | None:
        """Seconds to wait before sending again after `error` (an httpx transport error) on
        try number `attempt`; None: raise it."""
        if attempt >= self.attempts or not isinstance(error, httpx.TransportError):
            return None
        if not (safe or isinstance(error, _NOT_SENT)):
            return None
        if isinstance(error, httpx.UnsupportedProtocol | httpx.ProxyError):
            return None  # a configuration mistake: the same again fails the same way
        return self.backoff_delay(attempt, rand)


NO_RETRY = RetryPolicy(attempts=1)


def parse_retry_after(value: str | None, now: dt.datetime | None = None) -> float | None:
    """`Retry-After` in seconds: delay-seconds or an HTTP date (RFC 9110 10.2.3); None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    now = now or dt.datetime.now(dt.UTC)
    return max(0.0, (when - now).total_seconds())
