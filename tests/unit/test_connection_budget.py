"""The connection budget (worker/store/pools.py): how LEDGERQ_DB_POOL_SIZE splits, what a
deployment holds, when the start-up check warns, and that the shipped deployment files fit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from api.settings import Settings
from worker.settings import SettingsError
from worker.store.pools import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_SUPERUSER_RESERVED,
    MIN_POOL_SIZE,
    ROOM,
    WORKER_PROCESS_CONNECTIONS,
    ApiPools,
    Budget,
    api_pools,
    budget_warning,
    deployment_connections,
    worker_pool,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("size", range(MIN_POOL_SIZE, 501))
def test_an_api_process_holds_exactly_its_pool_size(size: int) -> None:
    pools = api_pools(size)
    assert pools.total == size
    assert min(pools.fast, pools.reads, pools.transactions) >= 1
    # The hot paths get the largest share.
    assert pools.fast >= pools.reads >= pools.transactions


def test_the_default_split() -> None:
    pools = api_pools(20)
    assert (pools.fast, pools.reads, pools.transactions) == (13, 5, 2)
    assert api_pools(3) == ApiPools(fast=1, reads=1, transactions=1)
    with pytest.raises(ValueError):
        api_pools(2)


def test_a_worker_process_holds_at_most_two() -> None:
    assert [worker_pool(n) for n in (1, 2, 3, 20, 500)] == [1, 2, 2, 2, 2]
    assert WORKER_PROCESS_CONNECTIONS == 2


def test_deployment_connections_add_up_processes() -> None:
    assert deployment_connections(api_processes=1, worker_processes=1, pool_size=20) == 22
    assert deployment_connections(api_processes=4, worker_processes=3, pool_size=20) == 86
    assert deployment_connections(api_processes=2, worker_processes=0, pool_size=10) == 20


def test_budget_fits_up_to_the_slots_ordinary_roles_may_take() -> None:
    # 100 slots, 3 kept for superusers: 97 for everyone else.
    fits = Budget(max_connections=100, reserved=3, needed=80, others=17)
    assert fits.available == 97 and fits.fits
    assert budget_warning(fits, "1 API process") is None
    over = Budget(max_connections=100, reserved=3, needed=80, others=18)
    assert not over.fits
    warning = budget_warning(over, "4 API process(es) x LEDGERQ_DB_POOL_SIZE 20")
    assert warning is not None
    for said in ("4 API process(es) x LEDGERQ_DB_POOL_SIZE 20", "80", "18", "98", "97", "100"):
        assert said in warning
    assert "LEDGERQ_DB_POOL_SIZE" in warning and "max_connections" in warning


def test_pool_size_below_three_is_refused_naming_the_variable() -> None:
    base = {"LEDGERQ_DATABASE_URL": "postgresql://u@h/db", "LEDGERQ_REDIS_URL": "redis://h"}
    assert Settings.from_env(base).db_pool_size == 20
    assert Settings.from_env({**base, "LEDGERQ_DB_POOL_SIZE": "3"}).db_pool_size == 3
    with pytest.raises(SettingsError, match="LEDGERQ_DB_POOL_SIZE"):
        Settings.from_env({**base, "LEDGERQ_DB_POOL_SIZE": "2"})


def _env_default(env: dict[str, str], name: str, default: str) -> int:
    """A compose value like ${X:-4} or a literal."""
    value = str(env.get(name, default))
    if value.startswith("${") and ":-" in value:
        value = value.split(":-", 1)[1].rstrip("}")
    return int(value)


def test_the_shipped_deployments_fit_a_default_postgresql_with_room() -> None:
    """docker-compose.yml and the Procfile, as shipped and with three workers: every API process
    at its pool size, every worker process at its share (beat and Flower hold none), within
    PostgreSQL's default max_connections less its superuser slots, with ROOM to spare."""
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    env = compose["x-ledgerq-env"]
    postgres = compose["services"]["postgres"]
    command = " ".join(postgres.get("command", []))
    max_connections = DEFAULT_MAX_CONNECTIONS
    if "max_connections=" in command:
        max_connections = int(command.split("max_connections=", 1)[1].split()[0])
    defaults = Settings.from_env(
        {"LEDGERQ_DATABASE_URL": "postgresql://h/d", "LEDGERQ_REDIS_URL": "redis://h"}
    )
    pool_size = _env_default(env, "LEDGERQ_DB_POOL_SIZE", str(defaults.db_pool_size))
    api_processes = _env_default(env, "LEDGERQ_API_WORKERS", str(defaults.api_workers))
    procfile = (ROOT / "Procfile").read_text()
    assert "web: ledgerq api" in procfile and "worker: ledgerq worker" in procfile
    available = max_connections - DEFAULT_SUPERUSER_RESERVED - ROOM
    # A worker command is one prefork child by default (ledgerq worker --concurrency 1).
    for workers in (1, 3):
        held = deployment_connections(api_processes, workers, pool_size)
        assert held <= available, (workers, held, available)
