"""Pure worker rules: partition routing, queue routing, adaptive batch size, settings parsing."""

from __future__ import annotations

import uuid

import pytest

from worker.apply_loop import MIN_BATCH, next_batch_limit
from worker.routing import CONTROL_QUEUE, DRAIN_TASK, SWEEP_TASK, partition_for, route_task
from worker.settings import Settings, SettingsError, parse_partition_set


def test_partition_is_stable_and_spread() -> None:
    account = uuid.UUID("12345678-1234-5678-1234-567812345678")
    # crc32 of the canonical text: the same on every host and Python version.
    assert partition_for(account, 8) == 1
    counts = [0] * 8
    for i in range(8000):
        counts[partition_for(uuid.UUID(int=i * 7919 + 13), 8)] += 1
    assert min(counts) > 800


def test_routes() -> None:
    assert route_task(DRAIN_TASK, (3,), {}, {}) == {"queue": "ledgerq.p3"}
    assert route_task(DRAIN_TASK, (), {"partition": 5}, {}) == {"queue": "ledgerq.p5"}
    assert route_task(SWEEP_TASK, (), {}, {}) == {"queue": CONTROL_QUEUE}
    assert route_task("celery.chord_unlock", (), {}, {}) is None
    with pytest.raises(ValueError):
        route_task(DRAIN_TASK, ("3",), {}, {})


def test_batch_limit_ramps_up_under_backlog_and_down_when_quiet() -> None:
    limit, seen = MIN_BATCH, []
    for _ in range(8):
        limit = next_batch_limit(limit, applied=limit, ceiling=500)
        seen.append(limit)
    assert seen == [32, 64, 128, 256, 500, 500, 500, 500]
    assert next_batch_limit(500, applied=3, ceiling=500) == 250
    assert next_batch_limit(MIN_BATCH, applied=1, ceiling=500) == MIN_BATCH
    assert next_batch_limit(1, applied=1, ceiling=1) == 1


def test_partition_sets() -> None:
    assert parse_partition_set("X", "all", 8) == tuple(range(8))
    assert parse_partition_set("X", "0-2,6", 8) == (0, 1, 2, 6)
    for bad in ("8", "3-1", "a", "1-2-3"):
        with pytest.raises(SettingsError, match="X"):
            parse_partition_set("X", bad, 8)


def test_settings_fail_fast_naming_the_variable() -> None:
    base = {"LEDGERQ_DATABASE_URL": "postgresql://u@h/db", "LEDGERQ_REDIS_URL": "redis://h"}
    settings = Settings.from_env(base)
    assert settings.database_url == "postgresql+psycopg://u@h/db"
    assert settings.broker_url == "redis://h"
    with pytest.raises(SettingsError, match="LEDGERQ_DATABASE_URL"):
        Settings.from_env({"LEDGERQ_REDIS_URL": "redis://h"})
    with pytest.raises(SettingsError, match="LEDGERQ_PARTITIONS"):
        Settings.from_env({**base, "LEDGERQ_PARTITIONS": "zero"})
    with pytest.raises(SettingsError, match="LEDGERQ_DATABASE_URL"):
        Settings.from_env({**base, "LEDGERQ_DATABASE_URL": "mysql://x"})


def test_channels_are_named_after_the_redis_database() -> None:
    # Redis pub/sub ignores database numbers: without this, deployments sharing a server cross-talk.
    import redis

    from worker.events import channel

    assert (
        channel("operations", redis.Redis.from_url("redis://127.0.0.1:1/5"))
        == "ledgerq.5.operations"
    )
    assert channel("captado", redis.Redis.from_url("redis://127.0.0.1:1")) == "ledgerq.0.captado"


def test_autovacuum_off_is_warned_about_and_on_is_not() -> None:
    from worker.store.migrate import AUTOVACUUM_OFF, autovacuum_warning

    assert autovacuum_warning("off") == AUTOVACUUM_OFF
    assert autovacuum_warning(" OFF\n") == AUTOVACUUM_OFF
    assert autovacuum_warning("on") is None
