"""Every test runs in its own folder with no fal key, no mirror settings and no proxy or CA
settings from outside."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import settings
from support.figures import FIGURES, KEPT_ONCE, merge
from support.pg import fresh_pg_database, pg_admin_url

# no per-example time limit: on a loaded 2-core machine one example can take longer than
# hypothesis's 200 ms default without anything being wrong (timings are benches' business)
settings.register_profile("mirror", deadline=None)
settings.load_profile("mirror")

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
    "MIRROR_MEDIA_DIR",
    "MIRROR_MEDIA_HOSTS",
)
#: what mirror reads of the network settings (mirror.netenv), in both cases, and curl's and
#: requests' CA variables: a machine's proxy or CA bundle must not reach the simulated API
NETWORK_ENV = (
    *(f"{name}_PROXY" for name in ("HTTP", "HTTPS", "ALL", "NO")),
    *(f"{name}_proxy" for name in ("http", "https", "all", "no")),
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "CURL_CA_BUNDLE",
    "REQUESTS_CA_BUNDLE",
    "NETRC",
)


@pytest.fixture(autouse=True)
def _isolate(tmp_path, monkeypatch):
    for var in (*MIRROR_ENV, *NETWORK_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.chdir(tmp_path)


# --------------------------------------------------------------------------- PostgreSQL
#
# The PostgreSQL tests' server and databases (how the server is found, or started: see
# support/pg.py).


@pytest.fixture(scope="session")
def pg_admin() -> str:
    url = pg_admin_url()
    if url is None:
        pytest.skip("no PostgreSQL server (set MIRROR_TEST_PG, or run .ci/postgres)")
    return url


@pytest.fixture
def pg_url(pg_admin: str) -> Iterator[str]:
    """A fresh, empty database on the test server, dropped afterwards."""
    yield from fresh_pg_database(pg_admin)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """The mirror database as `--db` takes it, once per backend: a SQLite file, then a fresh
    PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "m.db")
    admin = request.getfixturevalue("pg_admin")
    gen = fresh_pg_database(admin)
    url = next(gen)
    request.addfinalizer(lambda: next(gen, None))
    return url


@pytest.fixture(scope="session")
def pg_databases(pg_admin: str):  # type: ignore[no-untyped-def]
    """A maker of fresh databases for fixtures of any scope; each is dropped at the end."""
    made = []

    def make() -> str:
        gen = fresh_pg_database(pg_admin)
        made.append(gen)
        return next(gen)

    yield make
    for gen in made:
        next(gen, None)


# ------------------------------------------------------------------ the reliability figures


def pytest_sessionfinish(session, exitstatus) -> None:  # type: ignore[no-untyped-def]
    """In a test process of ``pytest -n``: hand the figures to the controlling process."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["figures"] = dict(FIGURES)
        out["kept_once"] = sorted(KEPT_ONCE)


@pytest.hookimpl(optionalhook=True)  # pytest-xdist's hook: absent when running without it
def pytest_testnodedown(node, error) -> None:  # type: ignore[no-untyped-def]
    out = getattr(node, "workeroutput", None) or {}
    merge(out.get("figures", {}), out.get("kept_once", []))


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # type: ignore[no-untyped-def]
    if not FIGURES:
        return
    terminalreporter.section("reliability figures")
    for name in sorted(FIGURES):
        terminalreporter.write_line(f"{name}: {FIGURES[name]}")
