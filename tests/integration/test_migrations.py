"""The schema only changes through Alembic, and the migrations match the SQLAlchemy metadata."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from worker.settings import normalize_database_url
from worker.store.migrate import current_revision, downgrade, head_revision, upgrade
from worker.store.tables import metadata


@pytest.fixture
def empty_database(server_urls: tuple[str, str]) -> Iterator[str]:
    server = server_urls[0].replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"ledgerq_migrations_{secrets.token_hex(4)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield normalize_database_url(f"{server.rpartition('/')[0]}/{name}")
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_upgrade_from_empty_matches_metadata_and_downgrades(empty_database: str) -> None:
    upgrade(empty_database)
    assert current_revision(empty_database) == head_revision()
    engine = sa.create_engine(empty_database, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        )
        assert diff == [], f"migrations and worker/store/tables.py disagree: {diff}"

    downgrade(empty_database)
    with engine.connect() as conn:
        left = set(sa.inspect(conn).get_table_names()) - {"alembic_version"}
    assert left == set()
    assert current_revision(empty_database) is None

    upgrade(empty_database)
    with engine.connect() as conn:
        assert {"users", "accounts", "operations", "entries"} <= set(
            sa.inspect(conn).get_table_names()
        )
    engine.dispose()
