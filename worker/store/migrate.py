"""Run the Alembic migrations in migrations/ from code (`ledgerq migrate`, `ledgerq dev`, tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, pool, text
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.ext.asyncio import AsyncConnection

from worker.settings import normalize_database_url

# The migrations folder sits next to the worker package, in a checkout and in the installed wheel.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for the migrations folder and this database; alembic.ini is not needed."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Config values go through ConfigParser interpolation, so a `%` (an escaped password) must double.
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(database_url), revision)


def current_revision(database_url: str) -> str | None:
    """The revision the database is at, or None for an empty (never migrated) database."""
    engine = create_engine(normalize_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str:
    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:
        raise RuntimeError(f"no migration revisions in {MIGRATIONS_DIR}")
    return head


async def schema_versions(conn: AsyncConnection) -> list[str] | None:
    """The revisions in alembic_version (one, once migrated); None when the table is missing (the
    database was never migrated). `GET /ready` compares them with `head_revision`."""
    try:
        result = await conn.execute(text("SELECT version_num FROM alembic_version"))
    except ProgrammingError:
        return None
    return list(result.scalars().all())


AUTOVACUUM_OFF = (
    "autovacuum is off on this PostgreSQL server: every applied operation leaves a dead row version"
    " in operations and accounts, and without vacuum the pending-operations index grows with them"
    " (balance reads of busy accounts and the apply loop slow down). Turn it on, or VACUUM these"
    " tables on a schedule."
)


def autovacuum_warning(setting: str) -> str | None:
    """The operator's warning for the server's `autovacuum` setting, or None when it is on."""
    return AUTOVACUUM_OFF if setting.strip().lower() in ("off", "false", "0") else None


def autovacuum_setting(connection: Connection) -> str:
    return str(connection.execute(text("SHOW autovacuum")).scalar())


def check_autovacuum(database_url: str) -> str | None:
    """Ask the server; None when autovacuum is on (or the question could not be asked)."""
    engine = create_engine(normalize_database_url(database_url), poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return autovacuum_warning(autovacuum_setting(connection))
    except Exception:
        return None
    finally:
        engine.dispose()
