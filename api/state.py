"""Per-process services of the API (engine, Redis, waiters), created in the app's lifespan."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import redis.asyncio
import structlog
from litestar import Litestar
from litestar.channels import ChannelsPlugin
from litestar.channels.backends.redis import RedisChannelsPubSubBackend
from sqlalchemy.ext.asyncio import AsyncEngine

from api.backlog import BacklogMonitor
from api.directory import AccountDirectory
from api.groupcommit import Grouped, group_commit
from api.ratelimit import LoginThrottle, login_throttle
from api.ringer import Ringer
from api.waiters import CompletionWaiters
from worker.events import CAPTADO_CHANNEL, OPERATIONS_CHANNEL, channel
from worker.settings import Settings
from worker.store import queries
from worker.store.db import make_async_engine
from worker.store.fast import FastStore

if TYPE_CHECKING:
    from api.auth import CredentialCache

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
    waiters: CompletionWaiters = field(default_factory=CompletionWaiters)


def services_of(app: Litestar) -> Services:
    services: Services = app.state.services
    return services


def channels_plugin(redis_client: redis.asyncio.Redis) -> ChannelsPlugin:
    return ChannelsPlugin(
        backend=RedisChannelsPubSubBackend(redis=redis_client),
        channels=[
            channel(OPERATIONS_CHANNEL, redis_client),
            channel(CAPTADO_CHANNEL, redis_client),
        ],
    )


async def _follow_completions(
    channels: ChannelsPlugin, waiters: CompletionWaiters, name: str
) -> None:
    while True:
        try:
            async with channels.start_subscription([name]) as subscriber:
                async for message in subscriber.iter_events():
                    waiters.dispatch(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep listening: a Redis hiccup must not end waits for good
            log.warning("completion_listener_error", error=str(exc))
            await asyncio.sleep(1)


def lifespan_for(
    settings: Settings, redis_client: redis.asyncio.Redis, credentials: CredentialCache
) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Transactions are rare on the API (registration, cancel, price upserts): a small pool.
        engine = make_async_engine(
            settings.database_url, pool_size=max(2, settings.db_pool_size // 4)
        )
        reads = make_async_engine(
            settings.database_url, pool_size=settings.db_pool_size, autocommit=True
        )
        fast = FastStore(settings.database_url, size=settings.db_pool_size)
        await fast.open()
        # Imported here: the Celery app reads LEDGERQ_* when it is first imported.
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
        )
        app.state.services = services
        channels = app.plugins.get(ChannelsPlugin)
        tasks = [
            asyncio.create_task(
                _follow_completions(
                    channels, services.waiters, channel(OPERATIONS_CHANNEL, services.redis)
                )
            ),
            asyncio.create_task(services.backlog.run(engine)),
            asyncio.create_task(ringer.run()),
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
