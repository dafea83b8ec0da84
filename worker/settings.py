"""The one settings object, built once from LEDGERQ_* environment variables."""

from __future__ import annotations

import functools
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit


class SettingsError(RuntimeError):
    """A LEDGERQ_* variable is missing or malformed; the message names it."""


# The servers `ledgerq api` can run (cli/main.py api_command); LEDGERQ_API_SERVER's default is one.
API_SERVERS = ("uvicorn", "granian")


@dataclass(frozen=True)
class Var:
    """One documented variable: its name, default and meaning (the README table is built from these)."""

    name: str
    default: str | None
    help: str
    # Secrets are never printed (`ledgerq config` shows only whether they are set).
    secret: bool = False


# The single list of configuration variables. `ledgerq config` prints it and the README documents it.
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
    Var("LEDGERQ_API_HOST", "127.0.0.1", "Address the API listens on."),
    Var("LEDGERQ_API_PORT", "8000", "Port the API listens on."),
    Var("LEDGERQ_API_WORKERS", "1", "API processes started by `ledgerq api`."),
    Var(
        "LEDGERQ_API_SERVER",
        "uvicorn",
        "HTTP server `ledgerq api` runs the API under: `uvicorn` or `granian`.",
    ),
    Var(
        "LEDGERQ_TRUSTED_PROXIES",
        "",
        "Proxies whose X-Forwarded-For/-Proto the API believes: comma-separated addresses or "
        "networks (`10.0.0.0/8`), `*` for any. Empty: none, the client address is the "
        "connection's peer.",
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
    Var(
        "LEDGERQ_MAX_BACKLOG",
        "100000",
        "Pending operations per partition above which submits answer 503 (0: no limit).",
    ),
    Var("LEDGERQ_SWEEP_INTERVAL", "2", "Seconds between sweeper runs (beat)."),
    Var(
        "LEDGERQ_SWEEP_AGE",
        "3",
        "Pending operations older than this many seconds get their partition re-rung.",
    ),
    Var(
        "LEDGERQ_RING_TICK_MS",
        "1",
        "Milliseconds an API process gathers newly stored operations before it rings their "
        "partitions' workers (at most one drain message per partition per tick).",
    ),
    Var("LEDGERQ_MAX_WAIT", "30", "Largest `Prefer: wait=N` honoured, in seconds."),
    Var(
        "LEDGERQ_FOLLOW_RECHECK",
        "2",
        "Seconds between PostgreSQL reads of a follower (`Prefer: wait`, server-sent events, "
        "WebSocket) whose completion event has not come: a lost event delays a final state by "
        "at most this much.",
    ),
    Var(
        "LEDGERQ_DB_POOL_SIZE",
        "20",
        "PostgreSQL connections one process holds at most, all its pools together (at least 3). "
        "An API process splits them between its pools; a worker process holds at most 2.",
    ),
    Var(
        "LEDGERQ_METRICS_INTERVAL",
        "5",
        "Seconds between refreshes of the queue gauges /metrics serves (one refresher per API "
        "process; a scrape runs no query).",
    ),
    Var(
        "LEDGERQ_METRICS_TOKEN",
        None,
        "Bearer token /metrics requires (`Authorization: Bearer ...`), 32+ characters. Unset: "
        "/metrics answers anyone.",
        secret=True,
    ),
    Var(
        "LEDGERQ_SECRET_KEY",
        None,
        "Signs bearer tokens (HS256); 32+ characters, the same for every API process. Required "
        "by the API; `ledgerq dev` generates one under LEDGERQ_DATA_DIR.",
        secret=True,
    ),
    Var(
        "LEDGERQ_MASTER_KEY",
        None,
        "Admin key (`X-API-Key`), 32+ characters: creates API keys for any user, lists all users "
        "and accounts. Unset: no master key.",
        secret=True,
    ),
    Var("LEDGERQ_TOKEN_TTL", "900", "Bearer token lifetime in seconds."),
    Var(
        "LEDGERQ_DEPOSIT_MAX_PER_OPERATION",
        "1000000000000000",
        "Largest deposit, in minor units of its currency, a user or API key may make (the admin "
        "may set their own per currency).",
    ),
    Var(
        "LEDGERQ_DEPOSIT_DAILY_LIMIT",
        "10000000000000000",
        "Most a user or API key may deposit in any 24 hours, in minor units, per currency (the "
        "admin may set their own per currency).",
    ),
    Var(
        "LEDGERQ_RATE_LIMIT",
        "1200",
        "Requests per principal (or per client address, unauthenticated) per window; an API key "
        "may set its own. 0: no limit.",
    ),
    Var("LEDGERQ_RATE_LIMIT_WINDOW", "60", "Rate limit window in seconds."),
    Var(
        "LEDGERQ_LOGIN_MAX_FAILURES",
        "5",
        "Failed password logins per username per failure window before 429.",
    ),
    Var(
        "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS",
        "20",
        "Failed password logins per client address per failure window before 429.",
    ),
    Var("LEDGERQ_LOGIN_FAILURE_WINDOW", "300", "Seconds failed logins are remembered."),
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


def parse_trusted_proxies(raw: str) -> str:
    """LEDGERQ_TRUSTED_PROXIES as uvicorn's --forwarded-allow-ips takes it: "" (trust no proxy),
    "*" (any), or comma-separated addresses and networks. Checked here, as uvicorn would take a
    mistyped address for a name no client ever has, and trust nobody without a word."""
    entries = [entry.strip() for entry in raw.split(",") if entry.strip()]
    if "*" in entries:
        return "*"
    for entry in entries:
        try:
            if "/" in entry:
                ipaddress.ip_network(entry)
            else:
                ipaddress.ip_address(entry)
        except ValueError:
            raise SettingsError(
                "LEDGERQ_TRUSTED_PROXIES must be comma-separated addresses or networks "
                f"(like `127.0.0.1,10.0.0.0/8`) or `*`, got {entry!r}"
            ) from None
    return ",".join(entries)


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


@dataclass(frozen=True)
class Settings:
    database_url: str
    redis_url: str
    broker_url: str
    partitions: int
    # None: `auto`, the worker leases a fair share of the partitions (worker/leases.py).
    worker_partitions: tuple[int, ...] | None
    api_host: str
    api_port: int
    api_workers: int
    api_server: str
    # "" (no proxy is trusted), "*" or comma-separated addresses/networks (parse_trusted_proxies).
    trusted_proxies: str
    flower_host: str
    flower_port: int
    worker_metrics_host: str
    worker_metrics_port: int
    batch_size: int
    max_backlog: int
    sweep_interval: float
    sweep_age: float
    ring_tick: float
    max_wait: int
    follow_recheck: float
    db_pool_size: int
    metrics_interval: float
    metrics_token: str | None
    secret_key: str | None
    master_key: str | None
    token_ttl: int
    # Deposit limits' defaults, in minor units of each currency (domain/limits.py).
    deposit_max_per_operation: int
    deposit_daily_limit: int
    rate_limit: int
    rate_limit_window: int
    login_max_failures: int
    login_max_failures_per_address: int
    login_failure_window: int
    data_dir: str
    log_format: str
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        defaults = {v.name: v.default for v in VARIABLES}

        def get(name: str) -> str:
            value = env.get(name) or defaults[name]
            if value is None:
                raise SettingsError(f"{name} is not set (see the configuration table in README.md)")
            return value

        def number(name: str, low: int, high: int) -> int:
            return _int(name, get(name), low, high)

        partitions = number("LEDGERQ_PARTITIONS", 1, 1024)
        redis_url = get("LEDGERQ_REDIS_URL")
        log_format = get("LEDGERQ_LOG_FORMAT")
        if log_format not in ("console", "json"):
            raise SettingsError(f"LEDGERQ_LOG_FORMAT must be console or json, got {log_format!r}")
        api_server = get("LEDGERQ_API_SERVER")
        if api_server not in API_SERVERS:
            raise SettingsError(
                f"LEDGERQ_API_SERVER must be {' or '.join(API_SERVERS)}, got {api_server!r}"
            )
        return cls(
            database_url=normalize_database_url(get("LEDGERQ_DATABASE_URL")),
            redis_url=redis_url,
            broker_url=env.get("LEDGERQ_BROKER_URL") or redis_url,
            partitions=partitions,
            worker_partitions=parse_worker_partitions(get("LEDGERQ_WORKER_PARTITIONS"), partitions),
            api_host=get("LEDGERQ_API_HOST"),
            api_port=number("LEDGERQ_API_PORT", 1, 65535),
            api_workers=number("LEDGERQ_API_WORKERS", 1, 64),
            api_server=api_server,
            trusted_proxies=parse_trusted_proxies(env.get("LEDGERQ_TRUSTED_PROXIES", "")),
            flower_host=get("LEDGERQ_FLOWER_HOST"),
            flower_port=number("LEDGERQ_FLOWER_PORT", 1, 65535),
            worker_metrics_host=get("LEDGERQ_WORKER_METRICS_HOST"),
            worker_metrics_port=number("LEDGERQ_WORKER_METRICS_PORT", 0, 65535),
            batch_size=number("LEDGERQ_BATCH_SIZE", 1, 10_000),
            max_backlog=number("LEDGERQ_MAX_BACKLOG", 0, 1_000_000_000),
            sweep_interval=float(number("LEDGERQ_SWEEP_INTERVAL", 1, 3600)),
            sweep_age=float(number("LEDGERQ_SWEEP_AGE", 1, 3600)),
            ring_tick=number("LEDGERQ_RING_TICK_MS", 0, 1000) / 1000,
            max_wait=number("LEDGERQ_MAX_WAIT", 0, 300),
            follow_recheck=float(number("LEDGERQ_FOLLOW_RECHECK", 1, 300)),
            db_pool_size=number("LEDGERQ_DB_POOL_SIZE", 3, 500),
            metrics_interval=float(number("LEDGERQ_METRICS_INTERVAL", 1, 3600)),
            metrics_token=_secret(env, "LEDGERQ_METRICS_TOKEN"),
            secret_key=_secret(env, "LEDGERQ_SECRET_KEY"),
            master_key=_secret(env, "LEDGERQ_MASTER_KEY"),
            token_ttl=number("LEDGERQ_TOKEN_TTL", 10, 86_400),
            deposit_max_per_operation=number("LEDGERQ_DEPOSIT_MAX_PER_OPERATION", 1, 10**18),
            deposit_daily_limit=number("LEDGERQ_DEPOSIT_DAILY_LIMIT", 1, 10**18),
            rate_limit=number("LEDGERQ_RATE_LIMIT", 0, 100_000_000),
            rate_limit_window=number("LEDGERQ_RATE_LIMIT_WINDOW", 1, 86_400),
            login_max_failures=number("LEDGERQ_LOGIN_MAX_FAILURES", 1, 1_000_000),
            login_max_failures_per_address=number(
                "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS", 1, 1_000_000
            ),
            login_failure_window=number("LEDGERQ_LOGIN_FAILURE_WINDOW", 1, 86_400),
            data_dir=get("LEDGERQ_DATA_DIR"),
            log_format=log_format,
            log_level=get("LEDGERQ_LOG_LEVEL").upper(),
        )

    def require_secret_key(self) -> str:
        """The token signing key; the API cannot start without it (a per-process random key would
        make a token from one API process invalid at the next)."""
        if self.secret_key is None:
            raise SettingsError(
                "LEDGERQ_SECRET_KEY is not set: the API signs bearer tokens with it and every API "
                "process needs the same one (see the configuration table in README.md)"
            )
        return self.secret_key


@functools.cache
def get_settings() -> Settings:
    """Read the environment once per process; every component asks here."""
    return Settings.from_env()
