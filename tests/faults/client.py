"""A retrying client that keeps its own record of every idempotency key it used.

Each lane submits deposits and transfers between the client's accounts. A key is written to the
record before its first attempt; the attempt is retried with the same key and body on anything
that is not an answer (connection errors, timeouts, 5xx, 429) until the API accepts it (202, or
200 for a replay) or refuses it (another 4xx), as an integration following the README would.
Every attempt's outcome is logged with its time, so the suite can say what clients saw.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx

PASSWORD = "fault-suite-password"
# Most seconds a lane waits before retrying one key (Retry-After is honoured up to this).
MAX_BACKOFF = 1.0


@dataclass
class Intent:
    """One idempotency key: what was asked, and the API's final answer once it gave one."""

    key: str
    kind: str
    account_id: str
    to_account_id: str | None
    amount_minor: int
    first_sent: float
    outcome: str = "unanswered"  # accepted | refused | unanswered
    operation_id: str | None = None
    refusal: str | None = None
    attempts: int = 0


@dataclass(frozen=True)
class Attempt:
    at: float  # time.time()
    outcome: str  # "202", "200 replay", "503 database_unavailable", "connection error", ...


@dataclass
class Record:
    intents: dict[str, Intent] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)

    def seen(self, start: float, end: float) -> Counter[str]:
        return Counter(a.outcome for a in self.attempts if start <= a.at < end)

    def failures_after(self, start: float) -> list[Attempt]:
        return [a for a in self.attempts if a.at >= start and not a.outcome.startswith("2")]


def _outcome(response: httpx.Response) -> str:
    if response.status_code == 200:
        return "200 replay"
    if response.status_code < 300:
        return str(response.status_code)
    code = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        try:
            code = str(response.json().get("code", ""))
        except ValueError:
            code = ""
    return f"{response.status_code} {code}".strip()


async def _settled(
    http: httpx.AsyncClient, method: str, url: str, within: float = 60, **kw: Any
) -> httpx.Response:
    """A setup call, retried through connection errors and 5xx for up to `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        try:
            r = await http.request(method, url, **kw)
            if r.status_code < 500:
                r.raise_for_status()
                return r
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {url} did not succeed in {within} s")
        await asyncio.sleep(0.5)


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("retry-after", "0.2")), MAX_BACKOFF)
    except ValueError:
        return MAX_BACKOFF


@dataclass
class FaultClient:
    base_url: str
    accounts_count: int = 40
    lanes: int = 12
    record: Record = field(default_factory=Record)
    accounts: list[str] = field(default_factory=list)
    user_id: str = ""
    username: str = ""
    _token: str = ""
    _running: bool = False

    async def setup(self, http: httpx.AsyncClient) -> None:
        """A user of its own and its accounts (retried: the previous fault may still show)."""
        self.username = f"faults-{uuid.uuid4().hex[:8]}"
        r = await _settled(
            http, "POST", "/api/v1/auth/register",
            json={"username": self.username, "password": PASSWORD},
        )  # fmt: skip
        self.user_id = r.json()["id"]
        await self._refresh_token(http)
        for i in range(self.accounts_count):
            # Not idempotent: a create retried after a lost answer makes an extra account,
            # which holds nothing and changes no check.
            r = await _settled(
                http, "POST", "/api/v1/accounts",
                json={"name": f"faults {i}", "type": "checking", "currency": "USD"},
                headers=self._headers(),
            )  # fmt: skip
            self.accounts.append(r.json()["id"])

    async def follow_one(self, http: httpx.AsyncClient, wait: int = 10) -> tuple[str, float]:
        """Submit one deposit with `Prefer: wait` and answer (its status, seconds to answer):
        after a fault, a follower must still learn the final state, not wait out its timeout."""
        intent = Intent(uuid.uuid4().hex, "deposit", self.accounts[0], None, 1, time.time())
        self.record.intents[intent.key] = intent
        started = time.monotonic()
        r = await _settled(
            http, "POST", "/api/v1/operations", json=self.body(intent),
            headers={**self._headers(), "Idempotency-Key": intent.key, "Prefer": f"wait={wait}"},
        )  # fmt: skip
        intent.outcome, intent.operation_id = "accepted", r.json()["id"]
        return str(r.json()["status"]), round(time.monotonic() - started, 2)

    async def _refresh_token(self, http: httpx.AsyncClient) -> None:
        r = await _settled(http, "POST", "/api/v1/auth/token", auth=(self.username, PASSWORD))
        self._token = r.json()["access_token"]

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"}

    def _intent(self, rng: random.Random) -> Intent:
        key = uuid.uuid4().hex
        if rng.random() < 0.6:
            kind, source, target = "deposit", rng.choice(self.accounts), None
        else:
            source, target = rng.sample(self.accounts, 2)
            kind = "transfer"
        return Intent(key, kind, source, target, rng.randint(1, 1000), time.time())

    @staticmethod
    def body(intent: Intent) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": intent.kind,
            "account_id": intent.account_id,
            "amount": f"{intent.amount_minor // 100}.{intent.amount_minor % 100:02d}",
        }
        if intent.to_account_id is not None:
            body["to_account_id"] = intent.to_account_id
        return body

    async def _submit(self, http: httpx.AsyncClient, intent: Intent, deadline: float) -> None:
        """Send one key until the API answers it; gives up (leaving it unanswered) at deadline."""
        body = self.body(intent)
        while time.time() < deadline:
            intent.attempts += 1
            try:
                r = await http.post(
                    "/api/v1/operations",
                    json=body,
                    headers={**self._headers(), "Idempotency-Key": intent.key},
                )
            except httpx.TimeoutException:
                self.record.attempts.append(Attempt(time.time(), "timeout"))
                continue
            except httpx.TransportError:
                self.record.attempts.append(Attempt(time.time(), "connection error"))
                await asyncio.sleep(0.2)
                continue
            outcome = _outcome(r)
            self.record.attempts.append(Attempt(time.time(), outcome))
            if r.status_code in (200, 202):
                intent.outcome, intent.operation_id = "accepted", r.json()["id"]
                return
            if r.status_code == 401:
                try:
                    await self._refresh_token(http)
                except httpx.HTTPError:
                    await asyncio.sleep(0.2)
                continue
            if r.status_code >= 500 or r.status_code in (408, 409, 429):
                await asyncio.sleep(_retry_after(r))
                continue
            intent.outcome, intent.refusal = "refused", outcome
            return

    async def _lane(self, http: httpx.AsyncClient, seed: int, give_up_at: list[float]) -> None:
        rng = random.Random(seed)
        while self._running:
            intent = self._intent(rng)
            self.record.intents[intent.key] = intent
            # A key is pursued until answered, even after the load is told to stop.
            await self._submit(http, intent, deadline=give_up_at[0])

    async def run(self, http: httpx.AsyncClient, stop: asyncio.Event, give_up: float) -> None:
        """Drive load until `stop` is set; then finish the keys in flight (up to `give_up` s)."""
        self._running = True
        give_up_at = [float("inf")]
        lanes = [
            asyncio.create_task(self._lane(http, random.randrange(1 << 30), give_up_at))
            for _ in range(self.lanes)
        ]
        await stop.wait()
        self._running = False
        give_up_at[0] = time.time() + give_up
        await asyncio.gather(*lanes)


def make_http(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(10.0, connect=2.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )
