"""The service's shared settings and the workers', built once from LEDGERQ_* environment variables.

What the workers, the beat and every process share lives here (database, Redis and the broker,
partitions, batch size, the sweep, pool size, logging, ...). What only the API reads (its
address and server, signing key and token lifetime, rate and login limits, trusted proxies,
backpressure, waits and follows, /metrics) is in api/settings.py, whose `Settings` extends this
one and is built the same way; every variable is defined once, in one of the two `VARIABLES`
lists (api/settings.py `VARIABLES` is the complete one, for `ledgerq config` and docs/configuration.md). The
worker never imports api/.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit, urlunsplit


class SettingsError(RuntimeError):
    """A LEDGERQ_* variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class Var:
    """One documented variable: its name, default and meaning (docs/configuration.md lists every one)."""

    name: str
    default: str | None
    help: str
    # Secrets are never printed (`ledgerq config` shows only whether they are set).
    secret: bool = False


# The shared and worker variables; the API's own are in api/settings.py (`ledgerq config` prints both).
VARIABLES: tuple[Var, ...] = (
    Var(
        "LEDGERQ_DATABASE_URL",
        None,
        "PostgreSQL URL. Unset under `ledgerq dev`: an embedded server is started.",
    ),
    Var(
        "LEDGERQ_REDIS_URL",
        None,
        "Redis URL (completion events, doorbells). Unset under `ledgerq dev`: embedded.",
    ),
    Var(
        "LEDGERQ_BROKER_URL",
        None,
        "Celery broker URL; defaults to LEDGERQ_REDIS_URL (amqp:// works too).",
    ),
    Var(
        "LEDGERQ_PARTITIONS",
        "8",
        "Number of partitions (queues ledgerq.p0..pN-1). Fixed for a database's life.",
    ),
    Var(
        "LEDGERQ_WORKER_PARTITIONS",
        "auto",
        "Partitions this worker consumes: `auto` (a fair share, by leases in Redis, rebalanced as "
        "workers come and go), `all`, or a fixed list like `0-3,6`.",
    ),
    Var("LEDGERQ_FLOWER_HOST", "127.0.0.1", "Address Flower (`ledgerq flower`) listens on."),
    Var("LEDGERQ_FLOWER_PORT", "5555", "Port Flower (`ledgerq flower`) listens on."),
    Var(
        "LEDGERQ_WORKER_METRICS_HOST",
        "127.0.0.1",
        "Address each worker process serves its Prometheus metrics on (0.0.0.0 to be scraped "
        "from another host).",
    ),
    Var(
        "LEDGERQ_WORKER_METRICS_PORT",
        "9808",
        "Port of a worker's Prometheus metrics; a busy port makes it try the next 15 (several "
        "workers on one host). 0: no worker metrics endpoint.",
    ),
    Var("LEDGERQ_BATCH_SIZE", "500", "Most operations the worker applies in one transaction."),
    Var("LEDGERQ_SWEEP_INTERVAL", "2", "Seconds between sweeper runs (beat)."),
    Var(
        "LEDGERQ_SWEEP_AGE",
        "3",
        "Pending operations older than this many seconds get their partition re-rung.",
    ),
    Var(
        "LEDGERQ_DB_POOL_SIZE",
        "20",
        "PostgreSQL connections one process holds at most, all its pools together (at least 3). "
        "An API process splits them between its pools; a worker process holds at most 2.",
    ),
    Var(
        "LEDGERQ_WEBHOOK_TIMEOUT",
        "5",
        "Seconds a webhook delivery may take to connect, and to send or read each part; a slower "
        "receiver fails the attempt, which is retried.",
    ),
    Var(
        "LEDGERQ_WEBHOOK_RETRY_PERIOD",
        "259200",
        "Seconds a webhook delivery is retried before it gives up (3 days); an endpoint whose "
        "deliveries all failed for this long is disabled, with the reason.",
    ),
    Var(
        "LEDGERQ_WEBHOOK_RETENTION",
        "2592000",
        "Seconds a finished webhook delivery (succeeded or failed) is kept, with its attempts, "
        "after it was created (30 days); the sweeper deletes older ones. 0 keeps them forever.",
    ),
    Var(
        "LEDGERQ_WEBHOOK_BACKOFF_BASE",
        "10",
        "Seconds before a failed webhook delivery's first retry; each later wait doubles (half of "
        "it random jitter).",
    ),
    Var(
        "LEDGERQ_WEBHOOK_BACKOFF_MAX",
        "3600",
        "Longest wait between two tries of a webhook delivery, in seconds.",
    ),
    Var(
        "LEDGERQ_WEBHOOK_INTERVAL",
        "1",
        "Seconds between a webhook dispatcher's looks at PostgreSQL for deliveries that are due: "
        "about how late an event goes out after its transaction commits.",
    ),
    Var(
        "LEDGERQ_WEBHOOK_CONCURRENCY",
        "8",
        "Webhook deliveries one dispatcher (`ledgerq dispatcher`) makes at once (its threads).",
    ),
    Var(
        "LEDGERQ_WEBHOOKS_ALLOW_PRIVATE",
        "false",
        "`true` lets webhook endpoints resolve to loopback, private and link-local addresses (for "
        "development and tests; `ledgerq dev` sets it). `false`: only public addresses.",
    ),
    Var("LEDGERQ_DATA_DIR", ".ledgerq", "Where `ledgerq dev` keeps the embedded servers' data."),
    Var("LEDGERQ_LOG_FORMAT", "console", "`console` (readable) or `json` (production)."),
    Var("LEDGERQ_LOG_LEVEL", "INFO", "Log level."),
)


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name} must be between {low} and {high}, got {value}")
    return value


MIN_SECRET_LENGTH = 32


def _secret(env: Mapping[str, str], name: str) -> str | None:
    """An optional secret; when set it must be long enough to resist guessing."""
    value = env.get(name)
    if not value:
        return None
    if len(value) < MIN_SECRET_LENGTH:
        # Never echo the value: only its length.
        raise SettingsError(
            f"{name} must be at least {MIN_SECRET_LENGTH} characters, got {len(value)} "
            "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return value


def parse_partition_set(name: str, raw: str, partitions: int) -> tuple[int, ...]:
    """`all`, or comma separated numbers and ranges (`0-3,6`), each below `partitions`."""
    if raw.strip() in ("", "all"):
        return tuple(range(partitions))
    chosen: set[int] = set()
    for part in raw.split(","):
        bounds = part.strip().split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise SettingsError(f"{name} must look like `0-3,6` or `all`, got {raw!r}")
        low, high = int(bounds[0]), int(bounds[-1])
        if low > high or high >= partitions:
            raise SettingsError(f"{name}: {part!r} is outside 0..{partitions - 1}")
        chosen.update(range(low, high + 1))
    return tuple(sorted(chosen))


def parse_worker_partitions(raw: str, partitions: int) -> tuple[int, ...] | None:
    """LEDGERQ_WORKER_PARTITIONS: None for `auto` (leases), else the fixed set."""
    if raw.strip() == "auto":
        return None
    return parse_partition_set("LEDGERQ_WORKER_PARTITIONS", raw, partitions)


def normalize_database_url(url: str) -> str:
    """SQLAlchemy needs the psycopg (v3) driver named in the URL; accept plain postgres URLs too."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise SettingsError(
        f"LEDGERQ_DATABASE_URL must be a postgresql:// URL, got {url.split(':')[0]}://..."
    )


def mask_url(value: str) -> str:
    """Hide the password of a URL (postgresql://u:secret@h/db -> postgresql://u:***@h/db), for
    messages and `ledgerq config`."""
    if "://" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    host = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Env:
    """LEDGERQ_* values as a settings class reads them: the environment's, else the documented
    default; each check's message names the variable."""

    def __init__(self, env: Mapping[str, str], variables: Iterable[Var]) -> None:
        self.env = env
        self.defaults = {v.name: v.default for v in variables}

    def get(self, name: str) -> str:
        value = self.env.get(name) or self.defaults[name]
        if value is None:
            raise SettingsError(f"{name} is not set (see docs/configuration.md)")
        return value

    def raw(self, name: str, default: str = "") -> str:
        """The environment's value as given, no default applied."""
        return self.env.get(name, default)

    def number(self, name: str, low: int, high: int) -> int:
        return _int(name, self.get(name), low, high)

    def secret(self, name: str) -> str | None:
        return _secret(self.env, name)

    def flag(self, name: str) -> bool:
        value = self.get(name).strip().lower()
        if value not in ("true", "false", "1", "0", "yes", "no"):
            raise SettingsError(f"{name} must be true or false, got {value!r}")
        return value in ("true", "1", "yes")


@dataclass(frozen=True)
class Settings:
    # The variables this class reads (a subclass adds its own: api/settings.py).
    VARIABLES: ClassVar[tuple[Var, ...]] = VARIABLES

    database_url: str
    redis_url: str
    broker_url: str
    partitions: int
    # None: `auto`, the worker leases a fair share of the partitions (worker/leases.py).
    worker_partitions: tuple[int, ...] | None
    flower_host: str
    flower_port: int
    worker_metrics_host: str
    worker_metrics_port: int
    batch_size: int
    sweep_interval: float
    sweep_age: float
    db_pool_size: int
    webhook_timeout: float
    webhook_retry_period: float
    webhook_retention: float
    webhook_backoff_base: float
    webhook_backoff_max: float
    webhook_interval: float
    webhook_concurrency: int
    webhooks_allow_private: bool
    data_dir: str
    log_format: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        values = Env(os.environ if env is None else env, cls.VARIABLES)
        return cls(**cls.read(values))

    @classmethod
    def read(cls, env: Env) -> dict[str, Any]:
        """This class's fields from the environment, checked (a subclass extends the dict)."""
        partitions = env.number("LEDGERQ_PARTITIONS", 1, 1024)
        redis_url = env.get("LEDGERQ_REDIS_URL")
        log_format = env.get("LEDGERQ_LOG_FORMAT")
        if log_format not in ("console", "json"):
            raise SettingsError(f"LEDGERQ_LOG_FORMAT must be console or json, got {log_format!r}")
        return {
            "database_url": normalize_database_url(env.get("LEDGERQ_DATABASE_URL")),
            "redis_url": redis_url,
            "broker_url": env.raw("LEDGERQ_BROKER_URL") or redis_url,
            "partitions": partitions,
            "worker_partitions": parse_worker_partitions(
                env.get("LEDGERQ_WORKER_PARTITIONS"), partitions
            ),
            "flower_host": env.get("LEDGERQ_FLOWER_HOST"),
            "flower_port": env.number("LEDGERQ_FLOWER_PORT", 1, 65535),
            "worker_metrics_host": env.get("LEDGERQ_WORKER_METRICS_HOST"),
            "worker_metrics_port": env.number("LEDGERQ_WORKER_METRICS_PORT", 0, 65535),
            "batch_size": env.number("LEDGERQ_BATCH_SIZE", 1, 10_000),
            "sweep_interval": float(env.number("LEDGERQ_SWEEP_INTERVAL", 1, 3600)),
            "sweep_age": float(env.number("LEDGERQ_SWEEP_AGE", 1, 3600)),
            "db_pool_size": env.number("LEDGERQ_DB_POOL_SIZE", 3, 500),
            "webhook_timeout": float(env.number("LEDGERQ_WEBHOOK_TIMEOUT", 1, 60)),
            "webhook_retry_period": float(
                env.number("LEDGERQ_WEBHOOK_RETRY_PERIOD", 1, 30 * 24 * 3600)
            ),
            "webhook_retention": float(
                env.number("LEDGERQ_WEBHOOK_RETENTION", 0, 10 * 366 * 24 * 3600)
            ),
            "webhook_backoff_base": float(env.number("LEDGERQ_WEBHOOK_BACKOFF_BASE", 1, 3600)),
            "webhook_backoff_max": float(env.number("LEDGERQ_WEBHOOK_BACKOFF_MAX", 1, 24 * 3600)),
            "webhook_interval": float(env.number("LEDGERQ_WEBHOOK_INTERVAL", 1, 3600)),
            "webhook_concurrency": env.number("LEDGERQ_WEBHOOK_CONCURRENCY", 1, 64),
            "webhooks_allow_private": env.flag("LEDGERQ_WEBHOOKS_ALLOW_PRIVATE"),
            "data_dir": env.get("LEDGERQ_DATA_DIR"),
            "log_format": log_format,
            "log_level": env.get("LEDGERQ_LOG_LEVEL").upper(),
        }


@functools.cache
def get_settings() -> Settings:
    """Read the environment once per process; the workers and shared code ask here (the API asks
    api/settings.py `get_settings`, which has these fields too)."""
    return Settings.from_env()
