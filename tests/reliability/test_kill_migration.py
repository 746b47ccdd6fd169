"""Kills during a schema migration: the file keeps its old schema (or none) and its rows.

Every command migrates the file it opens, inside one transaction, under the writer lock,
after a backup when the file already holds a schema. A kill at any statement of that
transaction, during the backup, or between the last statement and the COMMIT must leave the
old revision with every row intact, and the next run must then upgrade and sync normally.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy.engine.default as sa_default
from alembic import command
from support.cli import die, note, run_cli
from support.compare import assert_mirror_equals, check_consistent, query, revision
from support.figures import count
from support.sim import TARGETS, env_for, listable, static_world, sync_args

import mirror.db
from mirror.api import FalClient, RetryPolicy
from mirror.db import alembic_config, make_engine, script_heads
from mirror.simulator import DEFAULT_KEY, SimulatedAPI
from mirror.store import Store
from mirror.timeparse import api_param, to_text
from mirror.windows import floor_s

OLD = "0001"
INTERRUPTED = "mirror: interrupted; everything committed so far is kept"


def _head() -> str:
    script, _ = script_heads()
    return str(script.get_current_head())


def kill_in_migration(n: int | str, sig: int = signal.SIGKILL):  # type: ignore[no-untyped-def]
    """Signal ourselves at the n-th SQL statement of the upgrade, or ("commit") just
    before its COMMIT, or ("backup") once the backup copy is written."""

    def patch(notes: Path) -> None:
        state = {"in": False, "n": 0}
        upgrade = command.upgrade

        def counted_upgrade(*a: Any, **kw: Any) -> Any:
            state["in"] = True
            try:
                result = upgrade(*a, **kw)
            finally:
                state["in"] = False
            if n == "commit":
                note(notes, "point migration-before-commit")
                die(sig)
            return result

        command.upgrade = counted_upgrade  # the store looks it up at call time

        for name in ("do_execute", "do_execute_no_params", "do_executemany"):
            orig = getattr(sa_default.DefaultDialect, name)

            def wrapper(self: Any, cursor: Any, statement: str, *a: Any, _o=orig, **kw: Any) -> Any:  # type: ignore[no-untyped-def]
                if state["in"] and isinstance(n, int):
                    state["n"] += 1
                    if state["n"] == n:
                        note(notes, f"point migration-statement #{n}: {statement.split()[:4]}")
                        die(sig)
                return _o(self, cursor, statement, *a, **kw)

            setattr(sa_default.DefaultDialect, name, wrapper)

        if n == "backup":
            backup = mirror.db.backup_sqlite

            def killed_backup(engine: Any, dest: Path) -> None:
                backup(engine, dest)
                note(notes, "point after-backup")
                die(sig)

            mirror.db.backup_sqlite = killed_backup

    return patch


@pytest.fixture(scope="module")
def mig_world():
    world = static_world(seed=31, hours=10, per_hour=40)
    with SimulatedAPI(world) as api:
        yield world, api


def _old_mirror(db: Path, api: SimulatedAPI) -> set[str]:
    """A mirror file at revision 0001 holding part of the history, as an older mirror left it.

    Written with the 0001-era store operations only (upsert, mark_complete, the run log),
    fed with pages fetched from the simulator.
    """
    engine = make_engine(str(db))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), OLD)
    store = Store(engine, str(db))
    now = api.world.now()
    start, end = floor_s(now - timedelta(hours=11)), floor_s(now - timedelta(hours=3))
    stamp = to_text(now)
    run = store.start_run(list(TARGETS[:2]), now)
    with httpx.Client() as http:
        client = FalClient(http, DEFAULT_KEY, base_url=api.base_url,
                           retry=RetryPolicy(attempts=3, base=0.01, cap=0.05))  # fmt: skip
        for target in TARGETS[:2]:
            cursor = None
            while True:
                page = client.list_requests([target], start=api_param(start), end=api_param(end),
                                            cursor=cursor)  # fmt: skip
                with engine.begin() as conn:
                    store.upsert(conn, page.rows, payloads=True, billing=True, now=stamp)
                    if not page.has_more:
                        store.mark_complete(conn, target, to_text(start), to_text(end), stamp)
                if not page.has_more:
                    break
                cursor = page.next_cursor
    store.finish_run(run, now, "ok", {}, None)
    store.close()
    assert revision(db) == OLD
    return {r[0] for r in query(db, "SELECT request_id FROM requests")}


def _tables(db: Path) -> set[str]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        con.close()


STATEMENTS = [1, 2, 3, 5, 8, 13, 21, 34]


@pytest.mark.parametrize("point", [*STATEMENTS, "commit"])
def test_kill_during_first_migration_leaves_no_half_schema(tmp_path, mig_world, point) -> None:
    world, api = mig_world
    expected = listable(world)
    db = tmp_path / "m.db"
    env = env_for(api.base_url)
    args = sync_args(db, "--since", "11h")
    o = run_cli(args, env, tmp_path / "out", patch=kill_in_migration(point), no_second_wait=True)
    count("kills during a migration")
    if not o.notes:  # the migration has fewer statements than that: nothing was killed
        assert o.code == 0, o.stderr
        pytest.skip(f"the migration runs fewer than {point} statements")
    assert o.code == -signal.SIGKILL, f"{o.notes}: ended with {o.code}: {o.stderr[-1500:]}"
    assert revision(db) is None, f"killed at {o.notes[0]}, the file claims revision {revision(db)}"
    assert _tables(db) == set(), f"killed at {o.notes[0]}, half a schema is there: {_tables(db)}"
    check_consistent(db, expected, world.config.filter_field, context=o.notes[0])
    again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert again.code == 0, f"after a kill at {o.notes[0]}: {again.stderr[-1500:]}"
    assert revision(db) == _head()
    assert_mirror_equals(db, expected, context=f"after a kill at {o.notes[0]} and a clean run")
    check_consistent(db, expected, world.config.filter_field)


@pytest.mark.parametrize("point", [*STATEMENTS[:-1], "backup", "commit"])
def test_kill_during_upgrade_keeps_the_old_schema_and_its_rows(tmp_path, mig_world, point) -> None:
    world, api = mig_world
    expected = listable(world)
    db = tmp_path / "m.db"
    old_ids = _old_mirror(db, api)
    assert len(old_ids) > 100
    old_rows = query(db, "SELECT * FROM requests ORDER BY request_id")
    old_windows = query(db, "SELECT * FROM sync_windows ORDER BY 1, 2")
    env = env_for(api.base_url)
    args = sync_args(db, "--since", "11h")
    o = run_cli(args, env, tmp_path / "out", patch=kill_in_migration(point), no_second_wait=True)
    count("kills during a migration")
    if not o.notes:
        assert o.code == 0, o.stderr
        pytest.skip(f"the upgrade runs fewer than {point} statements")
    where = o.notes[0]
    assert o.code == -signal.SIGKILL, f"{where}: ended with {o.code}: {o.stderr[-1500:]}"
    assert revision(db) == OLD, f"killed at {where}, the file is at revision {revision(db)}"
    assert query(db, "SELECT * FROM requests ORDER BY request_id") == old_rows, (
        f"killed at {where}: the rows of the old mirror changed"
    )
    assert query(db, "SELECT * FROM sync_windows ORDER BY 1, 2") == old_windows
    names = _tables(db)
    assert "requests_fts" not in names, f"killed at {where}: half of the new schema is there"
    check_consistent(db, expected, world.config.filter_field, context=where)
    for p in tmp_path.glob("m.db.bak*"):  # a backup, finished or not, is private
        mode = stat.S_IMODE(os.stat(p).st_mode)
        assert mode & 0o077 == 0, f"backup {p.name} is readable by others ({oct(mode)})"

    again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert again.code == 0, f"after a kill at {where}: {again.stderr[-1500:]}"
    assert revision(db) == _head()
    assert_mirror_equals(db, expected, context=f"after a kill at {where} and a clean run")
    check_consistent(db, expected, world.config.filter_field)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_interrupt_during_upgrade_rolls_it_back(tmp_path, mig_world, sig) -> None:
    world, api = mig_world
    db = tmp_path / "m.db"
    _old_mirror(db, api)
    old_rows = query(db, "SELECT * FROM requests ORDER BY request_id")
    env = env_for(api.base_url)
    o = run_cli(sync_args(db, "--since", "11h"), env, tmp_path / "out",
                patch=kill_in_migration(5, sig), no_second_wait=True)  # fmt: skip
    assert o.notes, "the upgrade never reached its fifth statement"
    assert o.code == 130, f"exit {o.code}: {o.stderr[-1500:]}"
    assert o.stderr.strip() == INTERRUPTED, o.stderr[-1500:]
    assert revision(db) == OLD
    assert query(db, "SELECT * FROM requests ORDER BY request_id") == old_rows
    check_consistent(db, listable(world), world.config.filter_field)
