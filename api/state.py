"""Per-process services of the API (engine, Redis, waiters), created in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import redis.asyncio
import structlog
from litestar import Litestar
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from redis.exceptions import RedisError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.backlog import BacklogMonitor
from api.directory import AccountDirectory
from api.groupcommit import Grouped, group_commit
from api.ratelimit import LoginThrottle, login_throttle
from api.ringer import Ringer
from api.settings import Settings
from api.waiters import CompletionWaiters
from worker.events import CAPTADO_CHANNEL, OPERATIONS_CHANNEL, channel
from worker.store import queries
from worker.store.db import make_async_engine, read_budget_async
from worker.store.fast import FastStore, first_line
from worker.store.pools import api_pools, log_budget

if TYPE_CHECKING:
    from api.auth import CredentialCache
    from api.metrics import QueueGauges

# How the API's connections appear in pg_stat_activity (and what the start-up check counts).
APPLICATION_NAME = "ledgerq-api"

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    # A pool in autocommit: single-statement reads and writes (the hot paths) skip BEGIN/COMMIT.
    reads: AsyncEngine
    # The hottest statements (submit, read an account or an operation) skip SQLAlchemy's executor.
    fast: FastStore
    redis: redis.asyncio.Redis
    credentials: CredentialCache
    login_throttle: LoginThrottle
    backlog: BacklogMonitor
    # Concurrent submits share one INSERT and one commit; their partitions are rung after it.
    ringer: Ringer
    committer: Grouped[queries.NewOperation, dict[queries.OperationKey, queries.Record]]
    accounts: AccountDirectory
    # The queue's facts for /metrics, refreshed in the background (api/metrics.py).
    queue_gauges: QueueGauges
    waiters: CompletionWaiters = field(default_factory=CompletionWaiters)


def services_of(app: Litestar) -> Services:
    services: Services = app.state.services
    return services


def looks(
    fast: FastStore,
) -> tuple[
    Callable[[list[str]], Awaitable[list[str]]], Callable[[list[str]], Awaitable[dict[str, int]]]
]:
    """The registry's two looks at PostgreSQL (api/waiters.py `watch`), one statement each by
    primary key however many operations are waited on and accounts followed."""

    async def final_operations(ids: list[str]) -> list[str]:
        final = await queries.final_operation_ids(fast, [UUID(i) for i in ids])
        return [str(i) for i in final]

    async def balances(ids: list[str]) -> dict[str, int]:
        balances = await queries.balances_by_id(fast, [UUID(i) for i in ids])
        return {str(i): balance for i, balance in balances.items()}

    return final_operations, balances


# Seconds between attempts to get the completion-event subscription back after Redis failed.
RESUBSCRIBE_DELAY = 0.5


class ResubscribingBackend(RedisChannelsPubSubBackend):
    """Litestar's Redis pub/sub backend, whose event stream survives Redis failing.

    The plugin reads events in one task that ends for good when the stream raises: after a Redis
    restart no completion event reached this process again (followers then learned final states
    only from the periodic look at PostgreSQL). Here a connection error is logged and the stream
    goes on: redis-py reconnects the subscription on the next read and subscribes again to its
    channels. Events published meanwhile are lost; the followers' periodic look covers them.
    """

    async def stream_events(self) -> AsyncGenerator[tuple[str, Any], None]:
        while True:
            try:
                async for event in super().stream_events():
                    yield event
            except (RedisError, OSError) as exc:
                log.warning("completion_events_interrupted", error=str(exc))
                await asyncio.sleep(RESUBSCRIBE_DELAY)


def channels_plugin(redis_client: redis.asyncio.Redis) -> ChannelsPlugin:
    return ChannelsPlugin(
        backend=ResubscribingBackend(redis=redis_client),
        channels=[
            channel(OPERATIONS_CHANNEL, redis_client),
            channel(CAPTADO_CHANNEL, redis_client),
        ],
    )


def closed_accounts(payload: bytes | str) -> list[UUID]:
    """The accounts a batch of completion events closed (a close that succeeded)."""
    if '"close"' not in (payload if isinstance(payload, str) else payload.decode()):
        return []  # the common case, without decoding the events
    try:
        events = json.loads(payload)
    except ValueError:
        return []
    return [
        UUID(e["account_id"])
        for e in events
        if e.get("type") == "close" and e.get("status") == "succeeded"
    ]


async def _follow_completions(
    channels: ChannelsPlugin, waiters: CompletionWaiters, accounts: AccountDirectory, name: str
) -> None:
    while True:
        try:
            async with channels.start_subscription([name]) as subscriber:
                async for message in subscriber.iter_events():
                    waiters.dispatch(message)
                    if closed := closed_accounts(message):
                        accounts.forget(closed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep listening: a Redis hiccup must not end waits for good
            log.warning("completion_listener_error", error=str(exc))
            await asyncio.sleep(1)


async def check_connection_budget(engine: AsyncEngine, settings: Settings) -> None:
    """At start: warn when this `ledgerq api`'s processes (LEDGERQ_API_WORKERS, each holding up
    to LEDGERQ_DB_POOL_SIZE) and the connections other clients hold now would not fit in the
    server's max_connections. Only a warning: refusing to start would not free a slot."""
    processes = settings.api_workers
    needed = processes * api_pools(settings.db_pool_size).total
    try:
        async with engine.connect() as conn:
            budget = await read_budget_async(conn, APPLICATION_NAME, needed)
    except Exception as exc:  # a check must not stop the API: say so and go on
        log.warning("connection_budget_unchecked", error=first_line(exc))
        return
    what = f"{processes} API process(es) x LEDGERQ_DB_POOL_SIZE {settings.db_pool_size}"
    log_budget(log, budget, what)


def lifespan_for(
    settings: Settings, redis_client: redis.asyncio.Redis, credentials: CredentialCache
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # LEDGERQ_DB_POOL_SIZE is the process's budget, split between its three pools
        # (worker/store/pools.py): the fast path gets most; transactions are rare on the API
        # (registration, cancel, price upserts, probes and the background refreshers).
        sizes = api_pools(settings.db_pool_size)
        engine = make_async_engine(
            settings.database_url,
            pool_size=sizes.transactions,
            application_name=APPLICATION_NAME,
        )
        reads = make_async_engine(
            settings.database_url,
            pool_size=sizes.reads,
            autocommit=True,
            application_name=APPLICATION_NAME,
        )
        fast = FastStore(settings.database_url, size=sizes.fast, application_name=APPLICATION_NAME)
        await fast.open()
        await check_connection_budget(engine, settings)
        # Imported here: the Celery app reads LEDGERQ_* when it is first imported; api.metrics
        # imports this module.
        from api.metrics import QueueGauges
        from worker.tasks import ring_many

        ringer = Ringer(redis_client, ring_many, settings.ring_tick)
        services = Services(
            settings=settings,
            engine=engine,
            reads=reads,
            fast=fast,
            redis=redis_client,
            credentials=credentials,
            login_throttle=login_throttle(redis_client, settings),
            backlog=BacklogMonitor(settings.max_backlog),
            ringer=ringer,
            committer=group_commit(fast, ringer.mark),
            accounts=AccountDirectory(fast),
            queue_gauges=QueueGauges(settings.metrics_interval),
            waiters=CompletionWaiters(recheck=settings.follow_recheck),
        )
        app.state.services = services
        channels = app.plugins.get(ChannelsPlugin)
        tasks = [
            asyncio.create_task(
                _follow_completions(
                    channels,
                    services.waiters,
                    services.accounts,
                    channel(OPERATIONS_CHANNEL, services.redis),
                )
            ),
            asyncio.create_task(services.backlog.run(engine)),
            asyncio.create_task(ringer.run()),
            asyncio.create_task(services.queue_gauges.run(services)),
            # Followers whose completion event never came are found in PostgreSQL.
            asyncio.create_task(services.waiters.watch(*looks(fast))),
        ]
        try:
            yield
        finally:
            ringer.stop()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await engine.dispose()
            await reads.dispose()
            await fast.close()
            await redis_client.aclose()

    return lifespan
