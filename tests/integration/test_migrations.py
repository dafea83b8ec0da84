"""The schema only changes through Alembic, and the migrations match the SQLAlchemy metadata."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from tests.integration.isolated import fresh_database
from worker.settings import normalize_database_url
from worker.store.migrate import current_revision, downgrade, head_revision, upgrade
from worker.store.tables import metadata


@pytest.fixture
def empty_database(server_urls: tuple[str, str]) -> Iterator[str]:
    with fresh_database(server_urls[0], "ledgerq_migrations") as url:
        yield normalize_database_url(url)


def test_upgrade_from_empty_matches_metadata_and_downgrades(empty_database: str) -> None:
    upgrade(empty_database)
    assert current_revision(empty_database) == head_revision()
    engine = sa.create_engine(empty_database, poolclass=sa.pool.NullPool)
    with engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), metadata
        )
        assert diff == [], f"migrations and worker/store/tables.py disagree: {diff}"
        # The two tables every operation rewrites are vacuumed at 1% dead rows (0005).
        options = dict(
            conn.execute(
                sa.text(
                    "SELECT relname, reloptions FROM pg_class"
                    " WHERE relname IN ('operations', 'accounts')"
                )
            ).all()
        )
        assert "autovacuum_vacuum_scale_factor=0.01" in options["operations"]
        assert "autovacuum_vacuum_scale_factor=0.01" in options["accounts"]

    downgrade(empty_database, "0004")
    with engine.connect() as conn:
        reset = conn.execute(
            sa.text("SELECT reloptions FROM pg_class WHERE relname = 'operations'")
        ).scalar()
    assert reset is None

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
