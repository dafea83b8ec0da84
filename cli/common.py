"""What the `ledgerq` commands share: output consoles, settings, connection errors, the API port."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator

from rich.console import Console

from api.settings import Settings, get_settings
from worker.settings import SettingsError, mask_url, normalize_database_url

console = Console(highlight=False)
errors = Console(highlight=False, stderr=True)


def settings() -> Settings:
    """The settings as the environment holds them now (`dev` changes it before reading)."""
    get_settings.cache_clear()
    return get_settings()


def database_url() -> str:
    # Migrations need only the database, so do not demand the other variables here.
    url = os.environ.get("LEDGERQ_DATABASE_URL")
    if not url:
        raise SettingsError("LEDGERQ_DATABASE_URL is not set (see docs/configuration.md)")
    return normalize_database_url(url)


@contextlib.contextmanager
def explain_connection_errors(url: str) -> Iterator[None]:
    """Turn "cannot connect" into one line naming the variable instead of a long traceback."""
    from sqlalchemy.exc import OperationalError

    try:
        yield
    except OperationalError as exc:
        raise SettingsError(
            f"LEDGERQ_DATABASE_URL: cannot use {mask_url(url)}: {exc.orig or exc}"
        ) from exc


def probe_host(host: str) -> str:
    # A wildcard listen address is reachable on loopback.
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)  # noqa: S104


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if sock.connect_ex((probe_host(host), port)) == 0:
            raise SettingsError(
                f"LEDGERQ_API_PORT: something already listens on {host}:{port}; "
                "stop it or choose another port"
            )
