"""Every test runs in its own folder with no fal key and no mirror settings from outside."""

from __future__ import annotations

import pytest

MIRROR_ENV = (
    "FAL_KEY",
    "FAL_KEY_ID",
    "FAL_KEY_SECRET",
    "MIRROR_DB",
    "MIRROR_BASE_URL",
    "MIRROR_KEY_FILE",
    "MIRROR_DEBUG",
    "MIRROR_RETRY_BASE",
    "MIRROR_RETRY_ATTEMPTS",
    "MIRROR_RETRY_CAP",
    "MIRROR_REQUEST_DEADLINE",
)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    for var in MIRROR_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- PostgreSQL
#
# PostgreSQL tests run against a real server: the one MIRROR_TEST_PG points at (`.ci/run`
# installs and starts one with `.ci/postgres`), or else a local server on the default socket.
# If neither answers, an installed but stopped local server is started (`.ci/postgres`, as
# root). They skip only when no server can be reached or started, and with MIRROR_REQUIRE_PG
# set (CI) they fail instead.

import os  # noqa: E402
import uuid  # noqa: E402

PG_DEFAULT = (
    f"postgresql+psycopg://{os.environ.get('USER', 'root')}@/postgres?host=/var/run/postgresql"
)


def _reachable(url: str) -> Exception | None:
    import sqlalchemy as sa

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


def _start_local_server() -> str | None:
    """Start the machine's installed PostgreSQL with `.ci/postgres` (root only, and only if
    Debian's cluster tools are there: the suite never installs packages itself)."""
    import shutil
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / ".ci" / "postgres"
    if os.geteuid() != 0 or not shutil.which("pg_ctlcluster") or not script.exists():
        return None
    done = subprocess.run([str(script)], capture_output=True, text=True, timeout=120)
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def _pg_admin_url() -> str | None:
    url = os.environ.get("MIRROR_TEST_PG") or PG_DEFAULT
    error = _reachable(url)
    if error is not None and not os.environ.get("MIRROR_TEST_PG"):
        started = _start_local_server()
        if started:
            url = started
            error = _reachable(url)
    if error is not None:
        if os.environ.get("MIRROR_REQUIRE_PG"):
            pytest.fail(
                f"PostgreSQL required (MIRROR_REQUIRE_PG) but unreachable at {url}: {error}"
            )
        return None
    return url


@pytest.fixture(scope="session")
def pg_admin() -> str:
    url = _pg_admin_url()
    if url is None:
        pytest.skip("no PostgreSQL server (set MIRROR_TEST_PG, or run .ci/postgres)")
    return url


@pytest.fixture
def pg_url(pg_admin: str) -> str:
    """A fresh, empty database on the test server, dropped afterwards."""
    yield from _fresh_pg_database(pg_admin)


def _fresh_pg_database(admin: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

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


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The mirror database as `--db` takes it, once per backend: a SQLite file, then a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    admin = request.getfixturevalue("pg_admin")
    gen = _fresh_pg_database(admin)
    url = next(gen)
    request.addfinalizer(lambda: next(gen, None))
    return url


@pytest.fixture(scope="session")
def pg_databases(pg_admin: str):  # type: ignore[no-untyped-def]
    """A maker of fresh databases for fixtures of any scope; each is dropped at the end."""
    made = []

    def make() -> str:
        gen = _fresh_pg_database(pg_admin)
        made.append(gen)
        return next(gen)

    yield make
    for gen in made:
        next(gen, None)
