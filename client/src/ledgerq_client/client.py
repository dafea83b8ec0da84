"""The synchronous client, on `httpx.Client`."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Concatenate, ParamSpec, TypeVar, cast

import httpx
import msgspec

from ledgerq_client import _calls
from ledgerq_client._calls import Id
from ledgerq_client._core import (
    MAX_WAIT,
    Call,
    auth_headers,
    build_request,
    events,
    finish,
    problem_of,
    signature_with_self,
    stream_timeout,
)
from ledgerq_client.errors import TransportError
from ledgerq_client.models import Operation, Page
from ledgerq_client.retry import RetryPolicy

__all__ = ["LedgerqClient"]

log = logging.getLogger("ledgerq_client")

P = ParamSpec("P")
T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"


def _method(build: Callable[P, Call[T]]) -> Callable[Concatenate[LedgerqClient, P], T]:
    """A client method that builds its call with `build` and sends it."""

    def method(self: LedgerqClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._send(build(*args, **kwargs))

    return signature_with_self(method, build, "sync")


def _pages(
    build: Callable[P, Call[Page[T]]],
) -> Callable[Concatenate[LedgerqClient, P], Iterator[T]]:
    """`iter_...`: every item of a paged listing, page after page (`limit` is the page size,
    `cursor` where to start), following `next_cursor` until the last page."""

    def method(self: LedgerqClient, /, *args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        fetch = cast(Callable[..., Call[Page[T]]], build)
        cursor = kwargs.pop("cursor", None)
        while True:
            page = self._send(fetch(*args, **kwargs, cursor=cursor))
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    return signature_with_self(method, build, "sync", pages=True)


class LedgerqClient:
    """A ledgerq API client (synchronous; `AsyncLedgerqClient` is the same API awaited).

    Authenticate with one of `api_key` (sent as X-API-Key), `token` (a bearer token) or
    `basic` ((username, password)), or none for `register` and the probes. Answers are typed
    objects (`ledgerq_client.models`), money is `Decimal`; problems raise `LedgerqError`
    subclasses carrying the stable `code`. Safe calls (GETs, keyed submits, PUTs) are retried
    under `retry` (a `RetryPolicy`); others only when the connection could not be made.

    Use it as a context manager, or `close()` it. `http_client` lends an `httpx.Client` the
    client uses but does not close; `transport` sets the transport of the one it makes.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
        timeout: float | httpx.Timeout = 30.0,
        retry: RetryPolicy | None = None,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._auth = {**(headers or {}), **auth_headers(api_key, token, basic)}
        self._timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.retry = retry or RetryPolicy()
        self._owns_http = http_client is None
        self._http = http_client or httpx.Client(transport=transport, timeout=self._timeout)
        self._sleep: Callable[[float], None] = time.sleep

    # ------------------------------------------------------------ lifecycle

    def with_auth(
        self,
        *,
        api_key: str | None = None,
        token: str | None = None,
        basic: tuple[str, str] | None = None,
    ) -> LedgerqClient:
        """A client with other credentials, sharing this one's connections (close this one
        last; the new one does not close them)."""
        other = LedgerqClient(
            self.base_url,
            api_key=api_key,
            token=token,
            basic=basic,
            timeout=self._timeout,
            retry=self.retry,
            http_client=self._http,
        )
        other._sleep = self._sleep
        return other

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> LedgerqClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ------------------------------------------------------------ sending

    def _send(self, call: Call[T]) -> T:
        attempt = 0
        while True:
            attempt += 1
            request = build_request(self._http, self.base_url, call, self._auth, self._timeout)
            try:
                response = self._http.send(request)
            except httpx.TransportError as exc:
                delay = self.retry.after_error(attempt, exc, safe=call.safe)
                if delay is None:
                    raise TransportError(
                        f"{call.method} {call.path}: {type(exc).__name__}: {exc}",
                        idempotency_key=call.idempotency_key,
                    ) from exc
                log.info(
                    "retrying %s %s after %s (attempt %d, in %.2fs)",
                    call.method,
                    call.path,
                    type(exc).__name__,
                    attempt,
                    delay,
                )
                self._sleep(delay)
                continue
            delay = self.retry.after_response(
                attempt, response.status_code, response.headers, safe=call.safe
            )
            if delay is None:
                return finish(call, response)
            log.info(
                "retrying %s %s after %d (attempt %d, in %.2fs)",
                call.method,
                call.path,
                response.status_code,
                attempt,
                delay,
            )
            response.close()
            self._sleep(delay)

    # ------------------------------------------------------------ auth and keys

    register = _method(_calls.register)
    issue_token = _method(_calls.issue_token)
    revoke_token = _method(_calls.revoke_token)
    create_api_key = _method(_calls.create_api_key)
    list_api_keys = _method(_calls.list_api_keys)
    iter_api_keys = _pages(_calls.list_api_keys)
    revoke_api_key = _method(_calls.revoke_api_key)

    # ------------------------------------------------------------ accounts

    create_account = _method(_calls.create_account)
    list_accounts = _method(_calls.list_accounts)
    iter_accounts = _pages(_calls.list_accounts)
    get_account = _method(_calls.get_account)
    update_account = _method(_calls.update_account)
    close_account = _method(_calls.close_account)
    list_entries = _method(_calls.list_entries)
    iter_entries = _pages(_calls.list_entries)
    get_statement = _method(_calls.get_statement)

    def stream_statement_csv(
        self,
        account_id: Id,
        *,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
    ) -> Iterator[bytes]:
        """The account's statement for [since, until) as CSV (RFC 4180: a header row, an
        `opening_balance` row, one `entry` row per entry oldest first, a `closing_balance`
        row), in chunks as the API streams it: write them to a file. Not retried."""
        with self._stream(_calls._statement_csv(account_id, since, until)) as response:
            yield from response.iter_bytes()

    # ------------------------------------------------------------ operations and holds

    submit = _method(_calls.submit)
    submit_batch = _method(_calls.submit_batch)
    get_operation = _method(_calls.get_operation)
    list_operations = _method(_calls.list_operations)
    iter_operations = _pages(_calls.list_operations)
    cancel_operation = _method(_calls.cancel_operation)
    list_holds = _method(_calls.list_holds)
    iter_holds = _pages(_calls.list_holds)
    get_hold = _method(_calls.get_hold)

    def wait_for(self, operation_id: Id, *, timeout: float = 60.0) -> Operation:
        """The operation once it is final (succeeded, failed, cancelled), waiting with
        `Prefer: wait` up to `timeout` seconds; after that, as it is (check `is_final`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            wait = max(0, min(MAX_WAIT, math.ceil(left)))
            operation = self.get_operation(operation_id, wait=wait)
            if operation.is_final or time.monotonic() >= deadline:
                return operation

    def follow_operation(self, operation_id: Id) -> Iterator[Operation]:
        """The operation's states as server-sent events: as it is now, then its final state
        (then the iterator ends; an operation already final gives one). Not retried."""
        with self._stream(_calls._follow_operation(operation_id)) as response:
            for event in events(response.iter_lines()):
                if event.event == "operation":
                    yield msgspec.json.decode(event.data, type=Operation)

    @contextlib.contextmanager
    def _stream(self, call: Call[None]) -> Iterator[httpx.Response]:
        """A streamed answer (its problem raised); transport errors as `TransportError`."""
        request = build_request(
            self._http, self.base_url, call, self._auth, stream_timeout(self._timeout)
        )
        try:
            response = self._http.send(request, stream=True)
            try:
                if not response.is_success:
                    response.read()
                    raise problem_of(response)
                yield response
            finally:
                response.close()
        except httpx.TransportError as exc:
            raise TransportError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}") from exc

    # ------------------------------------------------------------ investments

    create_asset = _method(_calls.create_asset)
    list_assets = _method(_calls.list_assets)
    iter_assets = _pages(_calls.list_assets)
    get_asset = _method(_calls.get_asset)
    upsert_prices = _method(_calls.upsert_prices)
    list_prices = _method(_calls.list_prices)
    get_portfolio = _method(_calls.get_portfolio)
    list_clients = _method(_calls.list_clients)
    iter_clients = _pages(_calls.list_clients)
    list_client_allocations = _method(_calls.list_client_allocations)
    iter_client_allocations = _pages(_calls.list_client_allocations)
    get_captado = _method(_calls.get_captado)

    # ------------------------------------------------------------ webhooks

    create_webhook = _method(_calls.create_webhook)
    list_webhooks = _method(_calls.list_webhooks)
    iter_webhooks = _pages(_calls.list_webhooks)
    get_webhook = _method(_calls.get_webhook)
    delete_webhook = _method(_calls.delete_webhook)
    update_webhook = _method(_calls.update_webhook)
    rotate_webhook_secret = _method(_calls.rotate_webhook_secret)
    disable_webhook = _method(_calls.disable_webhook)
    enable_webhook = _method(_calls.enable_webhook)
    list_webhook_deliveries = _method(_calls.list_webhook_deliveries)
    iter_webhook_deliveries = _pages(_calls.list_webhook_deliveries)
    retry_webhook_delivery = _method(_calls.retry_webhook_delivery)

    # ------------------------------------------------------------ administration

    list_users = _method(_calls.list_users)
    iter_users = _pages(_calls.list_users)
    list_all_accounts = _method(_calls.list_all_accounts)
    iter_all_accounts = _pages(_calls.list_all_accounts)
    admin_update_account = _method(_calls.admin_update_account)
    freeze_account = _method(_calls.freeze_account)
    unfreeze_account = _method(_calls.unfreeze_account)
    get_queues = _method(_calls.get_queues)
    get_user_deposit_limits = _method(_calls.get_user_deposit_limits)
    set_user_deposit_limits = _method(_calls.set_user_deposit_limits)
    get_api_key_deposit_limits = _method(_calls.get_api_key_deposit_limits)
    set_api_key_deposit_limits = _method(_calls.set_api_key_deposit_limits)
    admin_deposit = _method(_calls.admin_deposit)
    admin_reversal = _method(_calls.admin_reversal)

    # ------------------------------------------------------------ probes

    health = _method(_calls.health)
    ready = _method(_calls.ready)
