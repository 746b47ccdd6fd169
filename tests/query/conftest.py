"""Fixtures of the query-side tests: the CLI with the offline commands, and a database."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from support.cli import sync_from_simulator
from support.rows import fill, make_rows


@pytest.fixture
def run_cli() -> Any:
    """Invoke `mirror` in-process with the offline commands registered (idempotently)."""
    from mirror.cli import cli
    from mirror.commands_query import register

    register(cli)

    def run(args: Sequence[str], **kw: Any) -> Result:
        return CliRunner().invoke(cli, list(args), catch_exceptions=False, **kw)

    return run


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A module-wide database of 1,500 rows; tests must not change it."""
    path = tmp_path_factory.mktemp("demo") / "demo.db"
    fill(path, make_rows(1500, seed=5))
    return path


@pytest.fixture(scope="session")
def synced_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database filled by a real `mirror sync` from the simulated API over loopback HTTP."""
    path = tmp_path_factory.mktemp("synced") / "fal history.db"  # a space, on purpose
    sync_from_simulator(path, seed=4, days=2, requests_per_hour=150)
    return path
