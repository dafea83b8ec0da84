"""Bench setup: the user, its accounts (in bulk through SQL) and their funding, before any timing starts."""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import httpx
import msgspec
import sqlalchemy as sa
from sqlalchemy import Engine

from bench import BenchError
from bench.db import (
    OpSpec,
    Scope,
    insert_accounts,
    max_seq,
    owner_of,
    prefill,
    user_id,
    wait_until_terminal,
)
from worker.store.queries import new_id
from worker.store.tables import users

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
        "/api/v1/accounts", json={"name": name, "type": "checking", "currency": "USD"}
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
                "category": "bench",
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
    after_seq = max_seq(engine)
    if api_key is None:
        await register(client, username, password)
    first = await create_account(client, f"{label} #0")
    # Whoever the credentials belong to (user or API key) owns this account: the bench's principal.
    principal_id = owner_of(engine, first)
    accounts = (
        [first, *insert_accounts(engine, principal_id, count - 1, label)] if count > 1 else [first]
    )
    funded = await fund_through_api(client, accounts, key_prefix)
    _wait_funded(engine, Scope(principal_id, after_seq, key_prefix), funded)
    return Setup(principal_id, accounts, funded, time.perf_counter() - started, after_seq)


def ensure_user(engine: Engine, username: str, password: str) -> UUID:
    """The bench user, created directly in SQL when missing (drain needs no API): the same argon2
    hash the API writes, so the user also works against the API afterwards."""
    existing = user_id(engine, username)
    if existing is not None:
        return existing
    from api.auth import hash_password  # argon2; only needed here

    with engine.begin() as conn:
        conn.execute(
            sa.dialects.postgresql.insert(users)
            .values(id=new_id(), username=username, password_hash=hash_password(password))
            .on_conflict_do_nothing()
        )
    found = user_id(engine, username)
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
    after_seq = max_seq(engine)
    principal_id = ensure_user(engine, username, password)
    accounts = insert_accounts(engine, principal_id, count, label)
    specs = [OpSpec("deposit", account, FUNDING) for account in accounts]
    done = prefill(engine, principal_id, specs, key_prefix, partitions)
    ring(done.partitions)
    _wait_funded(engine, Scope(principal_id, after_seq, key_prefix), len(specs))
    return Setup(principal_id, accounts, len(specs), time.perf_counter() - started, after_seq)


def _wait_funded(engine: Engine, scope: Scope, count: int) -> None:
    remaining = wait_until_terminal(engine, scope, FUNDING_TIMEOUT)
    if remaining:
        raise BenchError(
            f"funding: {remaining:,} of {count:,} deposits still pending after "
            f"{FUNDING_TIMEOUT:.0f}s; are the workers (and the broker URL) right?"
        )
