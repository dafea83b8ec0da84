"""Webhooks, the pure part: event types, signatures, the retry schedule, which URLs and addresses
an endpoint may have, and an event's body from what the apply transaction stored. No I/O: the
store is worker/store/webhooks.py, the dispatcher worker/webhooks.py, the routes
api/controllers/webhooks.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

from domain.money import format_amount
from domain.returns import format_scaled

# ---------------------------------------------------------------- events

OPERATION_EVENTS = ("operation.succeeded", "operation.failed", "operation.cancelled")
HOLD_EVENTS = ("hold.created", "hold.captured", "hold.voided", "hold.expired")
EVENT_TYPES = (*OPERATION_EVENTS, *HOLD_EVENTS)


def event_id(operation_id: UUID, event_type: str) -> UUID:
    """An event's id: one per operation and event type, the same for every endpoint that gets it
    and on every attempt. The SQL that writes events computes the same (md5 of the two, as text)."""
    return UUID(hashlib.md5(f"{operation_id}{event_type}".encode()).hexdigest())  # noqa: S324 (an id, not a secret)


# ---------------------------------------------------------------- signatures

SIGNATURE_HEADER = "Ledgerq-Signature"
EVENT_ID_HEADER = "Ledgerq-Event-Id"
EVENT_TYPE_HEADER = "Ledgerq-Event-Type"
DELIVERY_ID_HEADER = "Ledgerq-Delivery-Id"
SECRET_PREFIX = "whsec_"  # noqa: S105 (a prefix, not a secret)
# What a receiver should accept between the signature's timestamp and its own clock.
DEFAULT_TOLERANCE = 300


def new_secret() -> str:
    """A signing secret: 256 random bits."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """HMAC-SHA256 of `<timestamp>.<body>` under the secret, in hex."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signature_header(signing_secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """`t=<unix seconds>,v1=<hex>[,v1=<hex>]`: one v1 per secret (the current one first; while a
    rotated-out secret is still valid, its signature too), so a receiver that has either verifies."""
    if not signing_secrets:
        raise ValueError("no secret to sign with")
    return ",".join(
        [f"t={timestamp}", *(f"v1={sign(s, timestamp, body)}" for s in signing_secrets)]
    )


def parse_signature_header(header: str) -> tuple[int, list[str]]:
    """The timestamp and the v1 signatures of a header; ValueError when it has no timestamp."""
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1" and value:
            signatures.append(value)
    if timestamp is None:
        raise ValueError("no timestamp in the signature header")
    return timestamp, signatures


def verify_signature(
    header: str,
    body: bytes,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> bool:
    """What a receiver does: one of the header's v1 signatures is ours over this very body, and its
    timestamp is within `tolerance` seconds of now (an older one is a replay)."""
    try:
        timestamp, signatures = parse_signature_header(header)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = sign(secret, timestamp, body)
    return any(hmac.compare_digest(expected, s) for s in signatures)


# ---------------------------------------------------------------- retries


def retry_delay(attempt: int, base: float, cap: float, jitter: float) -> float:
    """Seconds before the next try after failed attempt number `attempt` (1, 2, ...): base * 2^(n-1),
    at most `cap`, with "equal jitter": half of it fixed, half scaled by `jitter` in [0, 1), so
    endpoints that failed together do not come back together."""
    if attempt < 1:
        raise ValueError("attempts count from 1")
    ceiling = min(float(cap), float(base) * 2.0 ** min(attempt - 1, 62))
    return ceiling / 2 + ceiling / 2 * min(max(jitter, 0.0), 1.0)


def retry_schedule(base: float, cap: float, period: float) -> list[float]:
    """Seconds after the first attempt at which the retries come, without jitter (each at its
    latest), up to `period`: what docs/api.md shows."""
    at, attempt = 0.0, 1
    out: list[float] = []
    while True:
        at += retry_delay(attempt, base, cap, 1.0)
        if at > period:
            return out
        out.append(at)
        attempt += 1


# ---------------------------------------------------------------- URLs and addresses

MAX_URL_LENGTH = 2048


class WebhookUrlError(ValueError):
    """An endpoint URL (or the address it resolves to) this service will not call; the message
    says why."""


@dataclass(frozen=True, slots=True)
class EndpointUrl:
    scheme: str
    host: str
    port: int
    # Path and query, as sent in the request line.
    target: str

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"

    def url_for(self, address: str) -> str:
        """The same URL with the host replaced by an address it resolved to (the address is what
        was checked, so it is what is connected to)."""
        host = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{host}:{self.port}{self.target}"


def parse_endpoint_url(url: str) -> EndpointUrl:
    """An absolute http or https URL with a host, no credentials and no fragment."""
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if any(c.isspace() or ord(c) < 0x20 for c in url):
        raise WebhookUrlError("the URL contains whitespace or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookUrlError(f"the URL is malformed: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise WebhookUrlError("only http and https URLs are allowed")
    if not parts.hostname:
        raise WebhookUrlError("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise WebhookUrlError("credentials in the URL are not supported")
    if parts.fragment:
        raise WebhookUrlError("the URL has a fragment")
    if port == 0:
        raise WebhookUrlError("port 0 is not allowed")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return EndpointUrl(
        scheme=scheme,
        host=parts.hostname.lower(),
        port=port or (443 if scheme == "https" else 80),
        target=target,
    )


def address_problem(address: str, allow_private: bool) -> str | None:
    """Why an endpoint may not be called at this address, or None. Never: unspecified, multicast.
    Unless `allow_private` (LEDGERQ_WEBHOOKS_ALLOW_PRIVATE): loopback, private, link-local,
    shared, reserved and every other address that is not globally reachable."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return f"{address} is not an IP address"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast:
        return f"{ip} is an unspecified or multicast address"
    if allow_private or ip.is_global:
        return None
    for kind, flag in (
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return f"{ip} is a {kind} address"
    return f"{ip} is not a public address"


def check_addresses(addresses: Iterable[str], allow_private: bool) -> list[str]:
    """The addresses a host resolved to, all of them allowed (one bad one refuses the host: DNS
    may hand out any of them); WebhookUrlError otherwise, or when there are none."""
    found = list(dict.fromkeys(addresses))
    if not found:
        raise WebhookUrlError("the host resolves to no address")
    for address in found:
        problem = address_problem(address, allow_private)
        if problem is not None:
            raise WebhookUrlError(
                f"{problem}; such addresses are refused (LEDGERQ_WEBHOOKS_ALLOW_PRIVATE=true "
                "allows private ones, for development)"
            )
    return found


# ---------------------------------------------------------------- the event's body

# How much of a receiver's answer is read and kept (the rest is never read).
RESPONSE_BODY_LIMIT = 4096


def _time(value: Any) -> dt.datetime | None:
    """A timestamp as stored in the event's JSON (PostgreSQL's text), in UTC like the API's."""
    if value is None:
        return None
    parsed = value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)
    return parsed.astimezone(dt.UTC)


def operation_fields(op: Mapping[str, Any]) -> dict[str, Any]:
    """The operation as the REST API shows it (api/presenters.py `operation_out`, field for field),
    from its row as the apply transaction stored it (minor units, e8 quantities)."""
    currency = op["currency"]
    quantity, price = op.get("quantity"), op.get("price")
    return {
        "id": op["id"],
        "type": op["type"],
        "status": op["status"],
        "account_id": op["account_id"],
        "to_account_id": op.get("to_account_id"),
        "amount": format_amount(op["amount"], currency) if op.get("amount") else None,
        "currency": currency,
        "asset_id": op.get("asset_id"),
        "quantity": format_scaled(quantity) if quantity is not None else None,
        "price": format_scaled(price) if price is not None else None,
        "category": op.get("category"),
        "description": op.get("description"),
        "hold_id": op.get("hold_id"),
        "expires_in": op.get("expires_in"),
        "reversal_of": op.get("reversal_of"),
        "reversed_amount": format_amount(op.get("reversed_amount") or 0, currency),
        "metadata": op.get("metadata") or {},
        "error": {"code": op["error_code"], "message": op.get("error_message")}
        if op.get("error_code")
        else None,
        "created_at": _time(op["created_at"]),
        "updated_at": _time(op["updated_at"]),
        "applied_at": _time(op.get("applied_at")),
    }


def hold_fields(hold: Mapping[str, Any]) -> dict[str, Any]:
    """The hold as GET /api/v1/holds/{id} shows it (api/presenters.py `hold_out`)."""
    currency = hold["currency"]
    return {
        "id": hold["id"],
        "account_id": hold["account_id"],
        "to_account_id": hold.get("to_account_id"),
        "currency": currency,
        "amount": format_amount(hold["amount"], currency),
        "captured": format_amount(hold["captured"], currency),
        "released": format_amount(hold["released"], currency),
        "status": hold["status"],
        "expires_at": _time(hold["expires_at"]),
        "created_at": _time(hold["created_at"]),
        "closed_at": _time(hold.get("closed_at")),
        "closed_by": hold.get("closed_by"),
    }


def event_body(
    event: UUID | str, event_type: str, created_at: dt.datetime, payload: Mapping[str, Any]
) -> dict[str, Any]:
    """What is POSTed: the event's id and type, when it happened, and in `data` the operation (and,
    for hold events, the hold) as the transaction that wrote the event left them. The same on
    every attempt: only the signature's timestamp changes."""
    data: dict[str, Any] = {"operation": operation_fields(payload["operation"])}
    if payload.get("hold") is not None:
        data["hold"] = hold_fields(payload["hold"])
    return {
        "id": str(event),
        "type": event_type,
        "created_at": created_at.astimezone(dt.UTC),
        "data": data,
    }
