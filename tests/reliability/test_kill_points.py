"""Kills at named points of a sync: after a fetch, after an insert, around every commit.

mirror has no hooks, so each point is placed from outside: the forked child (a real `mirror
sync` process) wraps one library function so that it signals its own process at exactly
that point, optionally writing down first what it was about to commit. After the kill the
file must be consistent (integrity, no duplicate, rows equal to the server's, no window
complete without its rows), what was not committed must be absent, what was committed must
be present, and a clean run must then complete the mirror.

SIGTERM (systemd) and SIGINT (Ctrl-C) at the same points must roll back the transaction in
flight, record the run as interrupted, and exit 130 with one line.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import sqlalchemy.engine.default as sa_default
from support.cli import die, note, run_cli
from support.compare import (
    assert_mirror_equals,
    check_consistent,
    intervals,
    overlaps,
    query,
    runs,
    stored_ids,
)
from support.figures import count
from support.sim import READINGS, env_for, listable, static_world, sync_args

import mirror.sync as sync_module
from mirror.api import FalClient
from mirror.schema import requests
from mirror.simulator import SimulatedAPI
from mirror.store import STALE_RUN_ERROR, Store
from mirror.sync import Syncer

INTERRUPTED = "mirror: interrupted; everything committed so far is kept"
Patch = Callable[[Path], None]


# --------------------------------------------------------------------------- the points


def wrap(cls: Any, name: str, *, n: int, sig: int, when: str, record=None) -> Patch:  # type: ignore[no-untyped-def]
    """Signal ourselves ``when`` ("before"/"after") the n-th call of ``cls.name``."""

    def patch(notes: Path) -> None:
        orig = getattr(cls, name)
        calls = [0]

        def wrapper(*a: Any, **kw: Any) -> Any:
            calls[0] += 1
            hit = calls[0] == n
            if hit and when == "before":
                note(notes, f"point {name} #{n}")
                if record:
                    record(notes, a, kw, None)
                die(sig)
            result = orig(*a, **kw)
            if hit and when == "after":
                note(notes, f"point {name} #{n}")
                if record:
                    record(notes, a, kw, result)
                die(sig)
            return result

        setattr(cls, name, wrapper)

    return patch


def _record_page(notes: Path, a: Any, kw: Any, page: Any) -> None:
    for r in page.rows:
        note(notes, f"uncommitted {r[0]}")


def _new_ids(conn: Any, rows: Any) -> list[str]:
    ids = [r[0] for r in rows]
    have = {
        x[0]
        for x in conn.execute(
            sa.select(requests.c.request_id).where(requests.c.request_id.in_(ids))
        )
    }
    return [i for i in ids if i not in have]


def after_insert(n: int, sig: int) -> Patch:
    """After the n-th non-empty upsert: its new rows are written but not committed."""

    def patch(notes: Path) -> None:
        orig = Store.upsert
        calls = [0]

        def upsert(self: Any, conn: Any, rows: Any, **kw: Any) -> Any:
            if not rows:
                return orig(self, conn, rows, **kw)
            calls[0] += 1
            new = _new_ids(conn, rows) if calls[0] == n else []
            result = orig(self, conn, rows, **kw)
            if calls[0] == n:
                note(notes, f"point upsert #{n}")
                for rid in new:
                    note(notes, f"uncommitted {rid}")
                die(sig)
            return result

        Store.upsert = upsert  # type: ignore[method-assign]

    return patch


def after_mark_complete(n: int, sig: int) -> Patch:
    """After the n-th window is recorded complete, before its transaction commits."""

    def patch(notes: Path) -> None:
        up, mark = Store.upsert, Store.mark_complete
        pending: list[str] = []
        marks = [0]

        def upsert(self: Any, conn: Any, rows: Any, **kw: Any) -> Any:
            if rows:
                pending.extend(_new_ids(conn, rows))
            return up(self, conn, rows, **kw)

        def mark_complete(
            self: Any, conn: Any, target: str, start: str, end: str, now: str
        ) -> None:
            mark(self, conn, target, start, end, now)
            marks[0] += 1
            if marks[0] == n:
                note(notes, f"point mark_complete #{n}")
                note(notes, f"window {target} {start} {end}")
                for rid in pending:
                    note(notes, f"uncommitted {rid}")
                die(sig)

        write = Syncer._write

        def _write(self: Any, *a: Any, **kw: Any) -> None:
            pending.clear()
            write(self, *a, **kw)
            pending.clear()

        Store.upsert = upsert  # type: ignore[method-assign]
        Store.mark_complete = mark_complete  # type: ignore[method-assign]
        Syncer._write = _write  # type: ignore[method-assign]

    return patch


def after_write(n: int, sig: int) -> Patch:
    """After the n-th writer transaction with rows has committed."""

    def patch(notes: Path) -> None:
        write, up = Syncer._write, Store.upsert
        batch: list[str] = []
        calls = [0]

        def upsert(self: Any, conn: Any, rows: Any, **kw: Any) -> Any:
            batch.extend(r[0] for r in rows)
            return up(self, conn, rows, **kw)

        def _write(self: Any, *a: Any, **kw: Any) -> None:
            batch.clear()
            write(self, *a, **kw)
            if batch:
                calls[0] += 1
                if calls[0] == n:
                    note(notes, f"point after-write #{n}")
                    for rid in batch:
                        note(notes, f"committed {rid}")
                    die(sig)

        Store.upsert = upsert  # type: ignore[method-assign]
        Syncer._write = _write  # type: ignore[method-assign]

    return patch


def inside_insert(n: int, sig: int) -> Patch:
    """During the n-th INSERT statement into ``requests``, while SQLite executes it.

    With ``executemany`` the signal is raised from inside the statement's parameter
    iteration, which is where a Ctrl-C typed during a long batch lands. With one multi-row
    statement there is no Python code inside the statement: the signal is sent as it starts
    and its handler runs the moment the statement returns (as a real one would), still
    inside the transaction.
    """

    def patch(notes: Path) -> None:
        calls = [0]

        def record(cursor: Any, ids: list[str]) -> None:
            note(notes, f"point inside-insert #{n}")
            have = {r[0] for r in cursor.connection.execute("SELECT request_id FROM requests")}
            for rid in ids:
                if rid not in have:
                    note(notes, f"uncommitted {rid}")

        many = sa_default.DefaultDialect.do_executemany
        one = sa_default.DefaultDialect.do_execute

        def do_executemany(
            self: Any, cursor: Any, statement: str, parameters: Any, context: Any = None
        ) -> Any:
            if not statement.startswith("INSERT INTO requests"):
                return many(self, cursor, statement, parameters, context)
            calls[0] += 1
            if calls[0] != n:
                return many(self, cursor, statement, parameters, context)
            params = list(parameters)

            def feed() -> Any:
                for i, p in enumerate(params):
                    if i == len(params) // 2:
                        record(cursor, [q[0] for q in params])
                        die(sig)
                    yield p

            return many(self, cursor, statement, feed(), context)

        def do_execute(
            self: Any, cursor: Any, statement: str, parameters: Any, context: Any = None
        ) -> Any:
            if not statement.startswith("INSERT INTO requests"):
                return one(self, cursor, statement, parameters, context)
            calls[0] += 1
            if calls[0] != n:
                return one(self, cursor, statement, parameters, context)
            # parameters: (now, *row1, *row2, ...) with rows of ROW_COLUMNS - 2 + ... fields;
            # the ids are whatever the statement inserts: read them back inside the statement's
            # transaction after it ran, from the rows it touched
            before = {r[0] for r in cursor.connection.execute("SELECT request_id FROM requests")}
            if sig == signal.SIGKILL:
                result = one(self, cursor, statement, parameters, context)
                after = {r[0] for r in cursor.connection.execute("SELECT request_id FROM requests")}
                note(notes, f"point inside-insert #{n}")
                for rid in after - before:
                    note(notes, f"uncommitted {rid}")
                die(sig)
                return result
            old = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
            try:
                note(notes, f"point inside-insert #{n}")
                os.kill(os.getpid(), sig)  # pending until the statement is done
                result = one(self, cursor, statement, parameters, context)
                after = {r[0] for r in cursor.connection.execute("SELECT request_id FROM requests")}
                for rid in after - before:
                    note(notes, f"uncommitted {rid}")
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)
            return result

        sa_default.DefaultDialect.do_executemany = do_executemany  # type: ignore[method-assign]
        sa_default.DefaultDialect.do_execute = do_execute  # type: ignore[method-assign]

    return patch


def around_commit(n: int, sig: int, when: str) -> Patch:
    """Just before, or just after, the n-th COMMIT the process issues (any transaction)."""
    return wrap(sa_default.DefaultDialect, "do_commit", n=n, sig=sig, when=when)


def one_page_per_batch(point: Patch) -> Patch:
    """The writer takes one queued event per transaction, so "the n-th insert" exists.

    It otherwise drains whatever pages are waiting into one batch: on a loaded machine the
    eight pages of this world can arrive as two batches, and a point counting batches past
    the first would never be reached.
    """

    def patch(notes: Path) -> None:
        sync_module.BATCH_ROWS = 0
        point(notes)

    return patch


POINTS: dict[str, Callable[[int], Patch]] = {
    "after-fetch": lambda sig: wrap(
        FalClient, "list_requests", n=3, sig=sig, when="after", record=_record_page
    ),
    "after-first-fetch": lambda sig: wrap(
        FalClient, "list_requests", n=1, sig=sig, when="after", record=_record_page
    ),
    "inside-insert-1": lambda sig: inside_insert(1, sig),
    "inside-insert-2": lambda sig: one_page_per_batch(inside_insert(2, sig)),
    "after-insert-1": lambda sig: after_insert(1, sig),
    "after-insert-3": lambda sig: one_page_per_batch(after_insert(3, sig)),
    "after-mark-complete-1": lambda sig: after_mark_complete(1, sig),
    "after-mark-complete-2": lambda sig: one_page_per_batch(after_mark_complete(2, sig)),
    "after-write-commit-1": lambda sig: after_write(1, sig),
    "after-write-commit-2": lambda sig: one_page_per_batch(after_write(2, sig)),
    **{
        f"{when}-commit-{k}": (
            lambda sig, k=k, when=when: one_page_per_batch(around_commit(k, sig, when))
        )
        for k in range(1, 7)
        for when in ("before", "after")
    },
    "after-lock-before-open": lambda sig: wrap(Store, "open", n=1, sig=sig, when="before"),
    "after-start-run": lambda sig: wrap(Store, "start_run", n=1, sig=sig, when="after"),
    "before-finish-run": lambda sig: wrap(Store, "finish_run", n=1, sig=sig, when="before"),
    "before-checkpoint": lambda sig: wrap(Store, "checkpoint", n=1, sig=sig, when="before"),
    # the pool closing its first SQLite connection: in practice the store's close at the end
    "closing-a-connection": lambda sig: wrap(
        sa_default.DefaultDialect, "do_close", n=1, sig=sig, when="before"
    ),
}


# --------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def kp_world():
    world = static_world(READINGS["sent_at-desc"], seed=77, hours=14, per_hour=40)
    with SimulatedAPI(world) as api:
        yield world, api


def _kill_then_recover(tmp_path: Path, kp_world, point: str, sig: int, *, fresh: bool) -> None:  # type: ignore[no-untyped-def]
    world, api = kp_world
    expected = listable(world)
    ff = world.config.filter_field
    db = tmp_path / "m.db"
    env = env_for(api.base_url)
    args = sync_args(db, "--since", "15h", "--max-concurrency", "1")
    out = tmp_path / "out"
    if not fresh:  # a mirror that already holds part of the history, to be re-walked
        pre = run_cli(sync_args(db, "--since", "15h", "--until", "6h", "--max-concurrency", "1"),
                      env, out, no_second_wait=True)  # fmt: skip
        assert pre.code == 0, pre.stderr
        args += ["--lookback", "1d"]
    before_ids = stored_ids(db)
    before_iv = intervals(db)
    n_runs = len(runs(db))
    o = run_cli(args, env, out, patch=POINTS[point](sig), no_second_wait=True)
    count(f"named-point kills ({signal.Signals(sig).name})")
    where = f"{signal.Signals(sig).name} at {point}"
    assert o.notes and o.notes[0].startswith("point "), (
        f"{where}: the run never reached the point (exit {o.code}): {o.stderr[-1500:]}"
    )
    if sig == signal.SIGKILL:
        assert o.code == -signal.SIGKILL, f"{where}: ended with {o.code}: {o.stderr[-1500:]}"
    else:
        assert o.code == 130, f"{where}: exit {o.code}, expected 130: {o.stderr[-1500:]}"
        assert "could not record the run's outcome" not in o.stderr, (
            f"{where}: after the signal the run could not record its outcome (the interrupted "
            f"transaction still held the write lock, so this waited out the busy timeout); "
            f"stderr: {o.stderr[-1500:]!r}"
        )
        assert o.stderr.strip() == INTERRUPTED, f"{where}: stderr was {o.stderr[-1500:]!r}"
    rows = check_consistent(db, expected, ff, context=where)
    assert before_ids <= set(rows), f"{where}: rows committed before the run were lost"
    # what the point had not committed is absent, what it had committed is present
    uncommitted = {line.split()[1] for line in o.notes if line.startswith("uncommitted ")}
    # (SIGTERM in a worker thread: the page may still reach the writer before the main
    # thread stops; only SIGKILL makes "fetched, never committed" exact)
    if sig == signal.SIGKILL:
        back = sorted((uncommitted - before_ids) & set(rows))
        assert not back, (
            f"{where}: rows of a transaction that never committed are stored: {back[:3]}"
        )
    elif not point.endswith("fetch"):
        # SIGTERM / Ctrl-C inside a write batch waits for its commit (mirror.interrupts):
        # the batch is stored whole, or (signal before it began) not at all, never in part
        batch = uncommitted - before_ids
        stored = batch & set(rows)
        assert not stored or stored == batch, (
            f"{where}: part of a write batch is stored ({len(stored)} of {len(batch)} rows)"
        )
        if point.startswith(("inside-insert", "after-insert", "after-mark-complete")):
            assert stored == batch, (
                f"{where}: the signal landed inside a write batch, which must then commit "
                f"before the run stops; {len(batch - stored)} of its {len(batch)} rows are missing"
            )
    committed = {line.split()[1] for line in o.notes if line.startswith("committed ")}
    lost = sorted(committed - set(rows))
    assert not lost, f"{where}: rows whose transaction had committed are gone: {lost[:3]}"
    for line in o.notes:
        # (an interrupted batch commits whole, its window with it; check_consistent above
        # proves no window is claimed without its rows)
        if line.startswith("window ") and sig == signal.SIGKILL:
            _, target, a, b = line.split()
            from mirror.timeparse import from_text

            iv = intervals(db).get(target, [])
            was = before_iv.get(target, [])
            assert not overlaps([x for x in iv if x not in was], from_text(a), from_text(b)), (
                f"{where}: window {target} [{a}, {b}) is recorded complete, but its "
                "transaction never committed"
            )
    new_runs = [r[0] for r in runs(db)[n_runs:]]
    if new_runs:
        last = new_runs[-1]
        if last == "ok":  # the run had recorded its success: then it must hold everything
            assert_mirror_equals(db, expected, context=f"{where}: the run is recorded ok")
        elif sig == signal.SIGKILL:  # nothing runs after SIGKILL: the log says "running"
            assert last == "running", f"{where}: the run is recorded as {last!r}"
        else:  # an interrupted run records that it was interrupted, wherever the signal lands
            assert last == "interrupted", f"{where}: the run is recorded as {last!r}"

    again = run_cli(args, env, out, no_second_wait=True)
    assert again.code == 0, f"{where}: the next run failed: {again.stderr[-1500:]}"
    assert_mirror_equals(db, expected, context=f"after {where} and a clean run")
    check_consistent(db, expected, ff, context=f"after {where} and a clean run")


@pytest.mark.parametrize("point", list(POINTS))
def test_sigkill_at_named_point(tmp_path, kp_world, point: str) -> None:
    _kill_then_recover(tmp_path, kp_world, point, signal.SIGKILL, fresh=True)


@pytest.mark.parametrize(
    "point",
    ["after-insert-1", "after-mark-complete-1", "after-write-commit-1", "before-commit-4",
     "after-commit-4", "after-fetch"],
)  # fmt: skip
def test_sigkill_at_named_point_while_rewalking(tmp_path, kp_world, point: str) -> None:
    """The same points in a run that re-walks windows already complete, with rows stored."""
    _kill_then_recover(tmp_path, kp_world, point, signal.SIGKILL, fresh=False)


TERM_POINTS = [
    "after-insert-1", "after-insert-3", "after-mark-complete-1", "after-write-commit-1",
    "before-commit-4", "after-commit-4", "before-finish-run", "after-start-run",
    "before-checkpoint",
    "closing-a-connection",
]  # fmt: skip


@pytest.mark.parametrize(
    ("point", "sig"),
    [
        *((p, signal.SIGTERM) for p in TERM_POINTS),
        *((p, signal.SIGINT) for p in TERM_POINTS[:4]),
        # the signal lands while SQLite executes a batch (typed Ctrl-C, or systemd's
        # SIGTERM arriving mid-statement), and while a worker thread is fetching
        ("inside-insert-1", signal.SIGTERM),
        ("after-fetch", signal.SIGINT),
    ],
    ids=lambda v: v.name if isinstance(v, signal.Signals) else v,
)
def test_sigterm_and_ctrl_c_at_named_point(tmp_path, kp_world, point: str, sig: int) -> None:
    _kill_then_recover(tmp_path, kp_world, point, sig, fresh=True)


@pytest.mark.parametrize("point", ["after-start-run", "after-write-commit-1"])
def test_a_run_left_running_by_sigkill_is_marked_killed_by_the_next_sync(
    tmp_path, kp_world, point: str
) -> None:
    """SIGKILL leaves the run logged `running` (nothing runs after it); the next sync, holding
    the file's writer lock, knows no other run can be going on and logs it `killed`, with
    the moment it noticed as its end and an error saying the process died."""
    world, api = kp_world
    db = tmp_path / "m.db"
    env = env_for(api.base_url)
    args = sync_args(db, "--since", "15h", "--max-concurrency", "1")
    o = run_cli(args, env, tmp_path / "out", patch=POINTS[point](signal.SIGKILL),
                no_second_wait=True)  # fmt: skip
    assert o.code == -signal.SIGKILL, f"SIGKILL at {point}: ended with {o.code}: {o.stderr}"
    assert runs(db) == [("running", None)], f"after SIGKILL at {point} the log is {runs(db)}"
    again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert again.code == 0, f"the sync after SIGKILL at {point} failed: {again.stderr[-1500:]}"
    log = query(db, "SELECT outcome, started_at, ended_at, error FROM sync_runs ORDER BY id")
    assert [r[0] for r in log] == ["killed", "ok"], (
        f"after SIGKILL at {point} and a clean sync the run log is {log}"
    )
    (_, killed_start, killed_end, error), (_, next_start, _, _) = log
    assert killed_end == next_start, (
        f"the killed run should end when the next sync noticed it ({next_start}), not {killed_end}"
    )
    assert killed_start < killed_end, f"the killed run ends before it started: {log[0]}"
    assert error == STALE_RUN_ERROR, f"the killed run's error is {error!r}"
    assert_mirror_equals(db, listable(world), context=f"after SIGKILL at {point} and a clean run")
