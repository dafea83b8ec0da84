"""The HTTP load engine: N lanes (one keep-alive connection each), open loop at a fixed offered rate.

Open loop: request n is due at start + n / rate whatever earlier responses did, and its latency
counts from that due time, not from when a free lane finally sent it. A slow server therefore
shows up as latency instead of silently lowering the offered load (coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import httpx
import msgspec

from bench.workloads import HttpRequest

_decode = msgspec.json.Decoder().decode


@dataclass(slots=True)
class Sample:
    """One request; times in seconds since the load started."""

    due: float  # when the schedule wanted it sent (= sent in closed loop)
    sent: float
    done: float
    ok: int  # units accepted (202) or read (200)
    failed: int  # units that got an error


@dataclass
class Recorder:
    """Everything the lanes observed; read by the live display while the load runs."""

    samples: list[Sample] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    ok: int = 0
    failed: int = 0
    missed: int = 0  # requests that were due inside the window but no lane was free to send
    next_index: int = 0


@dataclass(frozen=True)
class Plan:
    duration: float
    rate: float  # units per second; 0 = closed loop
    concurrency: int
    units_per_request: int

    @property
    def interval(self) -> float:
        """Seconds between request due times (0 in closed loop)."""
        return self.units_per_request / self.rate if self.rate > 0 else 0.0


def _error_key(response: httpx.Response) -> str:
    code = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            code = str(_decode(response.content).get("code") or "")
        except (msgspec.DecodeError, AttributeError):
            code = ""
    return f"{response.status_code} {code}".strip()


def classify(response: httpx.Response, request: HttpRequest) -> tuple[int, Counter[str]]:
    """(units accepted or read, errors by "status code") for one response."""
    status = response.status_code
    if request.method == "GET":
        return (1, Counter()) if status == 200 else (0, Counter({_error_key(response): 1}))
    if request.path.endswith("/batch"):
        if status != 207:
            return 0, Counter({_error_key(response): request.units})
        body = _decode(response.content)
        errors: Counter[str] = Counter()
        if body["rejected"] or body["replayed"]:
            for item in body["results"]:
                if item["status"] != 202:
                    error = item.get("error") or {}
                    errors[f"{item['status']} {error.get('code') or 'replayed'}".strip()] += 1
        return int(body["accepted"]), errors
    if status == 202:
        return 1, Counter()
    # 200 would be an idempotent replay: the bench never reuses a key, so it counts as an error.
    return 0, Counter({_error_key(response): 1})


async def _lane(
    client: httpx.AsyncClient,
    plan: Plan,
    build: Callable[[int], HttpRequest],
    rec: Recorder,
    start: float,
) -> None:
    interval = plan.interval
    while True:
        now = time.monotonic() - start
        if now >= plan.duration:
            return
        n = rec.next_index
        rec.next_index += 1
        request = build(n)
        if interval:
            due = n * interval
            if due >= plan.duration:
                return
            if due > now:
                await asyncio.sleep(due - now)
        else:
            due = now
        sent = time.monotonic() - start
        rec.in_flight += 1
        try:
            response = await client.request(
                request.method, request.path, content=request.body, headers=request.headers
            )
            ok, errors = classify(response, request)
        except httpx.HTTPError as exc:
            ok, errors = 0, Counter({f"0 {type(exc).__name__}": request.units})
        finally:
            rec.in_flight -= 1
        failed = sum(errors.values())
        rec.ok += ok
        rec.failed += failed
        rec.errors.update(errors)
        rec.samples.append(Sample(due, sent, time.monotonic() - start, ok, failed))


async def run_load(
    clients: list[httpx.AsyncClient],
    plan: Plan,
    build: Callable[[int], HttpRequest],
    rec: Recorder,
    start: float,
) -> None:
    """Run one lane per client until the window closes, then let in-flight requests finish."""
    lanes = [asyncio.create_task(_lane(client, plan, build, rec, start)) for client in clients]
    await asyncio.gather(*lanes)
    if plan.interval:
        # Requests the schedule wanted inside the window that no lane got to send: the offered load
        # the client could not deliver (reported, so "achieved" is never confused with "offered").
        due_in_window = int(plan.duration / plan.interval) + (plan.duration % plan.interval > 0)
        rec.missed = max(0, due_in_window - len(rec.samples))


def make_client(base_url: str, connections: int, headers: dict[str, str]) -> httpx.AsyncClient:
    """HTTP/1.1 keep-alive with a pool of `connections`, no per-request auth flow."""
    # Idle connections are dropped after 4 s, before uvicorn's 5 s keep-alive timeout closes them
    # from its side: reusing a connection the server is closing fails the request (ReadError).
    limits = httpx.Limits(
        max_connections=connections, max_keepalive_connections=connections, keepalive_expiry=4.0
    )
    return httpx.AsyncClient(
        base_url=base_url,
        headers=headers,
        limits=limits,
        timeout=httpx.Timeout(60.0, connect=10.0),
        http1=True,
        http2=False,
    )


@contextlib.asynccontextmanager
async def lane_clients(
    base_url: str, lanes: int, headers: dict[str, str]
) -> AsyncIterator[list[httpx.AsyncClient]]:
    """One client with one keep-alive connection per lane: the pool is sharded, not shared.

    httpcore's pool does work proportional to its size on every request; measured here, 64
    lanes on one shared 64-connection pool managed ~400 req/s against /health, 64 single-
    connection clients ~1,350 req/s.
    """
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(make_client(base_url, 1, headers)) for _ in range(lanes)
        ]
