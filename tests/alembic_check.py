"""`alembic check` against a fresh database: CI runs this to prove the migrations cover the metadata.

Uses LEDGERQ_TEST_DATABASE_URL's server, or an embedded PostgreSQL when it is unset.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import psycopg

from devserver import start_postgres
from worker.store.migrate import upgrade

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    server_url = os.environ.get("LEDGERQ_TEST_DATABASE_URL")
    embedded = None
    if not server_url:
        embedded = start_postgres(ROOT / ".ledgerq" / "test" / "postgres", database="postgres")
        server_url = embedded.url
    server_url = server_url.replace("postgresql+psycopg://", "postgresql://", 1)
    name = f"ledgerq_check_{secrets.token_hex(4)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"{server_url.rpartition('/')[0]}/{name}"
    try:
        upgrade(url)
        env = {**os.environ, "LEDGERQ_DATABASE_URL": url}
        return subprocess.run(
            [sys.executable, "-m", "alembic", "check"], cwd=ROOT, env=env, check=False
        ).returncode
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if embedded is not None:
            embedded.stop()


if __name__ == "__main__":
    raise SystemExit(main())
