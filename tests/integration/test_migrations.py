"""The schema only changes through Alembic, and the migrations match the SQLAlchemy metadata."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
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


def test_apply_loop_plans_stay_right_when_statistics_say_nothing_is_pending(
    empty_database: str,
) -> None:
    """A backlog after a quiet spell: statistics (ANALYZE) taken while nothing was pending, then
    thousands pending. The apply loop must still read a partition's pending rows through the
    partition index and finish them by primary key, never by walking every pending row (it once
    did: a 100,000-operation backlog drained at a quarter of its speed)."""
    import json
    import re

    from worker.store.fast import libpq_url
    from worker.store.ledger import _LOCKED_PENDING_BATCH, _WRITE_OUTCOMES

    upgrade(empty_database)
    with psycopg.connect(libpq_url(empty_database), autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO users (id, username, password_hash) VALUES (gen_random_uuid(), 'u', 'x');
            INSERT INTO accounts (id, owner_id, name, kind, currency)
                SELECT gen_random_uuid(), (SELECT id FROM users), 'a' || n, 'checking', 'USD'
                FROM generate_series(1, 50) AS n;
            INSERT INTO operations (id, partition, principal_id, idempotency_key, fingerprint,
                                    type, account_id, amount, currency, status)
                SELECT gen_random_uuid(), n % 8, (SELECT id FROM users), 'k' || n, 'f',
                       CASE WHEN n % 2 = 0 THEN 'deposit' ELSE 'withdrawal' END,
                       (SELECT id FROM accounts ORDER BY id OFFSET n % 50 LIMIT 1), 100, 'USD',
                       'succeeded'
                FROM generate_series(1, 20000) AS n;
            """
        )
        conn.execute("ANALYZE operations")
        conn.execute("UPDATE operations SET status = 'pending'")  # the backlog; stats unchanged
        conn.execute("SET plan_cache_mode = force_generic_plan")

        def plan(sql: str, params: dict[str, object]) -> str:
            """EXPLAIN the generic plan of a psycopg-style statement; unnamed params are '{}'."""
            names = list(dict.fromkeys(re.findall(r"%\((\w+)\)s", sql)))
            numbered = re.sub(r"%\((\w+)\)s", lambda m: f"${names.index(m[1]) + 1}", sql)
            values = ", ".join(f"'{params.get(name, '{}')}'" for name in names)
            conn.execute("DEALLOCATE ALL")
            conn.execute(f"PREPARE q AS {numbered}")
            row = conn.execute(f"EXPLAIN (FORMAT JSON) EXECUTE q({values})").fetchone()
            assert row is not None
            return json.dumps(row[0])

        batch = plan(_LOCKED_PENDING_BATCH.sql, {"namespace": 1, "partition": 3, "limit": 16})
        assert "ix_operations_pending_partition_seq" in batch
        assert "ix_operations_pending_debits_account_id" not in batch

        write = plan(_WRITE_OUTCOMES.sql, {})  # empty arrays: the plan, not the data
        assert "pk_operations" in write
        assert "ix_operations_pending" not in write
