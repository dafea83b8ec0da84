"""Webhooks' pure rules (domain/webhooks.py): signatures and their verification (with the few
lines a receiver uses, as README.md shows them), the retry schedule, the URL and address policy,
and the event body, which must show the operation as the REST API does."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
import time
from types import SimpleNamespace
from typing import Any
from uuid import UUID

import httpx
import msgspec
import pytest

from api.presenters import hold_out, operation_out
from domain.webhooks import (
    EVENT_TYPES,
    WebhookUrlError,
    address_problem,
    check_addresses,
    event_body,
    event_id,
    hold_fields,
    new_secret,
    operation_fields,
    parse_endpoint_url,
    parse_signature_header,
    retry_delay,
    retry_schedule,
    sign,
    signature_header,
    verify_signature,
)

# ---------------------------------------------------------------- signatures

# What a receiver runs (README.md, "Webhooks"): kept here verbatim so the documented lines work.
RECEIVER = '''
import hashlib, hmac, time

def verify(body: bytes, header: str, secret: str, tolerance: int = 300) -> bool:
    """body: the raw request body; header: Ledgerq-Signature; secret: the endpoint's whsec_..."""
    parts = [p.split("=", 1) for p in header.split(",")]
    timestamp = next(v for k, v in parts if k == "t")
    if abs(time.time() - int(timestamp)) > tolerance:
        return False  # too old (or from the future): a replay
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, v) for k, v in parts if k == "v1")
'''


def receiver_verify() -> Any:
    namespace: dict[str, Any] = {}
    exec(RECEIVER, namespace)
    return namespace["verify"]


def test_signature_is_hmac_sha256_of_timestamp_dot_body() -> None:
    body = b'{"id":"x"}'
    assert (
        sign("whsec_k", 1700000000, body)
        == hmac.new(b"whsec_k", b"1700000000." + body, "sha256").hexdigest()
    )
    header = signature_header(["whsec_k"], 1700000000, body)
    assert header == f"t=1700000000,v1={sign('whsec_k', 1700000000, body)}"
    assert parse_signature_header(header) == (1700000000, [sign("whsec_k", 1700000000, body)])


def test_verification_accepts_the_right_secret_and_refuses_the_rest() -> None:
    body = b'{"id":"e","type":"operation.succeeded"}'
    now = int(time.time())
    header = signature_header(["whsec_new"], now, body)
    assert verify_signature(header, body, "whsec_new")
    assert not verify_signature(header, body, "whsec_other")
    assert not verify_signature(header, body + b" ", "whsec_new")
    assert not verify_signature("v1=abc", body, "whsec_new")
    assert not verify_signature("", body, "whsec_new")
    # A replay: the same request, later than the tolerance.
    assert not verify_signature(header, body, "whsec_new", tolerance=300, now=now + 301)
    assert verify_signature(header, body, "whsec_new", tolerance=300, now=now + 299)
    with pytest.raises(ValueError):
        signature_header([], now, body)


def test_during_a_rotation_either_secret_verifies() -> None:
    body = b"{}"
    now = int(time.time())
    header = signature_header(["whsec_new", "whsec_old"], now, body)
    assert header.count("v1=") == 2
    assert header.startswith(f"t={now},v1={sign('whsec_new', now, body)},")
    assert verify_signature(header, body, "whsec_new")
    assert verify_signature(header, body, "whsec_old")
    assert not verify_signature(header, body, "whsec_neither")


def test_the_receivers_few_lines_from_the_readme_verify_and_reject_replays() -> None:
    verify = receiver_verify()
    body = b'{"id":"e"}'
    secret = new_secret()
    now = int(time.time())
    assert verify(body, signature_header([secret], now, body), secret)
    assert verify(body, signature_header(["whsec_new", secret], now, body), secret)
    assert not verify(body, signature_header([secret], now - 301, body), secret)
    assert not verify(body + b"x", signature_header([secret], now, body), secret)
    assert not verify(body, signature_header([new_secret()], now, body), secret)


def test_secrets_are_random_and_recognisable() -> None:
    a, b = new_secret(), new_secret()
    assert a != b
    assert a.startswith("whsec_") and len(a) == len("whsec_") + 43


def test_event_ids_are_stable_per_operation_and_type() -> None:
    op = UUID("01a2355f-468e-771b-89fe-8d830d324bbc")
    assert event_id(op, "operation.succeeded") == event_id(op, "operation.succeeded")
    assert event_id(op, "operation.succeeded") != event_id(op, "hold.captured")
    # What the SQL computes: md5(operation id as text || type), as a UUID.
    digest = hashlib.md5(f"{op}operation.succeeded".encode()).hexdigest()
    assert event_id(op, "operation.succeeded") == UUID(digest)
    assert len(set(EVENT_TYPES)) == 7


# ---------------------------------------------------------------- retries


def test_backoff_doubles_up_to_its_cap_with_jitter_within_half() -> None:
    assert retry_delay(1, 10, 3600, 0.0) == 5
    assert retry_delay(1, 10, 3600, 1.0) == 10
    assert retry_delay(2, 10, 3600, 1.0) == 20
    assert retry_delay(3, 10, 3600, 0.5) == 30
    assert retry_delay(20, 10, 3600, 1.0) == 3600
    assert retry_delay(10_000, 10, 3600, 0.0) == 1800  # no overflow however many attempts
    for attempt in range(1, 30):
        for jitter in (0.0, 0.3, 0.999):
            ceiling = min(3600, 10 * 2 ** (attempt - 1))
            assert ceiling / 2 <= retry_delay(attempt, 10, 3600, jitter) <= ceiling
    with pytest.raises(ValueError):
        retry_delay(0, 10, 3600, 0.5)


def test_the_default_schedule_keeps_trying_for_three_days() -> None:
    schedule = retry_schedule(10, 3600, 259200)
    assert schedule[:4] == [10, 30, 70, 150]
    assert schedule[-1] <= 259200 < schedule[-1] + 3600
    # About an hour apart once capped: some 80 attempts over three days.
    assert 70 < len(schedule) < 90


# ---------------------------------------------------------------- URLs and addresses


def test_only_absolute_http_and_https_urls_without_credentials() -> None:
    url = parse_endpoint_url("https://Example.com/hooks?x=1")
    assert (url.scheme, url.host, url.port, url.target) == (
        "https",
        "example.com",
        443,
        "/hooks?x=1",
    )
    assert url.host_header == "example.com"
    assert url.url_for("93.184.216.34") == "https://93.184.216.34:443/hooks?x=1"
    plain = parse_endpoint_url("http://127.0.0.1:8080")
    assert (plain.port, plain.target, plain.host_header) == (8080, "/", "127.0.0.1:8080")
    v6 = parse_endpoint_url("http://[::1]:9000/h")
    assert v6.host == "::1" and v6.host_header == "[::1]:9000"
    assert v6.url_for("::1") == "http://[::1]:9000/h"
    for bad in (
        "ftp://example.com/",
        "file:///etc/passwd",
        "gopher://x",
        "example.com/hook",
        "https:///nohost",
        "https://user:pass@example.com/",
        "https://example.com/#frag",
        "https://example.com:0/",
        "https://example.com:99999/",
        "https://exa mple.com/",
        "https://example.com/\n",
        "https://example.com/" + "a" * 2048,
    ):
        with pytest.raises(WebhookUrlError):
            parse_endpoint_url(bad)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # the cloud metadata service
        "100.64.0.1",  # shared address space (carrier NAT)
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",  # IPv4-mapped
        "::ffff:127.0.0.1",
        "192.0.2.1",  # documentation
        "240.0.0.1",  # reserved
    ],
)
def test_private_addresses_are_refused_unless_allowed(address: str) -> None:
    assert address_problem(address, allow_private=False) is not None
    assert address_problem(address, allow_private=True) is None


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "224.0.0.1", "ff02::1"])
def test_unspecified_and_multicast_are_always_refused(address: str) -> None:
    assert address_problem(address, allow_private=True) is not None


def test_public_addresses_pass_and_one_bad_address_refuses_the_host() -> None:
    assert address_problem("93.184.216.34", allow_private=False) is None
    assert address_problem("2606:2800:220:1:248:1893:25c8:1946", allow_private=False) is None
    assert check_addresses(["93.184.216.34", "93.184.216.34"], False) == ["93.184.216.34"]
    with pytest.raises(WebhookUrlError, match="private"):
        check_addresses(["93.184.216.34", "10.0.0.1"], False)
    with pytest.raises(WebhookUrlError, match="no address"):
        check_addresses([], True)
    assert address_problem("not-an-ip", True) is not None


# ---------------------------------------------------------------- the body


def _operation_row() -> dict[str, Any]:
    """An operations row as the apply transaction stores it in the event (PostgreSQL's JSON)."""
    return {
        "id": "01a2355f-468e-771b-89fe-8d830d324bbc",
        "type": "redemption",
        "status": "failed",
        "account_id": "01a2355f-4638-7774-82aa-db0cdfeac65f",
        "to_account_id": None,
        "amount": 123456,
        "currency": "BHD",
        "asset_id": "01a2355f-4638-7774-82aa-db0cdfeac600",
        "quantity": 150000000,
        "price": 2735000000,
        "category": "invest",
        "description": "sell",
        "hold_id": None,
        "expires_in": None,
        "reversal_of": None,
        "reversed_amount": 0,
        "metadata": {"order_id": "A-1042"},
        "error_code": "insufficient_units",
        "error_message": "not enough units",
        "created_at": "2026-12-02T06:09:26.16109+00:00",
        "updated_at": "2026-12-02T06:09:26.185331+00:00",
        "applied_at": "2026-12-02T06:09:26.185331+00:00",
    }


def _as_row(values: dict[str, Any]) -> SimpleNamespace:
    """The same row as the API reads it (UUIDs, datetimes)."""
    converted: dict[str, Any] = {}
    for name, value in values.items():
        if isinstance(value, str) and (name == "id" or name.endswith("_id") or name == "closed_by"):
            converted[name] = UUID(value)
        elif isinstance(value, str) and name.endswith("_at"):
            converted[name] = dt.datetime.fromisoformat(value)
        else:
            converted[name] = value
    return SimpleNamespace(**converted)


def test_the_operation_in_an_event_is_the_one_the_rest_api_shows() -> None:
    for changes in (
        {},
        {"status": "succeeded", "error_code": None, "error_message": None},
        {"amount": 0, "quantity": None, "price": None, "metadata": None, "applied_at": None},
        {"currency": "JPY", "reversed_amount": 70, "type": "deposit", "amount": 100},
    ):
        row = {**_operation_row(), **changes}
        rest = msgspec.json.encode(operation_out(_as_row(row)))
        assert msgspec.json.encode(operation_fields(row)) == rest


def test_the_hold_in_an_event_is_the_one_the_rest_api_shows() -> None:
    hold = {
        "id": "01a2355f-468e-7184-866e-a08446876f7b",
        "account_id": "01a2355f-4638-7774-82aa-db0cdfeac65f",
        "to_account_id": None,
        "currency": "USD",
        "amount": 300,
        "captured": 200,
        "released": 100,
        "status": "captured",
        "expires_at": "2026-12-02T07:09:26.185331+00:00",
        "created_at": "2026-12-02T06:09:26.185331+00:00",
        "closed_at": "2026-12-02T06:09:26.185331+00:00",
        "closed_by": "01a2355f-468e-771b-89fe-8d830d324bbc",
    }
    rest = msgspec.json.encode(hold_out(_as_row(hold)))
    assert msgspec.json.encode(hold_fields(hold)) == rest


def test_the_body_names_the_event_and_carries_the_operation() -> None:
    created = dt.datetime(2026, 12, 2, 6, 9, 26, tzinfo=dt.UTC)
    op = _operation_row()
    body = json.loads(
        msgspec.json.encode(event_body("e-1", "operation.failed", created, {"operation": op}))
    )
    assert body["id"] == "e-1" and body["type"] == "operation.failed"
    assert body["created_at"] == "2026-12-02T06:09:26Z"
    assert body["data"]["operation"]["error"] == {
        "code": "insufficient_units",
        "message": "not enough units",
    }
    assert "hold" not in body["data"]
    with_hold = event_body(
        "e-2",
        "hold.created",
        created,
        {
            "operation": op,
            "hold": {
                "id": op["id"],
                "account_id": op["account_id"],
                "currency": "USD",
                "amount": 5,
                "captured": 0,
                "released": 0,
                "status": "open",
                "expires_at": op["created_at"],
                "created_at": op["created_at"],
            },
        },
    )
    assert with_hold["data"]["hold"]["amount"] == "0.05"


# ---------------------------------------------------------------- the dispatcher's request


def _settings(**env: str) -> Any:
    from worker.settings import Settings

    return Settings.from_env(
        {"LEDGERQ_DATABASE_URL": "postgresql://x@h/d", "LEDGERQ_REDIS_URL": "redis://h/0", **env}
    )


def _delivery(url: str, previous_secret: str | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        id=UUID("01a2355f-0000-7000-8000-000000000001"),
        event_id=UUID("86f18804-66ee-a4e4-40da-a03c5de6da12"),
        endpoint_id=UUID("01a2355f-0000-7000-8000-000000000002"),
        event_type="operation.failed",
        created_at=dt.datetime(2026, 12, 2, 6, 9, 26, tzinfo=dt.UTC),
        payload={"operation": _operation_row()},
        attempts=0,
        url=url,
        secret="whsec_current",
        previous_secret=previous_secret,
    )


def reply(status: int, body: bytes = b"", **headers: str) -> httpx.Response:
    """A receiver's answer as the network gives it: a stream not yet read."""
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body))


def _send(
    monkeypatch: pytest.MonkeyPatch,
    handler: Any,
    url: str,
    addresses: list[str],
    settings: Any = None,
    previous_secret: str | None = None,
) -> tuple[Any, list[httpx.Request]]:
    import worker.webhooks as dispatcher

    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    monkeypatch.setattr(dispatcher, "resolve", lambda host, port, timeout: addresses)
    client = httpx.Client(transport=httpx.MockTransport(record), follow_redirects=False)
    attempt = dispatcher.send(client, settings or _settings(), _delivery(url, previous_secret))
    return attempt, seen


def test_a_delivery_goes_to_the_checked_address_signed_with_the_event_id(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt, [request] = _send(
        monkeypatch,
        lambda r: reply(204),
        "https://hooks.example.com/in?src=lq",
        ["93.184.216.34"],
        previous_secret="whsec_previous",
    )
    assert attempt.succeeded and attempt.error is None and attempt.status_code == 204
    # Connected to the address that was checked; the host name in Host and in TLS (SNI).
    assert str(request.url) == "https://93.184.216.34/in?src=lq"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["ledgerq-event-id"] == "86f18804-66ee-a4e4-40da-a03c5de6da12"
    assert request.headers["ledgerq-event-type"] == "operation.failed"
    body = request.content
    assert json.loads(body)["id"] == request.headers["ledgerq-event-id"]
    assert json.loads(body)["data"]["operation"]["error"]["code"] == "insufficient_units"
    header = request.headers["ledgerq-signature"]
    assert header.count("v1=") == 2
    assert verify_signature(header, body, "whsec_current")
    assert verify_signature(header, body, "whsec_previous")
    assert receiver_verify()(body, header, "whsec_current")


def test_a_private_address_is_refused_at_delivery_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """DNS changed since registration: the dispatcher checks every delivery's addresses."""
    attempt, seen = _send(
        monkeypatch, lambda r: reply(200), "https://hooks.example.com/", ["10.0.0.5"]
    )
    assert seen == [] and not attempt.succeeded
    assert attempt.error is not None and attempt.error.startswith("refused: 10.0.0.5 is a private")
    allowed = _settings(LEDGERQ_WEBHOOKS_ALLOW_PRIVATE="true")
    attempt, seen = _send(monkeypatch, lambda r: reply(200), "http://h/", ["10.0.0.5"], allowed)
    assert attempt.succeeded and str(seen[0].url) == "http://10.0.0.5/"


def test_failures_keep_a_short_reason_and_never_follow_redirects(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempt, _ = _send(monkeypatch, lambda r: reply(500, b"x" * 100_000), "http://h/", ["1.1.1.1"])
    assert attempt.status_code == 500 and not attempt.succeeded
    assert attempt.error is not None and attempt.error.startswith("HTTP 500: xxx")
    assert len(attempt.error) < 400
    moved = reply(302, Location="http://169.254.169.254/")
    attempt, seen = _send(monkeypatch, lambda r: moved, "http://h/", ["1.1.1.1"])
    assert len(seen) == 1 and attempt.status_code == 302 and not attempt.succeeded

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    attempt, _ = _send(monkeypatch, slow, "http://h/", ["1.1.1.1"])
    assert attempt.status_code is None and attempt.error is not None
    assert attempt.error.startswith("timed out after 5 s")

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    attempt, _ = _send(monkeypatch, refused, "http://h/", ["1.1.1.1"])
    assert attempt.error == "ConnectError: connection refused"


def test_a_name_lookup_that_hangs_fails_the_attempt_after_the_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """getaddrinfo has no timeout: the dispatcher waits LEDGERQ_WEBHOOK_TIMEOUT for it, then
    records a failed attempt (retried later) instead of holding the delivery's thread."""
    import socket

    import worker.webhooks as dispatcher

    answer = threading.Event()
    real = socket.getaddrinfo

    def hanging(host: str, *args: Any, **kwargs: Any) -> Any:
        if host == "slow.example.com":
            answer.wait(30)
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    client = httpx.Client(transport=httpx.MockTransport(lambda r: reply(200)))
    settings = _settings(LEDGERQ_WEBHOOK_TIMEOUT="1")
    try:
        attempt = dispatcher.send(client, settings, _delivery("https://slow.example.com/"))
    finally:
        answer.set()
    assert attempt.status_code is None and not attempt.succeeded
    assert attempt.error == (
        "refused: the host slow.example.com does not resolve: no answer within 1 s"
    )


def test_the_dispatch_ring_has_its_own_queue_and_beat_never_rings_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import runpy
    from pathlib import Path

    from worker.routing import (
        CONTROL_QUEUE,
        DRAIN_TASK,
        SWEEP_TASK,
        WEBHOOK_DISPATCH_TASK,
        WEBHOOK_QUEUE,
        route_task,
    )
    from worker.settings import get_settings

    assert route_task(WEBHOOK_DISPATCH_TASK, (), {}, {}) == {"queue": WEBHOOK_QUEUE}
    assert route_task(SWEEP_TASK, (), {}, {}) == {"queue": CONTROL_QUEUE}
    assert route_task(DRAIN_TASK, (3,), {}, {}) == {"queue": "ledgerq.p3"}
    monkeypatch.setenv("LEDGERQ_DATABASE_URL", "postgresql://x@h/d")
    monkeypatch.setenv("LEDGERQ_REDIS_URL", "redis://h/0")
    monkeypatch.setenv("LEDGERQ_WEBHOOK_INTERVAL", "3")
    get_settings.cache_clear()
    try:
        config = runpy.run_path(
            str(Path(__file__).resolve().parents[2] / "worker" / "celeryconfig.py")
        )
    finally:
        get_settings.cache_clear()
    # Beat never rings the dispatcher (its rings piled up where no dispatcher ran).
    assert [e["task"] for e in config["beat_schedule"].values()] == [SWEEP_TASK]
    assert WEBHOOK_QUEUE in {q.name for q in config["task_queues"]}


def test_webhook_settings_are_checked() -> None:
    from worker.settings import SettingsError

    default = _settings()
    assert (default.webhook_timeout, default.webhook_retry_period) == (5.0, 259200.0)
    assert default.webhooks_allow_private is False
    assert _settings(LEDGERQ_WEBHOOKS_ALLOW_PRIVATE="TRUE").webhooks_allow_private is True
    for name, value in (
        ("LEDGERQ_WEBHOOKS_ALLOW_PRIVATE", "maybe"),
        ("LEDGERQ_WEBHOOK_TIMEOUT", "0"),
        ("LEDGERQ_WEBHOOK_TIMEOUT", "61"),
        ("LEDGERQ_WEBHOOK_CONCURRENCY", "0"),
    ):
        with pytest.raises(SettingsError, match=name):
            _settings(**{name: value})
