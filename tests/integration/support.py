"""Helpers for integration tests: processes under test, an API client, ledger checks in SQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy import Engine

from domain.idempotency import request_fingerprint
from worker.routing import partition_for
from worker.store.queries import new_id
from worker.store.tables import accounts, entries, operations

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct-horse-battery"
TERMINAL = {"succeeded", "failed", "cancelled"}


class Process:
    """A child process of the system under test, with its output in a log file."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], logs_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = logs_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, *self.args],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        start = self._log_offset
        while time.monotonic() < deadline:
            if needle in self.log_text()[start:]:
                return
            self.assert_alive()
            time.sleep(0.1)
        raise AssertionError(
            f"{self.name} did not log {needle!r} in {timeout}s:\n{self.log_text()[-3000:]}"
        )

    def assert_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}"
            )

    def kill(self) -> None:
        """SIGKILL the whole process group: the parent and any pool children, no goodbye."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


@contextlib.contextmanager
def extra_api(name: str, service_env: dict[str, str], logs_dir: Path, **env: str) -> Iterator[str]:
    """One more API process on the suite's database and Redis (its own port, `env` on top of the
    suite's), ready when entered, stopped on exit; yields its base URL."""
    from devserver import free_port

    port = free_port()
    process = Process(
        name, ["-m", "cli", "api"], {**service_env, **env, "LEDGERQ_API_PORT": str(port)}, logs_dir
    )
    process.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", process, timeout=60)
        yield url
    finally:
        process.stop()


def wait_for_http(url: str, process: Process, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.assert_alive()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer in {timeout}s:\n{process.log_text()[-3000:]}")


def key() -> str:
    return secrets.token_hex(12)


@dataclass
class LedgerClient:
    """One registered user talking to the API over HTTP Basic."""

    http: httpx.AsyncClient
    username: str
    user_id: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, PASSWORD)

    @classmethod
    async def register(cls, http: httpx.AsyncClient, prefix: str) -> LedgerClient:
        username = f"{prefix}-{secrets.token_hex(4)}"
        r = await http.post(
            "/api/v1/auth/register", json={"username": username, "password": PASSWORD}
        )
        assert r.status_code == 201, r.text
        return cls(http, username, r.json()["id"])

    async def request(self, method: str, url: str, **kw: Any) -> httpx.Response:
        return await self.http.request(method, url, auth=self.auth, **kw)

    async def create_account(self, currency: str = "USD", kind: str = "checking") -> str:
        r = await self.request(
            "POST",
            "/api/v1/accounts",
            json={"name": f"{kind} {currency}", "type": kind, "currency": currency},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def account(self, account_id: str) -> dict[str, Any]:
        r = await self.request("GET", f"/api/v1/accounts/{account_id}")
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def balance(self, account_id: str) -> str:
        return str((await self.account(account_id))["balance"])

    async def submit(
        self, body: dict[str, Any], idempotency_key: str | None = None, **headers: str
    ) -> httpx.Response:
        return await self.request(
            "POST",
            "/api/v1/operations",
            json=body,
            headers={"Idempotency-Key": idempotency_key or key(), **headers},
        )

    async def submit_ok(self, body: dict[str, Any], idempotency_key: str | None = None) -> str:
        r = await self.submit(body, idempotency_key)
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    async def wait(self, operation_id: str, within: float = 60) -> dict[str, Any]:
        """Poll with Prefer: wait until the operation is final."""
        deadline = time.monotonic() + within
        while True:
            r = await self.request(
                "GET", f"/api/v1/operations/{operation_id}", headers={"Prefer": "wait=10"}
            )
            assert r.status_code == 200, r.text
            body = dict(r.json())
            if body["status"] in TERMINAL:
                return body
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"operation {operation_id} still {body['status']} after {within}s"
                )

    async def wait_all(self, operation_ids: list[str], within: float = 120) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(self.wait(i, within) for i in operation_ids)))

    async def deposit(self, account_id: str, amount: str, **extra: Any) -> dict[str, Any]:
        op = await self.submit_ok(
            {"type": "deposit", "account_id": account_id, "amount": amount, **extra}
        )
        result = await self.wait(op)
        assert result["status"] == "succeeded", result
        return result


# ---------------------------------------------------------------- direct SQL


def insert_pending(
    engine: Engine,
    principal_id: UUID | str,
    account_id: UUID | str,
    amounts: list[int],
    op_type: str = "deposit",
    currency: str = "USD",
    partitions: int = 8,
    to_account_id: UUID | str | None = None,
) -> list[UUID]:
    """Commit operations as pending without ringing any bell, as if the API died after its INSERT."""
    account = UUID(str(account_id))
    rows = []
    for amount in amounts:
        k = key()
        rows.append(
            {
                "id": new_id(),
                "partition": partition_for(account, partitions),
                "principal_id": UUID(str(principal_id)),
                "idempotency_key": k,
                "fingerprint": request_fingerprint({"k": k}),
                "type": op_type,
                "account_id": account,
                "to_account_id": UUID(str(to_account_id)) if to_account_id else None,
                "amount": amount,
                "currency": currency,
            }
        )
    with engine.begin() as conn:
        conn.execute(operations.insert(), rows)
    return [r["id"] for r in rows]


def operation_count(engine: Engine, principal_id: str) -> int:
    """Operations stored for a principal (bad input must leave this unchanged)."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(operations)
                .where(operations.c.principal_id == principal_id)
            ).scalar_one()
        )


def wait_terminal(engine: Engine, ids: list[UUID], timeout: float = 60) -> dict[UUID, str]:
    deadline = time.monotonic() + timeout
    while True:
        with engine.connect() as conn:
            statuses = dict(
                conn.execute(
                    sa.select(operations.c.id, operations.c.status).where(operations.c.id.in_(ids))
                ).all()
            )
        if all(s in TERMINAL for s in statuses.values()) and len(statuses) == len(ids):
            return statuses
        if time.monotonic() > deadline:
            pending = sum(1 for s in statuses.values() if s == "pending")
            raise AssertionError(
                f"{pending} of {len(ids)} operations still pending after {timeout}s"
            )
        time.sleep(0.1)


def entry_counts(engine: Engine, ids: list[UUID]) -> dict[UUID, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(entries.c.operation_id, sa.func.count())
            .where(entries.c.operation_id.in_(ids))
            .group_by(entries.c.operation_id)
        ).all()
    return {r[0]: r[1] for r in rows}


# Succeeded operations that move no money, so write no entry.
NO_ENTRY_TYPES = "('hold', 'void', 'freeze', 'unfreeze', 'close')"


def assert_ledger_consistent(engine: Engine) -> None:
    """The ledger invariants (docs/architecture.md), over the whole database."""
    with engine.connect() as conn:
        mismatched = conn.execute(
            sa.text(
                """
                SELECT a.id, a.balance, COALESCE(SUM(e.amount), 0) AS total
                FROM accounts a LEFT JOIN entries e ON e.account_id = a.id
                GROUP BY a.id HAVING a.balance <> COALESCE(SUM(e.amount), 0)
                """
            )
        ).all()
        assert mismatched == [], f"balance differs from the sum of entries: {mismatched[:5]}"
        unbalanced = conn.execute(
            sa.select(accounts.c.currency, sa.func.sum(accounts.c.balance))
            .group_by(accounts.c.currency)
            .having(sa.func.sum(accounts.c.balance) != 0)
        ).all()
        assert unbalanced == [], f"money created or destroyed: {unbalanced}"
        negative = conn.execute(
            sa.select(accounts.c.id, accounts.c.balance).where(
                accounts.c.kind.in_(["checking", "savings"]),
                accounts.c.balance - accounts.c.held < -accounts.c.overdraft_limit,
            )
        ).all()
        assert negative == [], f"customer accounts below their floor: {negative}"
        held = conn.execute(
            sa.text(
                """
                SELECT a.id, a.held, COALESCE(SUM(h.amount) FILTER (WHERE h.status = 'open'), 0)
                FROM accounts a LEFT JOIN holds h ON h.account_id = a.id
                GROUP BY a.id
                HAVING a.held <> COALESCE(SUM(h.amount) FILTER (WHERE h.status = 'open'), 0)
                """
            )
        ).all()
        assert held == [], f"held amounts differ from the open holds: {held[:5]}"
        over_reversed = conn.execute(
            sa.text(
                """
                SELECT o.id, o.amount, o.reversed_amount, COALESCE(SUM(r.amount), 0)
                FROM operations o
                LEFT JOIN operations r ON r.reversal_of = o.id AND r.status = 'succeeded'
                GROUP BY o.id
                HAVING o.reversed_amount <> COALESCE(SUM(r.amount), 0)
                    OR o.reversed_amount > o.amount
                """
            )
        ).all()
        assert over_reversed == [], f"reversed amounts wrong: {over_reversed[:5]}"
        per_operation = conn.execute(
            sa.text(
                f"""
                SELECT o.id, o.status, COUNT(e.id) AS n, COALESCE(SUM(e.amount), 0) AS total
                FROM operations o LEFT JOIN entries e ON e.operation_id = o.id
                GROUP BY o.id, o.status
                HAVING (o.status = 'succeeded' AND o.type IN {NO_ENTRY_TYPES}
                        AND COUNT(e.id) <> 0)
                    OR (o.status = 'succeeded' AND o.type NOT IN {NO_ENTRY_TYPES}
                        AND (COUNT(e.id) <> 2 OR SUM(e.amount) <> 0))
                    OR (o.status <> 'succeeded' AND COUNT(e.id) <> 0)
                """
            )
        ).all()
        assert per_operation == [], (
            f"operations applied other than exactly once: {per_operation[:5]}"
        )


def failed_login_addresses(redis_url: str) -> set[str]:
    """Client addresses the failed-login limiter has counted (api/ratelimit.py LoginThrottle)."""
    prefix = "ledgerq:login-failures:addr:"
    client = redis.Redis.from_url(redis_url)
    try:
        return {k.decode()[len(prefix) :] for k in client.scan_iter(match=prefix + "*")}
    finally:
        client.close()
