"""Group commit at intake and the ringer, in an API app run in this process against the real
PostgreSQL, Redis and Celery worker of the session (the app's lifespan opens its own pools).

Submits gathered in one event-loop turn reach the committer together, so they form one group
deterministically (an account the process has seen is looked up from its cache, without I/O).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from uuid import UUID

import psycopg
import pytest
import redis.asyncio
from sqlalchemy import Engine, func, select

from api import intake
from api.app import create_litestar
from api.errors import ApiError
from api.schemas import OperationRequest
from api.settings import get_settings
from api.state import Services, services_of
from tests.integration.support import LedgerClient, key, wait_terminal
from worker.doorbell import bell_key
from worker.store.queries import NewOperation
from worker.store.tables import operations


@contextlib.asynccontextmanager
async def in_process_api() -> AsyncIterator[Services]:
    """The API app's services, started by its own lifespan (entered and left in one task)."""
    app = create_litestar(get_settings())
    async with app.lifespan():
        yield services_of(app)


def deposit(account: str, amount: str = "1.00", description: str | None = None) -> OperationRequest:
    return OperationRequest(
        type="deposit", account_id=UUID(account), amount=amount, description=description
    )


async def submit_each(
    services: Services, user: UUID, requests: Sequence[tuple[str, OperationRequest]]
) -> list[intake.Outcome]:
    """One intake call per request, all started in the same event-loop turn."""
    results = await asyncio.gather(
        *(intake.submit(services, user, [intake.Submission(k, r)]) for k, r in requests)
    )
    return [outcome for [outcome] in results]


def count_keys(engine: Engine, keys: list[str]) -> int:
    with engine.connect() as conn:
        return conn.execute(
            select(func.count()).where(operations.c.idempotency_key.in_(keys))
        ).scalar_one()


async def warm(services: Services, alice: LedgerClient, account: str) -> UUID:
    """One submit through the process, so the account's owner and currency are cached."""
    [outcome] = await submit_each(services, UUID(alice.user_id), [(key(), deposit(account))])
    assert isinstance(outcome, intake.Accepted)
    return outcome.row.id


async def test_concurrent_submits_share_one_insert_and_are_applied(
    alice: LedgerClient, engine: Engine
) -> None:
    async with in_process_api() as services:
        account = await alice.create_account()
        await warm(services, alice, account)
        before = services.committer.groups
        outcomes = await submit_each(
            services, UUID(alice.user_id), [(key(), deposit(account)) for _ in range(40)]
        )
        assert services.committer.groups == before + 1  # forty requests, one commit
        assert all(isinstance(o, intake.Accepted) and o.created for o in outcomes)
        ids = [o.row.id for o in outcomes if isinstance(o, intake.Accepted)]
        assert len(set(ids)) == 40
        result = wait_terminal(engine, ids)
        assert set(result.values()) == {"succeeded"}
        assert await alice.balance(account) == "41.00"


async def same_key_in_one_group(
    alice: LedgerClient, engine: Engine, amounts: tuple[str, str]
) -> tuple[intake.Outcome, intake.Outcome]:
    """Two deposits under one key, submitted in one event-loop turn: one group, one stored row."""
    async with in_process_api() as services:
        account = await alice.create_account()
        await warm(services, alice, account)
        k = key()
        before = services.committer.groups
        first, second = await submit_each(
            services, UUID(alice.user_id), [(k, deposit(account, a)) for a in amounts]
        )
        assert services.committer.groups == before + 1
        assert count_keys(engine, [k]) == 1
        return first, second


async def test_same_key_and_body_in_one_group_is_one_operation(
    alice: LedgerClient, engine: Engine
) -> None:
    first, second = await same_key_in_one_group(alice, engine, ("1.00", "1.00"))
    assert isinstance(first, intake.Accepted) and isinstance(second, intake.Accepted)
    assert sorted([first.created, second.created]) == [False, True]  # one 202, one 200 replay
    assert first.row.id == second.row.id


async def test_same_key_other_body_in_one_group_is_refused(
    alice: LedgerClient, engine: Engine
) -> None:
    first, second = await same_key_in_one_group(alice, engine, ("1.00", "2.00"))
    assert isinstance(first, intake.Accepted) and first.created
    assert isinstance(second, ApiError)
    assert (second.status_code, second.code) == (422, "idempotency_key_reused")


async def test_a_database_error_fails_exactly_its_group(
    alice: LedgerClient, engine: Engine
) -> None:
    async with in_process_api() as services:
        account = await alice.create_account()
        await warm(services, alice, account)
        user = UUID(alice.user_id)
        # A group that commits and is answered.
        answered = await submit_each(services, user, [(key(), deposit(account)) for _ in range(5)])
        assert all(isinstance(o, intake.Accepted) and o.created for o in answered)

        # The next group carries an operation the database refuses (no such account: a foreign key
        # violation): the whole group is rolled back, and every request of it is told so.
        failing_keys = [key() for _ in range(5)]
        bad = NewOperation(
            principal_id=user,
            idempotency_key=key(),
            fingerprint="x",
            type="deposit",
            account_id=UUID(int=1),
            to_account_id=None,
            amount=100,
            currency="USD",
            partition=0,
            category=None,
            description=None,
        )
        results = await asyncio.gather(
            *(
                intake.submit(services, user, [intake.Submission(k, deposit(account))])
                for k in failing_keys
            ),
            services.committer([bad]),
            return_exceptions=True,
        )
        *refused, raw = results
        assert isinstance(raw, psycopg.errors.ForeignKeyViolation)
        for outcome in refused:
            assert isinstance(outcome, ApiError)
            assert (outcome.status_code, outcome.code) == (503, "database_unavailable")
            assert outcome.headers == {"Retry-After": "1"}
        assert count_keys(engine, failing_keys) == 0

        # Nothing already answered was lost; the refused requests succeed when retried.
        retried = await submit_each(services, user, [(k, deposit(account)) for k in failing_keys])
        assert all(isinstance(o, intake.Accepted) and o.created for o in retried)
        ids = [o.row.id for o in (*answered, *retried) if isinstance(o, intake.Accepted)]
        assert set(wait_terminal(engine, ids).values()) == {"succeeded"}
        assert await alice.balance(account) == "11.00"


async def test_a_failed_ring_gives_its_bell_back(api_url: str) -> None:
    async with in_process_api() as services:
        # A partition number no worker serves, so nothing else touches its bell.
        partition = 900
        client: redis.asyncio.Redis = services.redis
        await client.delete(bell_key(partition))

        def broken_send(partitions: Sequence[int]) -> None:
            raise ConnectionError("broker unreachable")

        ringer = type(services.ringer)(client, broken_send, tick=0)
        with pytest.raises(ConnectionError):
            await ringer.ring([partition])
        # Not sent, so not held: the next submit to the partition rings again.
        assert await client.exists(bell_key(partition)) == 0
        assert ringer.rings == 0

        sent: list[int] = []
        ringer = type(services.ringer)(client, sent.extend, tick=0)
        await ringer.ring([partition])
        await ringer.ring([partition])  # held now: a drain is queued, no second message
        assert sent == [partition]
        assert ringer.rings == 1
        await client.delete(bell_key(partition))


async def test_ring_dropped_on_purpose_is_applied_by_the_sweeper(
    alice: LedgerClient, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with in_process_api() as services:
        account = await alice.create_account()
        warmed = await warm(services, alice, account)
        wait_terminal(engine, [warmed])

        def drop(partitions: Sequence[int]) -> None:
            raise ConnectionError("ring dropped on purpose")

        monkeypatch.setattr(services.ringer, "_send", drop)
        [outcome] = await submit_each(services, UUID(alice.user_id), [(key(), deposit(account))])
        assert isinstance(outcome, intake.Accepted) and outcome.created
        # No message reached any worker for it; beat's sweeper finds it pending and rings.
        assert wait_terminal(engine, [outcome.row.id], timeout=60) == {outcome.row.id: "succeeded"}
        assert await alice.balance(account) == "2.00"


async def test_cold_account_lookups_of_concurrent_submits_share_one_query(
    alice: LedgerClient, engine: Engine
) -> None:
    accounts = [await alice.create_account() for _ in range(5)]
    async with in_process_api() as services:
        lookups = services.accounts._load
        assert lookups.groups == 0  # a new process has seen no account yet
        outcomes = await submit_each(
            services, UUID(alice.user_id), [(key(), deposit(a)) for a in accounts]
        )
        assert lookups.groups == 1  # five requests, five unknown accounts, one SELECT
        assert all(isinstance(o, intake.Accepted) and o.created for o in outcomes)
        ids = [o.row.id for o in outcomes if isinstance(o, intake.Accepted)]
        assert set(wait_terminal(engine, ids).values()) == {"succeeded"}
