"""Domain errors and failure codes, stable strings that the HTTP edge maps to problem details."""

from __future__ import annotations

INVALID_AMOUNT = "invalid_amount"
UNKNOWN_CURRENCY = "unknown_currency"
IDEMPOTENCY_KEY_MISSING = "idempotency_key_missing"
IDEMPOTENCY_KEY_INVALID = "idempotency_key_invalid"

# Codes an operation fails with when the ledger rejects it (apply.Rejected.code).
INSUFFICIENT_FUNDS = "insufficient_funds"
ACCOUNT_NOT_FOUND = "account_not_found"
CURRENCY_MISMATCH = "currency_mismatch"
SAME_ACCOUNT = "same_account"
BALANCE_LIMIT = "balance_limit_exceeded"
INSUFFICIENT_UNITS = "insufficient_units"
PRICE_UNAVAILABLE = "price_unavailable"
ASSET_NOT_FOUND = "asset_not_found"
AMOUNT_TOO_SMALL = "amount_too_small"
HOLD_CLOSED = "hold_closed"
ACCOUNT_FROZEN = "account_frozen"
ACCOUNT_CLOSED = "account_closed"
ACCOUNT_NOT_EMPTY = "account_not_empty"
NOT_REVERSIBLE = "not_reversible"
REVERSAL_EXCEEDS_ORIGINAL = "reversal_exceeds_original"


class DomainError(Exception):
    """A rule was broken by the input; `code` is stable, `message` is for people."""

    code: str
    message: str
    field: str | None

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def __reduce__(self) -> tuple[object, tuple[type[DomainError], str, str, str | None]]:
        # The default reduce calls cls(*args) with args == (message,), which does not fit
        # these constructors; errors may cross processes (Celery, multiprocessing).
        return (_rebuild, (type(self), self.code, self.message, self.field))


def _rebuild(cls: type[DomainError], code: str, message: str, field: str | None) -> DomainError:
    error = cls.__new__(cls)
    DomainError.__init__(error, code, message, field)
    return error


class InvalidAmount(DomainError):
    """An amount is malformed, not positive, too precise for its currency, or too large."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(INVALID_AMOUNT, message, field)


class UnknownCurrency(DomainError):
    """A currency is not a supported ISO 4217 code."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(UNKNOWN_CURRENCY, message, field)


class InvalidIdempotencyKey(DomainError):
    """The Idempotency-Key header is missing (IDEMPOTENCY_KEY_MISSING) or malformed."""

    def __init__(
        self, message: str, field: str | None = None, *, code: str = IDEMPOTENCY_KEY_INVALID
    ) -> None:
        super().__init__(code, message, field)
