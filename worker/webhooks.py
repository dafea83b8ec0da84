"""The webhook dispatcher: Celery tasks on their own queue (`ledgerq.webhooks`, consumed by
`ledgerq dispatcher`, never by the partition workers), so a slow receiver never delays money.

It has a Celery app of its own (`worker.webhooks:app`, the same configuration and broker as
worker/celery_app.py): the partition workers' app starts partition leases on `worker_ready`,
which a dispatcher must not take. Each dispatcher looks at PostgreSQL every
LEDGERQ_WEBHOOK_INTERVAL seconds (a thread, `_start_polling`); a dispatch that finds work rings
the queue once more, so idle task threads join in. Nothing is kept in Redis: the work list is
PostgreSQL's (worker/store/webhooks.py), so a lost ring, a Redis restart or a dead dispatcher
only delays a delivery. Beat does not ring it: its rings piled up in Redis where no dispatcher
ran.

Each delivery: claim it (FOR UPDATE SKIP LOCKED, then a lease, committed), check the host's
addresses again (DNS may have changed since registration) and connect to the address checked,
POST the signed body (no redirects, LEDGERQ_WEBHOOK_TIMEOUT, at most RESPONSE_BODY_LIMIT bytes of
the answer read), record the attempt, schedule the next try with backoff and jitter or give up.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import logging
import random
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import msgspec
import structlog
from celery import Celery, signals
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from domain.webhooks import (
    DELIVERY_ID_HEADER,
    EVENT_ID_HEADER,
    EVENT_TYPE_HEADER,
    RESPONSE_BODY_LIMIT,
    SIGNATURE_HEADER,
    WebhookUrlError,
    check_addresses,
    event_body,
    parse_endpoint_url,
    retry_delay,
    signature_header,
)
from worker.routing import WEBHOOK_DISPATCH_TASK
from worker.settings import Settings, get_settings
from worker.store.db import make_engine
from worker.store.webhooks import claim_due, record_attempt

log = structlog.get_logger(__name__)

app = Celery("ledgerq")
app.config_from_object("worker.celeryconfig")

APPLICATION_NAME = "ledgerq-dispatcher"
USER_AGENT = "ledgerq-webhooks/1"
# A dispatch task works this long at most, then leaves the thread to the next ring.
DISPATCH_BUDGET = 10.0
# Deliveries claimed per round trip by one task (each is sent before the next claim).
CLAIM_BATCH = 1
# What the error column keeps of a receiver's answer to a failed attempt.
ERROR_BODY_CHARS = 300


@dataclass(frozen=True)
class Resources:
    engine: Engine
    http: httpx.Client


@functools.cache
def resources() -> Resources:
    """Per process; the task threads share them. At most 2 PostgreSQL connections (each held for
    a claim or a record, never during a request)."""
    settings = get_settings()
    return Resources(
        engine=make_engine(
            settings.database_url,
            pool_size=2,
            max_overflow=0,
            pre_ping=False,
            application_name=APPLICATION_NAME,
        ),
        http=httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(settings.webhook_timeout),
            # No connection reuse: each request goes to the address just checked, and a TLS
            # connection verified for one host name must never carry another's request.
            limits=httpx.Limits(max_keepalive_connections=0),
            # Proxies from the environment would connect elsewhere than the address checked.
            trust_env=False,
        ),
    )


def lease_seconds(settings: Settings) -> float:
    """How long a claim lasts: the name lookup, the connection, the request and the answer each
    take at most LEDGERQ_WEBHOOK_TIMEOUT; a dispatcher that dies leaves the delivery due again
    after this, with the same event id."""
    return 2 * settings.webhook_timeout + 10


@dataclass(frozen=True)
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


# Name lookups run on these threads, so a delivery waits at most LEDGERQ_WEBHOOK_TIMEOUT for one
# (getaddrinfo has no timeout of its own, and a slow resolver would otherwise hold the delivery's
# thread past its claim's lease): a lookup that hangs keeps a lookup thread, not the delivery.
_LOOKUPS = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook-dns")


def resolve(host: str, port: int, timeout: float) -> list[str]:
    future = _LOOKUPS.submit(socket.getaddrinfo, host, port, type=socket.SOCK_STREAM)
    try:
        infos = future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise OSError(f"no answer within {timeout:g} s") from None
    return [str(info[4][0]) for info in infos]


def send(
    http: httpx.Client, settings: Settings, delivery: Any, now: float | None = None
) -> Attempt:
    """One attempt: check the URL and its addresses, POST the signed body to the first address,
    read at most RESPONSE_BODY_LIMIT bytes of the answer."""
    started = time.monotonic()

    def done(status_code: int | None, error: str | None) -> Attempt:
        return Attempt(status_code, error, int((time.monotonic() - started) * 1000))

    try:
        url = parse_endpoint_url(delivery.url)
        try:
            addresses = resolve(url.host, url.port, settings.webhook_timeout)
        except (OSError, UnicodeError, ValueError) as exc:
            raise WebhookUrlError(f"the host {url.host} does not resolve: {exc}") from None
        address = check_addresses(addresses, settings.webhooks_allow_private)[0]
    except WebhookUrlError as exc:
        return done(None, f"refused: {exc}")
    body = msgspec.json.encode(
        event_body(delivery.event_id, delivery.event_type, delivery.created_at, delivery.payload)
    )
    signing = [delivery.secret, *([delivery.previous_secret] if delivery.previous_secret else [])]
    timestamp = int(time.time() if now is None else now)
    headers = {
        "Host": url.host_header,
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_ID_HEADER: str(delivery.event_id),
        EVENT_TYPE_HEADER: delivery.event_type,
        DELIVERY_ID_HEADER: str(delivery.id),
        SIGNATURE_HEADER: signature_header(signing, timestamp, body),
    }
    # TLS: the server name sent and verified is the URL's host, not the address.
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    try:
        with http.stream(
            "POST", url.url_for(address), content=body, headers=headers, extensions=extensions
        ) as response:
            answer = b""
            deadline = started + settings.webhook_timeout * 2
            for chunk in response.iter_raw():
                answer += chunk
                if len(answer) >= RESPONSE_BODY_LIMIT or time.monotonic() > deadline:
                    break
            status = response.status_code
    except httpx.TimeoutException as exc:
        return done(None, f"timed out after {settings.webhook_timeout:g} s ({type(exc).__name__})")
    except httpx.HTTPError as exc:
        return done(None, f"{type(exc).__name__}: {exc}"[:ERROR_BODY_CHARS])
    if 200 <= status < 300:
        return done(status, None)
    text = answer[:RESPONSE_BODY_LIMIT].decode("utf-8", errors="replace").strip()
    return done(status, f"HTTP {status}" + (f": {text[:ERROR_BODY_CHARS]}" if text else ""))


def deliver(res: Resources, settings: Settings, claim: uuid.UUID, delivery: Any) -> Attempt:
    """Send a claimed delivery and record the attempt: succeeded, retried later, or given up."""
    attempted_at = dt.datetime.now(dt.UTC)
    try:
        attempt = send(res.http, settings, delivery)
    except Exception as exc:  # a bug: record it as a failed attempt, so backoff and give-up apply
        log.exception("webhook_send_crashed", delivery_id=str(delivery.id))
        attempt = Attempt(None, f"internal error: {type(exc).__name__}", 0)
    number = delivery.attempts + 1
    if attempt.succeeded:
        status, delay = "succeeded", 0.0
    elif attempted_at >= delivery.give_up_at:
        status, delay = "failed", 0.0
    else:
        status = "pending"
        delay = retry_delay(
            number, settings.webhook_backoff_base, settings.webhook_backoff_max, random.random()
        )
    with res.engine.begin() as conn:
        endpoint = record_attempt(
            conn,
            delivery_id=delivery.id,
            endpoint_id=delivery.endpoint_id,
            claim=claim,
            status=status,
            attempted_at=attempted_at,
            duration_ms=attempt.duration_ms,
            status_code=attempt.status_code,
            error=attempt.error,
            delay=delay,
            period=settings.webhook_retry_period,
        )
    fields = {
        "delivery_id": str(delivery.id),
        "event_id": str(delivery.event_id),
        "event_type": delivery.event_type,
        "endpoint_id": str(delivery.endpoint_id),
        "attempt": number,
        "status_code": attempt.status_code,
        "duration_ms": attempt.duration_ms,
    }
    if endpoint is None:
        log.warning("webhook_claim_lost", **fields)
    elif attempt.succeeded:
        log.info("webhook_delivered", **fields)
    else:
        log.warning(
            "webhook_attempt_failed",
            **fields,
            error=attempt.error,
            gave_up=status == "failed",
            retry_in=round(delay, 1) if status == "pending" else None,
        )
        if not endpoint[0]:
            log.warning(
                "webhook_endpoint_disabled", endpoint_id=fields["endpoint_id"], reason=endpoint[1]
            )
    return attempt


def ring(settings: Settings) -> None:
    """One more dispatch message (routed to the webhook queue); stale after a few intervals.
    Best effort and never waiting on the broker: with Redis down, a retrying publish held the
    dispatch threads (and the producer pool) until nothing was sent even after Redis came back;
    the PostgreSQL poll (`_start_polling`) finds the work anyway."""
    try:
        app.send_task(WEBHOOK_DISPATCH_TASK, expires=settings.webhook_interval * 5, retry=False)
    except Exception as exc:  # a ring is an accelerator, never a requirement
        log.debug("webhook_ring_failed", error=str(exc).splitlines()[0] if str(exc) else "")


@app.task(name=WEBHOOK_DISPATCH_TASK)
def dispatch() -> int:
    """Send what is due, one claim at a time, for up to DISPATCH_BUDGET seconds; the number of
    attempts made. Rings once more when it found work, so another thread takes the rest."""
    settings = get_settings()
    res = resources()
    deadline = time.monotonic() + DISPATCH_BUDGET
    attempts = 0
    try:
        while time.monotonic() < deadline:
            claim = uuid.uuid4()
            with res.engine.begin() as conn:
                due = claim_due(
                    conn,
                    claim,
                    CLAIM_BATCH,
                    lease_seconds(settings),
                    settings.webhook_retry_period,
                )
            if not due:
                break
            if attempts == 0:
                ring(settings)  # best effort: it never raises
            for delivery in due:
                deliver(res, settings, claim, delivery)
                attempts += 1
    except OperationalError as exc:
        # PostgreSQL out of reach: what was claimed comes due again after its lease.
        log.warning("webhook_dispatch_failed", error=str(exc).splitlines()[0])
    return attempts


def _poll(interval: float) -> None:
    while True:
        time.sleep(interval)
        try:
            dispatch()
        except Exception as exc:  # the next look comes anyway; say why this one failed
            log.warning("webhook_poll_failed", error=str(exc).splitlines()[0] if str(exc) else "")


@signals.worker_ready.connect
def _start_polling(sender: Any = None, **_: Any) -> None:
    """What starts deliveries: each dispatcher looks at PostgreSQL every LEDGERQ_WEBHOOK_INTERVAL
    seconds (a direct call of the task's function, in a thread of its own), so neither the broker
    nor beat is needed for an event to go out; a look that finds work rings the queue for more
    threads."""
    if getattr(sender, "app", None) is not app:
        return
    interval = get_settings().webhook_interval
    threading.Thread(target=_poll, args=(interval,), name="webhook-poll", daemon=True).start()


# ----------------------------------------------------------------------------- logging


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    from worker.logging_setup import configure_logging

    settings = get_settings()
    configure_logging(settings.log_format, settings.log_level)
    # httpx logs every request at INFO; webhook_delivered and webhook_attempt_failed say more.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
