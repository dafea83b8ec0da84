"""Webhooks: register an endpoint (its signing secret is shown once), list and read them, change
its URL, events or description, rotate the secret, disable and enable, delete; list an
endpoint's deliveries and resend one.

An endpoint gets the events of its owner's accounts; the admin may register one for every
account. Events are written by the transactions that apply or cancel operations (the outbox,
worker/store/webhooks.py) and sent by the dispatcher (worker/webhooks.py, `ledgerq dispatcher`).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Sequence
from typing import Any, Literal
from uuid import UUID

from litestar import Controller, Request, Response, delete, get, patch, post
from litestar.status_codes import HTTP_201_CREATED, HTTP_202_ACCEPTED

from api.auth import Principal, forbidden
from api.errors import ApiError
from api.pagination import Cursor, Keyset, Limit, page, reads
from api.presenters import webhook_delivery_out, webhook_out, webhook_with_secret
from api.schemas import (
    WebhookChange,
    WebhookCreate,
    WebhookDeliveryOut,
    WebhookDeliveryPage,
    WebhookOut,
    WebhookPage,
    WebhookSecretRotation,
    WebhookWithSecret,
)
from api.state import services_of
from domain.webhooks import WebhookUrlError, check_addresses, new_secret, parse_endpoint_url
from worker.store import queries
from worker.store import webhooks as store

NO_STORE = {"Cache-Control": "no-store"}
WEBHOOKS = Keyset.by_id("webhook")
DELIVERIES = Keyset.by_id("webhook_delivery")
# How long registration waits for the endpoint's host to resolve.
RESOLVE_TIMEOUT = 5.0


def webhook_not_found() -> ApiError:
    return ApiError(404, "webhook_not_found", "No such webhook endpoint.")


def managed_by(principal: Principal) -> UUID | None:
    """Whose endpoints the principal manages: its own; the admin's are everyone's (None)."""
    return None if principal.is_admin else principal.id


async def resolve(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await asyncio.wait_for(
        loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), RESOLVE_TIMEOUT
    )
    return [str(info[4][0]) for info in infos]


async def check_url(url: str, allow_private: bool) -> None:
    """The URL's form, then every address its host resolves to now (the dispatcher checks again
    before each delivery: DNS may change)."""
    try:
        parsed = parse_endpoint_url(url)
        try:
            addresses = await resolve(parsed.host, parsed.port)
        except (OSError, TimeoutError, UnicodeError, ValueError):
            # UnicodeError: a host name IDNA cannot encode (an empty or overlong label).
            raise WebhookUrlError(f"the host {parsed.host} does not resolve") from None
        check_addresses(addresses, allow_private)
    except WebhookUrlError as exc:
        raise ApiError(422, "webhook_url_not_allowed", str(exc), field="url") from None


def distinct(events: Sequence[str]) -> list[str]:
    """The event types once each, in the order given."""
    return sorted(set(events), key=events.index)


class WebhookController(Controller):
    path = "/api/v1/webhooks"
    tags = ["webhooks"]

    @post("/", operation_id="createWebhook", status_code=HTTP_201_CREATED)
    async def create_webhook(
        self, request: Request[Principal, Any, Any], data: WebhookCreate
    ) -> Response[WebhookWithSecret]:
        """Register an endpoint for your accounts' events (the admin: with `all_accounts`, every
        account's). The answer holds the signing secret; it is not shown again (rotate it to get
        a new one).

        Each event is POSTed as JSON with `Ledgerq-Event-Id` (stable across retries) and
        `Ledgerq-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">`. Anything but a
        2xx answer within LEDGERQ_WEBHOOK_TIMEOUT is retried with exponential backoff for
        LEDGERQ_WEBHOOK_RETRY_PERIOD; 409 `webhook_limit_reached` past 20 endpoints.
        """
        principal = request.user
        services = services_of(request.app)
        if data.all_accounts and not principal.is_admin:
            raise forbidden(
                "forbidden", "Only the admin may register an endpoint for every account."
            )
        # The master key is no user and owns no account: its endpoints are for every account.
        owner = None if data.all_accounts or principal.method == "master_key" else principal.id
        await check_url(data.url, services.settings.webhooks_allow_private)
        secret = new_secret()
        events = distinct(data.events)
        async with services.engine.begin() as conn:
            await store.lock_owner(conn, owner)
            if await store.endpoint_count(conn, owner) >= store.MAX_ENDPOINTS:
                raise ApiError(
                    409,
                    "webhook_limit_reached",
                    f"At most {store.MAX_ENDPOINTS} endpoints; delete one first.",
                )
            row = await store.create_endpoint(
                conn,
                owner_id=owner,
                created_by=principal.id,
                url=data.url,
                events=events,
                description=data.description,
                secret=secret,
            )
        return Response(
            webhook_with_secret(row, secret), status_code=HTTP_201_CREATED, headers=NO_STORE
        )

    @get("/", operation_id="listWebhooks")
    async def list_webhooks(
        self, request: Request[Principal, Any, Any], limit: Limit = 100, cursor: Cursor = None
    ) -> WebhookPage:
        """Your endpoints, oldest first, without secrets (the admin sees every one)."""
        fetch = reads(
            services_of(request.app).reads, store.endpoints_page, managed_by(request.user)
        )
        return await page(WEBHOOKS, cursor, limit, fetch, webhook_out)

    @get("/{webhook_id:uuid}", operation_id="getWebhook")
    async def get_webhook(
        self, request: Request[Principal, Any, Any], webhook_id: UUID
    ) -> WebhookOut:
        """One endpoint: its events, whether it is enabled (and if not, why), since when its
        deliveries fail."""
        async with services_of(request.app).reads.connect() as conn:
            row = await store.endpoint(conn, webhook_id, managed_by(request.user))
        if row is None:
            raise webhook_not_found()
        return webhook_out(row)

    @patch("/{webhook_id:uuid}", operation_id="updateWebhook")
    async def update_webhook(
        self, request: Request[Principal, Any, Any], webhook_id: UUID, data: WebhookChange
    ) -> WebhookOut:
        """Change an endpoint's URL (checked as at registration: 422 `webhook_url_not_allowed`),
        its events (from now on) or its description (`""` removes it); absent fields stay. The
        secret, the enabled state and the deliveries stay: pending ones go to the new URL."""
        services = services_of(request.app)
        changes: dict[str, Any] = {}
        if data.url is not None:
            await check_url(data.url, services.settings.webhooks_allow_private)
            changes["url"] = data.url
        if data.events is not None:
            changes["events"] = distinct(data.events)
        if data.description is not None:
            changes["description"] = data.description or None
        async with services.engine.begin() as conn:
            row = await store.update_endpoint(conn, webhook_id, managed_by(request.user), changes)
        if row is None:
            raise webhook_not_found()
        return webhook_out(row)

    @delete("/{webhook_id:uuid}", operation_id="deleteWebhook")
    async def delete_webhook(self, request: Request[Principal, Any, Any], webhook_id: UUID) -> None:
        """Delete the endpoint and its deliveries: nothing more is sent to it."""
        async with services_of(request.app).engine.begin() as conn:
            if not await store.delete_endpoint(conn, webhook_id, managed_by(request.user)):
                raise webhook_not_found()

    @post("/{webhook_id:uuid}/rotate-secret", operation_id="rotateWebhookSecret", status_code=200)
    async def rotate_secret(
        self,
        request: Request[Principal, Any, Any],
        webhook_id: UUID,
        data: WebhookSecretRotation | None = None,
    ) -> Response[WebhookWithSecret]:
        """A new signing secret, shown in this answer only. The previous one keeps signing too
        (a second `v1` in `Ledgerq-Signature`) for `previous_secret_valid_for` seconds (a day
        unless given), so receivers can switch without losing an event."""
        grace = (data or WebhookSecretRotation()).previous_secret_valid_for
        secret = new_secret()
        async with services_of(request.app).engine.begin() as conn:
            row = await store.rotate_secret(
                conn, webhook_id, managed_by(request.user), secret, grace
            )
        if row is None:
            raise webhook_not_found()
        return Response(webhook_with_secret(row, secret), headers=NO_STORE)

    @post("/{webhook_id:uuid}/disable", operation_id="disableWebhook", status_code=200)
    async def disable_webhook(
        self, request: Request[Principal, Any, Any], webhook_id: UUID
    ) -> WebhookOut:
        """Stop sending: no event is recorded for it while disabled, and its pending deliveries
        wait until it is enabled again."""
        principal = request.user
        async with services_of(request.app).engine.begin() as conn:
            row = await store.set_enabled(
                conn,
                webhook_id,
                managed_by(principal),
                enabled=False,
                reason=f"disabled by {principal.username}",
            )
        if row is None:
            raise webhook_not_found()
        return webhook_out(row)

    @post("/{webhook_id:uuid}/enable", operation_id="enableWebhook", status_code=200)
    async def enable_webhook(
        self, request: Request[Principal, Any, Any], webhook_id: UUID
    ) -> WebhookOut:
        """Send again (its URL is checked again first): pending deliveries resume, new events are
        recorded from now on, the failure clock starts over."""
        services = services_of(request.app)
        owner = managed_by(request.user)
        async with services.reads.connect() as conn:
            current = await store.endpoint_url(conn, webhook_id, owner)
        if current is None:
            raise webhook_not_found()
        await check_url(current, services.settings.webhooks_allow_private)
        async with services.engine.begin() as conn:
            row = await store.set_enabled(conn, webhook_id, owner, enabled=True)
        if row is None:
            raise webhook_not_found()
        return webhook_out(row)

    @get("/{webhook_id:uuid}/deliveries", operation_id="listWebhookDeliveries")
    async def list_deliveries(
        self,
        request: Request[Principal, Any, Any],
        webhook_id: UUID,
        limit: Limit = 100,
        cursor: Cursor = None,
        status: Literal["pending", "succeeded", "failed"] | None = None,
    ) -> WebhookDeliveryPage:
        """The endpoint's deliveries, newest first: each event's status, attempts (time, duration,
        response code, error) and next try."""
        services = services_of(request.app)
        owner = managed_by(request.user)

        async def fetch(before: UUID | None, n: int) -> Sequence[queries.Record]:
            async with services.reads.connect() as conn:
                if await store.endpoint(conn, webhook_id, owner) is None:
                    raise webhook_not_found()
                return await store.deliveries_page(conn, webhook_id, status, before, n)

        return await page(DELIVERIES, cursor, limit, fetch, webhook_delivery_out)

    @post(
        "/{webhook_id:uuid}/deliveries/{delivery_id:uuid}/retry",
        operation_id="retryWebhookDelivery",
        status_code=HTTP_202_ACCEPTED,
    )
    async def retry_delivery(
        self, request: Request[Principal, Any, Any], webhook_id: UUID, delivery_id: UUID
    ) -> WebhookDeliveryOut:
        """Send this delivery again now (the dispatcher takes it within LEDGERQ_WEBHOOK_INTERVAL),
        with the same event id. One that had given up gets one more attempt. 409
        `webhook_disabled` while the endpoint is disabled: enable it first."""
        async with services_of(request.app).engine.begin() as conn:
            endpoint = await store.endpoint(conn, webhook_id, managed_by(request.user))
            if endpoint is None:
                raise webhook_not_found()
            if not endpoint.enabled:
                raise ApiError(
                    409, "webhook_disabled", "The endpoint is disabled; enable it first."
                )
            row = await store.retry_delivery(conn, webhook_id, delivery_id)
        if row is None:
            raise ApiError(404, "webhook_delivery_not_found", "No such delivery.")
        return webhook_delivery_out(row)
