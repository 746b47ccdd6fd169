"""What a target was asked to cover: stored before any call, only ever reaching further back
(unless narrowed on purpose), migrated from what an older file covers, on both backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from mirror.db import make_engine
from mirror.records import Row
from mirror.schema import sync_targets, sync_windows
from mirror.store import Store
from mirror.sync import SyncOptions, plan_target
from mirror.timeparse import from_text, to_text

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def stored(store: Store) -> dict[str, str | None]:
    with store.engine.connect() as conn:
        return {
            t: r
            for t, r in conn.execute(
                sa.select(sync_targets.c.target, sync_targets.c.requested_from)
            )
        }


def at(hours_ago: float) -> str:
    return to_text(NOW - timedelta(hours=hours_ago))


def test_the_range_only_reaches_further_back_unless_narrowed(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        day = NOW - timedelta(days=1)

        def run(since: datetime | None, narrow: bool = False, targets=("a/x", "b/y")) -> None:  # type: ignore[no-untyped-def]
            store.start_run(list(targets), NOW, since=since, default_from=day, narrow=narrow)

        run(None)  # a first sync without --since: the last day
        assert stored(store) == {"a/x": to_text(day), "b/y": to_text(day)}
        run(NOW - timedelta(hours=72), targets=("a/x",))  # further back: taken
        run(NOW - timedelta(hours=2))  # later: never shrinks the range
        assert stored(store) == {"a/x": at(72), "b/y": to_text(day)}
        run(NOW - timedelta(hours=5), narrow=True, targets=("a/x",))  # on purpose
        run(None, targets=("a/x", "c/z"))  # a bare run keeps what is stored; a new target: a day
        assert stored(store) == {"a/x": at(5), "b/y": to_text(day), "c/z": to_text(day)}
    finally:
        store.close()


def test_planning_starts_at_the_stored_start_whatever_the_run_asks(tmp_path) -> None:
    store = Store.open(str(tmp_path / "m.db"))
    try:
        store.start_run(["a/x"], NOW, since=NOW - timedelta(hours=30), default_from=NOW)
        with store.engine.begin() as conn:  # a later part completed, the start did not
            store.mark_complete(conn, "a/x", at(10), at(1), to_text(NOW))
        for since in (None, NOW - timedelta(hours=3)):
            opts = SyncOptions(targets=["a/x"], since=since, window=timedelta(days=2), cost=False)
            windows, _tail = plan_target(store, "a/x", opts, NOW)
            assert windows[0].start == NOW - timedelta(hours=30), (
                f"since={since}: planning starts at {windows[0].start}, not the stored start"
            )
            assert any(w.start < from_text(at(10)) for w in windows), windows
    finally:
        store.close()


def test_an_older_file_takes_what_it_covers_and_nothing_is_guessed(db_url: str) -> None:
    """0005 with completed windows for one target and none for another -> head."""
    from mirror.db import alembic_config

    engine = make_engine(db_url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0005")
        # the tables' own columns (typed instants) as a 0005-era writer would use them
        conn.execute(
            sync_targets.insert(),
            [{"target": "a/x", "added_at": to_text(NOW)}, {"target": "b/y", "added_at": at(0)}],
        )
        conn.execute(
            sync_windows.insert(),
            [
                {"target": "a/x", "window_start": a, "window_end": b, "completed_at": at(0)}
                for a, b in ((at(30), at(20)), (at(10), at(1)))
            ],
        )
    engine.dispose()
    store = Store.open(db_url)  # upgrades to head
    try:
        assert stored(store) == {"a/x": at(30), "b/y": None}
        store.start_run(["a/x", "b/y"], NOW, default_from=NOW - timedelta(days=1))
        assert stored(store) == {"a/x": at(30), "b/y": at(24)}
    finally:
        store.close()
    engine = make_engine(db_url)
    with engine.begin() as conn:  # and back: 0005's tables exactly
        command.downgrade(alembic_config(conn), "0005")
        cols = {c["name"] for c in sa.inspect(conn).get_columns("sync_targets")}
        runs = {c["name"] for c in sa.inspect(conn).get_columns("sync_runs")}
    engine.dispose()
    assert cols == {"target", "added_at"} and "clock_skew" not in runs, (cols, runs)


@pytest.mark.parametrize("skew", [None, 3 * 3600.0, -600.0])
def test_the_last_measured_skew_is_kept(tmp_path, skew: float | None) -> None:
    store = Store.open(str(tmp_path / "m.db"))
    try:
        first = store.start_run(["a/x"], NOW)
        store.finish_run(first, NOW, "ok", {}, None, clock_skew=-5.0)
        second = store.start_run(["a/x"], NOW)
        store.finish_run(second, NOW, "ok", {}, None, clock_skew=skew)
        assert store.last_clock_skew() == (skew if skew is not None else -5.0)
    finally:
        store.close()


def test_only_a_target_that_holds_nothing_is_forgotten(db_url: str) -> None:
    store = Store.open(db_url)
    try:
        store.start_run(["a/x", "b/y", "c/z"], NOW, default_from=NOW - timedelta(days=1))
        row = Row("r1", "b/y/route", None, at(3), at(3), at(2), 200, 1.0, None, None, None,
                  "success")  # fmt: skip
        with store.engine.begin() as conn:
            store.mark_complete(conn, "a/x", at(10), at(1), to_text(NOW))
            store.upsert(conn, [row], payloads=True, billing=True, now=to_text(NOW))
        assert [store.forget_if_empty(t) for t in ("a/x", "b/y", "c/z")] == [False, False, True]
        assert sorted(stored(store)) == ["a/x", "b/y"]
    finally:
        store.close()
