"""Errors: every problem answer (RFC 9457) raised as a `LedgerqError` with its stable `code`.

The class follows the HTTP status (`NotFound` for 404, `Unprocessable` for 422, ...); the
`code` says what happened (`account_not_found`, `idempotency_key_reused`, ...) and is what to
branch on. `problem` holds the whole body, members particular to a code included (`field`,
`errors`, `required_scope`, `limit`, `remaining`, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from ledgerq_client.models import Operation

__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "LedgerqError",
    "NotFound",
    "OperationFailed",
    "RateLimited",
    "ServerError",
    "SignatureError",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "error_class_for",
]


class LedgerqError(Exception):
    """Anything the client raises about the API: a problem answer, a connection that failed,
    a failed operation, a webhook signature that does not verify.

    - `code`: the stable machine-readable code (`account_not_found`, `insufficient_funds`, ...);
    - `status`: the HTTP status of a problem answer; None when there was no answer;
    - `detail`: the human-readable explanation;
    - `problem`: the whole problem body (empty when there was none);
    - `retry_after`: seconds from a `Retry-After` header, if the answer had one;
    - `response`: the `httpx.Response` of a problem answer (headers such as `Location`).
    """

    def __init__(
        self,
        code: str,
        detail: str = "",
        *,
        status: int | None = None,
        problem: Mapping[str, Any] | None = None,
        retry_after: float | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        self.code = code
        self.detail = detail
        self.status = status
        self.problem: dict[str, Any] = dict(problem or {})
        self.retry_after = retry_after
        self.response = response
        super().__init__(self._message())

    def _message(self) -> str:
        head = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{head}: {self.detail}" if self.detail else head

    @property
    def field(self) -> str | None:
        """The request field the problem is about, when it names one."""
        value = self.problem.get("field")
        return value if isinstance(value, str) else None

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable (a Celery task may raise one), without the response.
        state = {k: v for k, v in self.__dict__.items() if k != "response"}
        return (_rebuild, (type(self), self.args), state)


def _rebuild(cls: type[LedgerqError], args: tuple[Any, ...]) -> LedgerqError:
    error = cls.__new__(cls)
    error.args = args
    error.response = None
    return error


class BadRequest(LedgerqError):
    """400: a malformed request (`malformed_body`, `idempotency_key_missing`, ...)."""


class Unauthorized(LedgerqError):
    """401: no credentials, wrong ones, an expired or revoked token (`unauthenticated`)."""


class Forbidden(LedgerqError):
    """403: authenticated but not allowed (`insufficient_scope`, `forbidden`)."""


class NotFound(LedgerqError):
    """404: no such resource, or someone else's (`account_not_found`, `operation_not_found`, ...)."""


class Conflict(LedgerqError):
    """409: the resource's state refuses it (`account_closed`, `operation_not_pending`, ...)."""


class Unprocessable(LedgerqError):
    """422: a well-formed request the API refuses (`validation_error`, `invalid_amount`,
    `idempotency_key_reused`, `deposit_limit_exceeded`, ...)."""

    @property
    def errors(self) -> list[Any]:
        """Validation errors, one per field, when the problem lists them."""
        value = self.problem.get("errors")
        return value if isinstance(value, list) else []


class RateLimited(LedgerqError):
    """429: too many requests (`rate_limited`, `too_many_failed_logins`,
    `deposit_limit_exceeded` until the rolling day frees room); see `retry_after`."""


class ServerError(LedgerqError):
    """5xx: the server failed (`internal_error`, ...)."""


class Unavailable(ServerError):
    """503: try again later (`backlog_full`, `database_unavailable`, ...); see `retry_after`."""


class TransportError(LedgerqError):
    """No answer: the connection failed, was dropped or timed out (after any retries). The
    underlying httpx exception is the `__cause__`. For a submit, retrying with the same
    idempotency key (the exception's `idempotency_key`) is safe."""

    def __init__(self, detail: str, *, idempotency_key: str | None = None) -> None:
        super().__init__("transport_error", detail)
        self.idempotency_key = idempotency_key


class OperationFailed(LedgerqError):
    """An operation that ended failed (or cancelled), from `Operation.raise_if_failed()`:
    `code` is the operation's error code (`insufficient_funds`, `account_frozen`, ...),
    `operation` the operation itself."""

    def __init__(self, operation: Operation) -> None:
        error = operation.error
        if error is not None:
            code, detail = error.code, error.message or ""
        else:
            code, detail = operation.status, f"the operation is {operation.status}"
        super().__init__(code, detail)
        self.operation = operation


class SignatureError(LedgerqError):
    """A webhook signature that does not verify (`signature_missing`, `signature_malformed`,
    `signature_expired`, `signature_mismatch`)."""


_BY_STATUS: dict[int, type[LedgerqError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    429: RateLimited,
    503: Unavailable,
}


def error_class_for(status: int) -> type[LedgerqError]:
    """The exception class a problem answer of this status is raised as."""
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    if status >= 500:
        return ServerError
    return LedgerqError
