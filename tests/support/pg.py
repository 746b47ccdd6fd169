"""The PostgreSQL test server: reaching it (or starting it), and fresh databases on it.

PostgreSQL tests run against a real server: the one MIRROR_TEST_PG points at (`.ci/run`
installs and starts one with `.ci/postgres`), or else a local server on the default socket.
If neither answers, an installed but stopped local server is started (`.ci/postgres`, as
root). They skip only when no server can be reached or started, and with MIRROR_REQUIRE_PG
set (CI) they fail instead. The fixtures (``pg_admin``, ``pg_url``, ``db_url``,
``pg_databases``) are in tests/conftest.py.

Mirrors on PostgreSQL are read with ``support.compare`` (``db_query``, ``mirror_rows``),
like SQLite files; ``pg_engine`` is for a test that needs a session of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

PG_DEFAULT = (
    f"postgresql+psycopg://{os.environ.get('USER', 'root')}@/postgres?host=/var/run/postgresql"
)
REPO = Path(__file__).resolve().parents[2]


def pg_engine(url: str) -> sa.Engine:
    """Plain SQLAlchemy on psycopg, none of mirror's column types or connection hooks."""
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, poolclass=sa.pool.NullPool)


def reachable(url: str) -> Exception | None:
    """None if a server answers at ``url``, else why not."""
    try:
        engine = sa.create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 5}
        )
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as e:  # any failure to reach the server means "no server here"
        return e
    return None


def start_local_server() -> str | None:
    """Start the machine's installed PostgreSQL with `.ci/postgres` (root only, and only if
    Debian's cluster tools are there: the suite never installs packages itself)."""
    script = REPO / ".ci" / "postgres"
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or not script.exists():
        return None
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def pg_admin_url() -> str | None:
    """The test server's URL (to its ``postgres`` database), or None if there is none."""
    url = os.environ.get("MIRROR_TEST_PG") or PG_DEFAULT
    error = reachable(url)
    if error is not None and not os.environ.get("MIRROR_TEST_PG"):
        started = start_local_server()
        if started:
            url = started
            error = reachable(url)
    if error is not None:
        if os.environ.get("MIRROR_REQUIRE_PG"):
            pytest.fail(
                f"PostgreSQL required (MIRROR_REQUIRE_PG) but unreachable at {url}: {error}"
            )
        return None
    return url


def fresh_pg_database(admin: str) -> Iterator[str]:
    """A generator: yields the URL of a new, empty database; dropped when resumed."""
    name = f"mirror_test_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield str(
            sa.engine.make_url(admin).set(database=name).render_as_string(hide_password=False)
        )
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        engine.dispose()
