"""ledgerq-client: a typed Python client for the ledgerq API.

    from decimal import Decimal
    from ledgerq_client import LedgerqClient

    with LedgerqClient("http://127.0.0.1:8000", basic=("alice", "correct-horse-battery")) as lq:
        account = lq.create_account("main", "checking", "USD")
        deposit = lq.submit("deposit", account_id=account.id, amount=Decimal("100.00"), wait=5)
        print(deposit.status, lq.get_account(account.id).balance)

`AsyncLedgerqClient` is the same API, awaited. Problems raise `LedgerqError` subclasses with
the stable `code`; `verify_signature` checks webhook deliveries.
"""

from ledgerq_client._version import __version__
from ledgerq_client.aio import AsyncLedgerqClient
from ledgerq_client.client import LedgerqClient
from ledgerq_client.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    LedgerqError,
    NotFound,
    OperationFailed,
    RateLimited,
    ServerError,
    SignatureError,
    TransportError,
    Unauthorized,
    Unavailable,
    Unprocessable,
)
from ledgerq_client.models import (
    Account,
    BatchOperation,
    BatchResult,
    CreatedAccount,
    Entry,
    Hold,
    Operation,
    Page,
    Statement,
    SubmittedOperation,
)
from ledgerq_client.retry import NO_RETRY, RetryPolicy
from ledgerq_client.webhooks import sign, verify_signature

__all__ = [
    "NO_RETRY",
    "Account",
    "AsyncLedgerqClient",
    "BadRequest",
    "BatchOperation",
    "BatchResult",
    "Conflict",
    "CreatedAccount",
    "Entry",
    "Forbidden",
    "Hold",
    "LedgerqClient",
    "LedgerqError",
    "NotFound",
    "Operation",
    "OperationFailed",
    "Page",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "SignatureError",
    "Statement",
    "SubmittedOperation",
    "TransportError",
    "Unauthorized",
    "Unavailable",
    "Unprocessable",
    "__version__",
    "sign",
    "verify_signature",
]
