"""Alembic environment: the metadata comes from worker/store/tables.py, the URL from LEDGERQ_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool

from worker.settings import SettingsError, normalize_database_url
from worker.store.tables import metadata

config = context.config


def _database_url() -> str:
    # An explicit URL (set by `ledgerq migrate` or tests) wins over the environment.
    explicit = config.get_main_option("sqlalchemy.url")
    if explicit:
        return normalize_database_url(explicit)
    import os

    url = os.environ.get("LEDGERQ_DATABASE_URL")
    if not url:
        raise SettingsError("LEDGERQ_DATABASE_URL is not set (see docs/configuration.md)")
    return normalize_database_url(url)


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(_database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
