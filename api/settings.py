"""The API's own settings: what only the API process (and `ledgerq api`) reads, built like the
shared ones (worker/settings.py) from LEDGERQ_* environment variables.

`Settings` here extends worker/settings.py `Settings`: an API process has the shared fields
(database, Redis, partitions, pool size, logging, ...) and these. Each variable is defined once:
the shared and worker ones in worker/settings.py `VARIABLES`, the API's in `API_VARIABLES` below;
`VARIABLES` here is both, the complete list `ledgerq config` prints and docs/configuration.md documents.
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass
from typing import Any, ClassVar

from worker import settings as shared
from worker.settings import Env, SettingsError, Var

# The servers `ledgerq api` can run (cli/main.py api_command); LEDGERQ_API_SERVER's default is one.
API_SERVERS = ("uvicorn", "granian")

# The variables only the API reads.
API_VARIABLES: tuple[Var, ...] = (
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
    Var(
        "LEDGERQ_MAX_BACKLOG",
        "100000",
        "Pending operations per partition above which submits answer 503 (0: no limit).",
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
        "LEDGERQ_HOLD_DEFAULT_EXPIRY",
        "604800",
        "Seconds a hold stays open when it names no `expires_in` (7 days); then the expiry sweep "
        "voids it through the queue.",
    ),
    Var(
        "LEDGERQ_HOLD_MAX_EXPIRY",
        "2592000",
        "The longest `expires_in` a hold may ask for, in seconds (30 days).",
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
)

# Every configuration variable, shared and the API's: `ledgerq config` prints them all.
VARIABLES: tuple[Var, ...] = (*shared.VARIABLES, *API_VARIABLES)


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


@dataclass(frozen=True)
class Settings(shared.Settings):
    VARIABLES: ClassVar[tuple[Var, ...]] = VARIABLES

    api_host: str
    api_port: int
    api_workers: int
    api_server: str
    # "" (no proxy is trusted), "*" or comma-separated addresses/networks (parse_trusted_proxies).
    trusted_proxies: str
    max_backlog: int
    ring_tick: float
    max_wait: int
    follow_recheck: float
    metrics_interval: float
    metrics_token: str | None
    secret_key: str | None
    master_key: str | None
    token_ttl: int
    # Deposit limits' defaults, in minor units of each currency (domain/limits.py).
    deposit_max_per_operation: int
    deposit_daily_limit: int
    # Holds: seconds until expiry when none is asked for, and the longest that may be asked.
    hold_default_expiry: int
    hold_max_expiry: int
    rate_limit: int
    rate_limit_window: int
    login_max_failures: int
    login_max_failures_per_address: int
    login_failure_window: int

    @classmethod
    def read(cls, env: Env) -> dict[str, Any]:
        values = super().read(env)
        api_server = env.get("LEDGERQ_API_SERVER")
        if api_server not in API_SERVERS:
            raise SettingsError(
                f"LEDGERQ_API_SERVER must be {' or '.join(API_SERVERS)}, got {api_server!r}"
            )
        hold_default = env.number("LEDGERQ_HOLD_DEFAULT_EXPIRY", 1, 10 * 365 * 86_400)
        hold_max = env.number("LEDGERQ_HOLD_MAX_EXPIRY", 1, 10 * 365 * 86_400)
        if hold_default > hold_max:
            raise SettingsError(
                f"LEDGERQ_HOLD_DEFAULT_EXPIRY ({hold_default}) is above LEDGERQ_HOLD_MAX_EXPIRY "
                f"({hold_max})"
            )
        return {
            **values,
            "hold_default_expiry": hold_default,
            "hold_max_expiry": hold_max,
            "api_host": env.get("LEDGERQ_API_HOST"),
            "api_port": env.number("LEDGERQ_API_PORT", 1, 65535),
            "api_workers": env.number("LEDGERQ_API_WORKERS", 1, 64),
            "api_server": api_server,
            "trusted_proxies": parse_trusted_proxies(env.raw("LEDGERQ_TRUSTED_PROXIES")),
            "max_backlog": env.number("LEDGERQ_MAX_BACKLOG", 0, 1_000_000_000),
            "ring_tick": env.number("LEDGERQ_RING_TICK_MS", 0, 1000) / 1000,
            "max_wait": env.number("LEDGERQ_MAX_WAIT", 0, 300),
            "follow_recheck": float(env.number("LEDGERQ_FOLLOW_RECHECK", 1, 300)),
            "metrics_interval": float(env.number("LEDGERQ_METRICS_INTERVAL", 1, 3600)),
            "metrics_token": env.secret("LEDGERQ_METRICS_TOKEN"),
            "secret_key": env.secret("LEDGERQ_SECRET_KEY"),
            "master_key": env.secret("LEDGERQ_MASTER_KEY"),
            "token_ttl": env.number("LEDGERQ_TOKEN_TTL", 10, 86_400),
            "deposit_max_per_operation": env.number("LEDGERQ_DEPOSIT_MAX_PER_OPERATION", 1, 10**18),
            "deposit_daily_limit": env.number("LEDGERQ_DEPOSIT_DAILY_LIMIT", 1, 10**18),
            "rate_limit": env.number("LEDGERQ_RATE_LIMIT", 0, 100_000_000),
            "rate_limit_window": env.number("LEDGERQ_RATE_LIMIT_WINDOW", 1, 86_400),
            "login_max_failures": env.number("LEDGERQ_LOGIN_MAX_FAILURES", 1, 1_000_000),
            "login_max_failures_per_address": env.number(
                "LEDGERQ_LOGIN_MAX_FAILURES_PER_ADDRESS", 1, 1_000_000
            ),
            "login_failure_window": env.number("LEDGERQ_LOGIN_FAILURE_WINDOW", 1, 86_400),
        }

    def require_secret_key(self) -> str:
        """The token signing key; the API cannot start without it (a per-process random key would
        make a token from one API process invalid at the next)."""
        if self.secret_key is None:
            raise SettingsError(
                "LEDGERQ_SECRET_KEY is not set: the API signs bearer tokens with it and every API "
                "process needs the same one (see docs/configuration.md)"
            )
        return self.secret_key


@functools.cache
def get_settings() -> Settings:
    """Read the environment once per API process (shared fields included)."""
    return Settings.from_env()
