"""Bench setup: the user, its accounts (in bulk through SQL) and their funding, before any timing starts."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import msgspec
from sqlalchemy import Engine

from bench import BenchError
from bench.workloads import CATEGORY, CURRENCY, OpSpec
from domain.idempotency import request_fingerprint
from worker.routing import partition_for
from worker.store import bench as store
from worker.store.bench import PendingRow, Scope
from worker.store.queries import new_id

# Each account starts with 1,000,000.00 USD: withdrawals (up to 50.00) and transfers (up to 10.00)
# then succeed for the whole run, so the bench measures applying, not insufficient_funds.
FUNDING = 100_000_000
BATCH_LIMIT = 1000  # the API's largest POST /api/v1/operations/batch
FUNDING_TIMEOUT = 300.0


@dataclass(frozen=True)
class Setup:
    principal_id: UUID
    accounts: list[UUID]
    funded: int
    seconds: float
    after_seq: (
        int  # the largest seq before setup: the run's operations (funding included) are above
    )


def auth_headers(username: str, password: str, api_key: str | None) -> dict[str, str]:
    """Built once: per-request auth flows in httpx cost more than a fixed header."""
    if api_key:
        return {"X-API-Key": api_key}
    token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return {"Authorization": f"Basic {token}"}


def problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} {response.text[:200]}"
    if isinstance(body, dict):
        return f"{response.status_code} {body.get('code') or ''} {body.get('detail') or ''}".strip()
    return f"{response.status_code}"


async def register(client: httpx.AsyncClient, username: str, password: str) -> None:
    """Create the user; an existing one is fine (its password is checked by the next call)."""
    r = await client.post(
        "/api/v1/auth/register", json={"username": username, "password": password}
    )
    if r.status_code not in (201, 409):
        raise BenchError(f"cannot register {username!r}: {problem(r)}")


async def create_account(client: httpx.AsyncClient, name: str) -> UUID:
    r = await client.post(
        "/api/v1/accounts", json={"name": name, "type": "checking", "currency": CURRENCY}
    )
    if r.status_code == 401:
        raise BenchError(
            "the API refused the credentials (401): the user exists with another password? "
            "Pass --username/--password (or --api-key)"
        )
    if r.status_code != 201:
        raise BenchError(f"cannot create an account: {problem(r)}")
    return UUID(r.json()["id"])


async def fund_through_api(
    client: httpx.AsyncClient, accounts: Sequence[UUID], key_prefix: str
) -> int:
    """One deposit per account through POST /operations/batch, 1,000 per request."""
    amount = f"{FUNDING // 100}.{FUNDING % 100:02d}"
    for start in range(0, len(accounts), BATCH_LIMIT):
        chunk = accounts[start : start + BATCH_LIMIT]
        items = [
            {
                "idempotency_key": f"{key_prefix}{start + n}",
                "type": "deposit",
                "account_id": str(account),
                "amount": amount,
                "category": CATEGORY,
            }
            for n, account in enumerate(chunk)
        ]
        r = await client.post(
            "/api/v1/operations/batch",
            content=msgspec.json.encode({"operations": items}),
            headers={"Content-Type": "application/json"},
        )
        if r.status_code != 207:
            raise BenchError(f"funding failed: {problem(r)}")
        body: dict[str, Any] = r.json()
        if body["rejected"]:
            first = next(x for x in body["results"] if x["status"] not in (200, 202))
            raise BenchError(f"funding: {body['rejected']} deposits rejected, e.g. {first}")
    return len(accounts)


async def prepare_through_api(
    client: httpx.AsyncClient,
    engine: Engine,
    username: str,
    password: str,
    api_key: str | None,
    count: int,
    label: str,
    key_prefix: str,
) -> Setup:
    """Register, open the first account through the API (it also proves the credentials), the rest
    in bulk through SQL, fund them all through the API, and wait until the funding is applied."""
    started = time.perf_counter()
    after_seq = store.max_seq(engine)
    if api_key is None:
        await register(client, username, password)
    first = await create_account(client, f"{label} #0")
    # Whoever the credentials belong to (user or API key) owns this account: the bench's principal.
    principal_id = store.owner_of(engine, first)
    rest = (
        store.insert_accounts(engine, principal_id, count - 1, label, CURRENCY) if count > 1 else []
    )
    accounts = [first, *rest]
    funded = await fund_through_api(client, accounts, key_prefix)
    _wait_funded(engine, Scope(principal_id, after_seq, key_prefix), funded)
    return Setup(principal_id, accounts, funded, time.perf_counter() - started, after_seq)


def ensure_user(engine: Engine, username: str, password: str) -> UUID:
    """The bench user, created directly in SQL when missing (drain needs no API): the same argon2
    hash the API writes, so the user also works against the API afterwards."""
    existing = store.user_id(engine, username)
    if existing is not None:
        return existing
    from api.auth import hash_password  # argon2; only needed here

    store.create_user(engine, username, hash_password(password))
    found = store.user_id(engine, username)
    assert found is not None
    return found


def ring(partitions: Sequence[int]) -> None:
    """Send each partition's drain doorbell, as the API does after a commit (env must name the broker)."""
    from worker.tasks import ring as ring_partition  # Celery reads LEDGERQ_* when imported

    for partition in partitions:
        ring_partition(partition)


def prepare_through_sql(
    engine: Engine,
    username: str,
    password: str,
    count: int,
    label: str,
    key_prefix: str,
    partitions: int,
) -> Setup:
    """Everything in SQL, for `drain` (the API may be stopped): user, accounts, funding deposits
    prefilled and rung, then wait until the workers applied them."""
    started = time.perf_counter()
    after_seq = store.max_seq(engine)
    principal_id = ensure_user(engine, username, password)
    accounts = store.insert_accounts(engine, principal_id, count, label, CURRENCY)
    specs = [OpSpec("deposit", account, FUNDING) for account in accounts]
    done = prefill(engine, principal_id, specs, key_prefix, partitions)
    ring(done.partitions)
    _wait_funded(engine, Scope(principal_id, after_seq, key_prefix), len(specs))
    return Setup(principal_id, accounts, len(specs), time.perf_counter() - started, after_seq)


@dataclass(frozen=True)
class Prefill:
    count: int
    seconds: float
    committed_at: float  # PostgreSQL clock right after the commit: when the rows became visible
    partitions: list[int]
    ids: list[UUID]


def prefill_rows(
    specs: Sequence[OpSpec], key_prefix: str, partitions: int
) -> tuple[list[UUID], list[PendingRow]]:
    """The operations' ids and rows: keys `{key_prefix}{n}`, partitions by account, and for a
    capture the id of the hold its spec names by index."""
    ids = [new_id() for _ in specs]
    rows = [
        PendingRow(
            partition=partition_for(spec.account_id, partitions),
            idempotency_key=f"{key_prefix}{n}",
            fingerprint=request_fingerprint({"bench": f"{key_prefix}{n}"}),
            type=spec.type,
            account_id=spec.account_id,
            amount=spec.amount,
            to_account_id=spec.to_account_id,
            hold_id=ids[spec.hold] if spec.hold is not None else None,
            expires_in=spec.expires_in,
        )
        for n, spec in enumerate(specs)
    ]
    return ids, rows


def prefill(
    engine: Engine, principal_id: UUID, specs: Sequence[OpSpec], key_prefix: str, partitions: int
) -> Prefill:
    """Store the operations as pending in ONE transaction with COPY, so none is visible before the commit.

    Nothing is rung: the caller decides who applies them (the workers, or the baseline). A
    capture's spec names its hold by index; its row gets that hold's id.
    """
    started = time.perf_counter()
    ids, rows = prefill_rows(specs, key_prefix, partitions)
    store.copy_pending(engine, principal_id, rows, CURRENCY, CATEGORY, ids)
    committed_at = store.db_clock(engine)
    touched = sorted({row.partition for row in rows})
    return Prefill(len(specs), time.perf_counter() - started, committed_at, touched, ids)


def wait_until_terminal(
    engine: Engine,
    scope: Scope,
    timeout: float,
    on_tick: Callable[[int], None] | None = None,
    poll: float = 0.1,
) -> int:
    """Poll until no operation of the scope is pending or the timeout passes; returns how many still are."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = store.pending_in(engine, scope)
        if on_tick is not None:
            on_tick(remaining)
        if remaining == 0 or time.monotonic() >= deadline:
            return remaining
        time.sleep(poll)


def _wait_funded(engine: Engine, scope: Scope, count: int) -> None:
    remaining = wait_until_terminal(engine, scope, FUNDING_TIMEOUT)
    if remaining:
        raise BenchError(
            f"funding: {remaining:,} of {count:,} deposits still pending after "
            f"{FUNDING_TIMEOUT:.0f}s; are the workers (and the broker URL) right?"
        )
