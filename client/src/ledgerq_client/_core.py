"""The transport core both clients share: what a call is, how it becomes an httpx request, how
an answer becomes a typed object or a `LedgerqError`, and server-sent events.

No I/O here: `client.py` (httpx.Client) and `aio.py` (httpx.AsyncClient) only send, sleep and
loop (`_send`), the same few lines each.
"""

from __future__ import annotations

import base64
import datetime as dt
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Generic, Literal, TypeVar
from uuid import UUID

import httpx
import msgspec

from ledgerq_client._util import decimal_text
from ledgerq_client._version import __version__
from ledgerq_client.errors import LedgerqError, error_class_for
from ledgerq_client.retry import parse_retry_after

T = TypeVar("T")

USER_AGENT = f"ledgerq-client/{__version__}"
MAX_WAIT = 30  # the API caps Prefer: wait at LEDGERQ_MAX_WAIT (30 by default)

# operationId (as the API's OpenAPI document names it) -> method and path. Every route a client
# method calls is here; tests/integration/test_client.py compares it with the live document.
ROUTES: dict[str, tuple[str, str]] = {
    # auth
    "register": ("POST", "/api/v1/auth/register"),
    "issueToken": ("POST", "/api/v1/auth/token"),
    "revokeToken": ("POST", "/api/v1/auth/revoke"),
    # API keys
    "createApiKey": ("POST", "/api/v1/api-keys"),
    "listApiKeys": ("GET", "/api/v1/api-keys"),
    "revokeApiKey": ("DELETE", "/api/v1/api-keys/{key_id}"),
    # accounts
    "createAccount": ("POST", "/api/v1/accounts"),
    "listAccounts": ("GET", "/api/v1/accounts"),
    "getAccount": ("GET", "/api/v1/accounts/{account_id}"),
    "updateAccount": ("PATCH", "/api/v1/accounts/{account_id}"),
    "closeAccount": ("POST", "/api/v1/accounts/{account_id}/close"),
    "listEntries": ("GET", "/api/v1/accounts/{account_id}/entries"),
    "getStatement": ("GET", "/api/v1/accounts/{account_id}/statement"),
    # operations
    "submitOperation": ("POST", "/api/v1/operations"),
    "submitOperationBatch": ("POST", "/api/v1/operations/batch"),
    "getOperation": ("GET", "/api/v1/operations/{operation_id}"),
    "listOperations": ("GET", "/api/v1/operations"),
    "cancelOperation": ("DELETE", "/api/v1/operations/{operation_id}"),
    "followOperation": ("GET", "/api/v1/operations/{operation_id}/events"),
    # holds
    "listHolds": ("GET", "/api/v1/holds"),
    "getHold": ("GET", "/api/v1/holds/{hold_id}"),
    # investments
    "createAsset": ("POST", "/api/v1/assets"),
    "listAssets": ("GET", "/api/v1/assets"),
    "getAsset": ("GET", "/api/v1/assets/{asset_id}"),
    "upsertPrices": ("POST", "/api/v1/assets/{asset_id}/prices"),
    "listPrices": ("GET", "/api/v1/assets/{asset_id}/prices"),
    "getPortfolio": ("GET", "/api/v1/portfolio"),
    "listClients": ("GET", "/api/v1/clients"),
    "listClientAllocations": ("GET", "/api/v1/clients/{client_id}/allocations"),
    "getCaptado": ("GET", "/api/v1/reports/captado"),
    # webhooks
    "createWebhook": ("POST", "/api/v1/webhooks"),
    "listWebhooks": ("GET", "/api/v1/webhooks"),
    "getWebhook": ("GET", "/api/v1/webhooks/{webhook_id}"),
    "deleteWebhook": ("DELETE", "/api/v1/webhooks/{webhook_id}"),
    "updateWebhook": ("PATCH", "/api/v1/webhooks/{webhook_id}"),
    "rotateWebhookSecret": ("POST", "/api/v1/webhooks/{webhook_id}/rotate-secret"),
    "disableWebhook": ("POST", "/api/v1/webhooks/{webhook_id}/disable"),
    "enableWebhook": ("POST", "/api/v1/webhooks/{webhook_id}/enable"),
    "listWebhookDeliveries": ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"),
    "retryWebhookDelivery": (
        "POST",
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry",
    ),
    # administration
    "listUsers": ("GET", "/api/v1/admin/users"),
    "listAllAccounts": ("GET", "/api/v1/admin/accounts"),
    "adminUpdateAccount": ("PATCH", "/api/v1/admin/accounts/{account_id}"),
    "freezeAccount": ("POST", "/api/v1/admin/accounts/{account_id}/freeze"),
    "unfreezeAccount": ("POST", "/api/v1/admin/accounts/{account_id}/unfreeze"),
    "listQueues": ("GET", "/api/v1/admin/queues"),
    "getUserDepositLimits": ("GET", "/api/v1/admin/users/{client_id}/deposit-limits"),
    "setUserDepositLimits": ("PUT", "/api/v1/admin/users/{client_id}/deposit-limits"),
    "getApiKeyDepositLimits": ("GET", "/api/v1/admin/api-keys/{key_id}/deposit-limits"),
    "setApiKeyDepositLimits": ("PUT", "/api/v1/admin/api-keys/{key_id}/deposit-limits"),
    "adminDeposit": ("POST", "/api/v1/admin/deposits"),
    "adminReversal": ("POST", "/api/v1/admin/reversals"),
    # probes
    "health": ("GET", "/health"),
    "ready": ("GET", "/ready"),
}


# ---------------------------------------------------------------- credentials


def auth_headers(
    api_key: str | None = None,
    token: str | None = None,
    basic: tuple[str, str] | None = None,
) -> dict[str, str]:
    """The header of at most one credential (the API refuses two at once)."""
    given = [c for c in (api_key, token, basic) if c is not None]
    if len(given) > 1:
        raise ValueError("give at most one of api_key, token and basic")
    if api_key is not None:
        return {"X-API-Key": api_key}
    if token is not None:
        return {"Authorization": f"Bearer {token}"}
    if basic is not None:
        username, password = basic
        pair = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    return {}


# ---------------------------------------------------------------- calls


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call, ready to send (and to send again, byte for byte).

    `safe`: sending it twice does nothing twice (a GET, a keyed submit, a PUT), so it may be
    retried after the request might have reached the server. `ok`: statuses besides 2xx whose
    body is an answer, not a problem (`/ready` answers 503 with its checks)."""

    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: tuple[tuple[str, str], ...] = ()
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    safe: bool = False
    idempotency_key: str | None = None
    wait: int | None = None
    ok: frozenset[int] = frozenset()

    def timeout(self, default: httpx.Timeout) -> httpx.Timeout:
        """A `Prefer: wait=N` answer may take N seconds: the read timeout allows for it."""
        if self.wait is None or default.read is None:
            return default
        return httpx.Timeout(
            connect=default.connect,
            read=max(default.read, self.wait + 10.0),
            write=default.write,
            pool=default.pool,
        )


# The API sends a comment on a quiet event stream every 15 seconds.
STREAM_READ_TIMEOUT = 60.0


def stream_timeout(default: httpx.Timeout) -> httpx.Timeout:
    """An event stream may be quiet between keep-alives: the read timeout allows for them."""
    read = None if default.read is None else max(default.read, STREAM_READ_TIMEOUT)
    return httpx.Timeout(connect=default.connect, read=read, write=default.write, pool=default.pool)


def path_of(route: str, /, **ids: UUID | str) -> tuple[str, str]:
    method, template = ROUTES[route]
    return method, template.format(**{name: str(value) for name, value in ids.items()})


def wait_header(wait: int | None) -> dict[str, str]:
    if wait is None:
        return {}
    if isinstance(wait, bool) or not isinstance(wait, int) or wait < 0:
        raise ValueError(f"wait must be a whole number of seconds >= 0, got {wait!r}")
    return {"Prefer": f"wait={min(wait, MAX_WAIT)}"}


# ---------------------------------------------------------------- bodies and queries


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


_encoder = msgspec.json.Encoder()


def encode_body(fields: Mapping[str, Any]) -> bytes:
    """A JSON body of the fields that are not None; decimals as plain decimal strings."""
    return _encoder.encode({k: _jsonable(v) for k, v in fields.items() if v is not None})


def query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return decimal_text(value)
    return str(value)


def query(*pairs: tuple[str, Any]) -> tuple[tuple[str, str], ...]:
    """Query parameters without the None ones."""
    return tuple((name, query_text(value)) for name, value in pairs if value is not None)


# ---------------------------------------------------------------- answers


def decoder(kind: type[T]) -> Callable[[httpx.Response], T]:
    typed = msgspec.json.Decoder(kind)

    def decode(response: httpx.Response) -> T:
        return typed.decode(response.content)

    return decode


def no_content(response: httpx.Response) -> None:
    return None


def problem_of(response: httpx.Response) -> LedgerqError:
    """The exception a non-success answer is raised as (a problem body, or whatever came)."""
    status = response.status_code
    body: Any = None
    try:
        body = msgspec.json.decode(response.content)
    except msgspec.DecodeError:
        body = None
    if not isinstance(body, dict):
        text = response.text.strip()[:500] if response.content else ""
        body = {"status": status, "detail": text or response.reason_phrase}
    code = body.get("code")
    if not isinstance(code, str) or not code:
        code = f"http_{status}"
    detail = body.get("detail")
    return error_class_for(status)(
        code,
        detail if isinstance(detail, str) else "",
        status=status,
        problem=body,
        retry_after=parse_retry_after(response.headers.get("retry-after")),
        response=response,
    )


def finish(call: Call[T], response: httpx.Response) -> T:
    """The call's typed answer, or its problem raised."""
    if response.is_success or response.status_code in call.ok:
        return call.decode(response)
    raise problem_of(response)


def build_request(
    http: httpx.Client | httpx.AsyncClient,
    base_url: str,
    call: Call[Any],
    auth: Mapping[str, str],
    timeout: httpx.Timeout,
) -> httpx.Request:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **auth, **call.headers}
    if call.body is not None:
        headers["Content-Type"] = "application/json"
    return http.build_request(
        call.method,
        base_url + call.path,
        params=list(call.params) or None,
        content=call.body,
        headers=headers,
        timeout=call.timeout(timeout),
    )


# ---------------------------------------------------------------- client methods

F = TypeVar("F", bound=Callable[..., Any])


def signature_with_self(
    method: F, build: Callable[..., Any], flavour: Literal["sync", "async"], *, pages: bool = False
) -> F:
    """Name, document and sign a client method made from a route's builder (`_calls`), so
    `help()` and `inspect.signature` show the route's own parameters and what the method
    returns."""
    name = build.__name__
    if pages:
        name = "iter_" + name.removeprefix("list_")
    signature = inspect.signature(build)
    answer = str(signature.return_annotation)
    answer = answer.removeprefix("Call[").removesuffix("]")
    if pages:
        item = answer.removeprefix("Page[").removesuffix("]")
        answer = f"Iterator[{item}]" if flavour == "sync" else f"AsyncIterator[{item}]"
    elif flavour == "async":
        answer = f"Awaitable[{answer}]"
    this = inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY)
    signature = signature.replace(
        parameters=[this, *signature.parameters.values()], return_annotation=answer
    )
    setattr(method, "__signature__", signature)  # noqa: B010
    method.__name__ = name
    method.__qualname__ = name
    doc = inspect.cleandoc(build.__doc__ or "")
    if pages:
        doc = (
            f"Every item of `{build.__name__}`, page after page (`limit`: the page size; "
            f"`cursor`: where to start), following `next_cursor`.\n\n{doc}"
        )
    method.__doc__ = doc
    return method


# ---------------------------------------------------------------- server-sent events


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None


class EventParser:
    """Server-sent events (the HTML standard's parsing rules), fed one line at a time."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def feed(self, line: str) -> Event | None:
        """One line without its end; an `Event` when the line completes one."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = Event(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id":
            self._id = value
        return None


def events(lines: Iterable[str]) -> Iterable[Event]:
    parser = EventParser()
    for line in lines:
        event = parser.feed(line.rstrip("\r\n"))
        if event is not None:
            yield event
