"""`mirror.cost_sync`: which windows of billing events a run asks for, and one process at a
time on PostgreSQL. A stand-in client answers (empty pages): what matters is what is asked."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from typing import Any

from mirror.billing_api import BILLING_EVENTS_PATH, MAX_RANGE
from mirror.cost_sync import LOOKBACK, WINDOW, sync_cost, sync_cost_now
from mirror.store import Store
from mirror.timeparse import to_text

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class Recorder:
    """Answers every call with an empty page; keeps the billing-events windows asked for."""

    def __init__(self) -> None:
        self.windows: list[tuple[datetime, datetime]] = []
        self.paths: list[str] = []

    def get_page(
        self, path: str, params: Sequence[tuple[str, str]], decode: Any = None
    ) -> tuple[Any, None]:
        self.paths.append(path)
        p = dict(params)
        if path == BILLING_EVENTS_PATH:
            self.windows.append(
                (datetime.fromisoformat(p["start"]), datetime.fromisoformat(p["end"]))
            )
            return {"billing_events": [], "next_cursor": None, "has_more": False}, None
        if "pricing" in path:
            return {"prices": [], "next_cursor": None, "has_more": False}, None
        return {"time_series": [], "next_cursor": None, "has_more": False}, None


def _covered(windows: list[tuple[datetime, datetime]]) -> tuple[datetime, datetime, bool]:
    """(first start, last end, whether the windows touch end to end)."""
    ordered = sorted(windows)
    joined = all(a[1] == b[0] for a, b in pairwise(ordered))
    return ordered[0][0], ordered[-1][1], joined


def test_a_backfill_is_cut_into_windows_and_a_later_run_walks_only_the_lookback(tmp_path) -> None:
    store = Store.open(str(tmp_path / "m.db"))
    try:
        start = NOW - timedelta(days=100)
        first = Recorder()
        sync_cost_now(store, first, now=NOW, default_from=start, note=lambda _s: None)  # type: ignore[arg-type]
        assert _covered(first.windows) == (start, NOW, True), (
            f"the first run did not cover the range end to end: {sorted(first.windows)}"
        )
        longest = max(b - a for a, b in first.windows)
        assert longest <= WINDOW <= MAX_RANGE, f"a window of {longest} is over the cap"
        later = NOW + timedelta(hours=1)
        second = Recorder()
        sync_cost_now(store, second, now=later, default_from=start, note=lambda _s: None)  # type: ignore[arg-type]
        assert _covered(second.windows) == (NOW - LOOKBACK, later, True), (
            f"the next run should walk only the lookback and what is new: {second.windows}"
        )
        assert second.paths.count(BILLING_EVENTS_PATH) == len(second.paths), (
            f"prices or usage asked again within a day: {second.paths}"
        )
    finally:
        store.close()


def test_on_postgresql_one_process_at_a_time_mirrors_cost(pg_url: str) -> None:
    """A second process finds the cost step taken and leaves it (no call, None)."""
    a, b = Store.open(pg_url), Store.open(pg_url)
    try:
        blocked = Recorder()
        outcome: list[Any] = []

        def note(_s: str) -> None:
            pass

        class Holding(Recorder):
            def get_page(
                self, path: str, params: Sequence[tuple[str, str]], decode: Any = None
            ) -> tuple[Any, None]:
                if not outcome:  # while the first holds the step, the second tries
                    outcome.append(
                        sync_cost(
                            b, blocked, now=NOW, default_from=NOW - timedelta(days=1), note=note
                        )  # type: ignore[arg-type]
                    )
                return super().get_page(path, params)

        report = sync_cost(a, Holding(), now=NOW, default_from=NOW - timedelta(days=1), note=note)  # type: ignore[arg-type]
        assert report is not None and report.windows == 1, (
            f"the first process did not run: {report}"
        )
        assert outcome == [None] and blocked.paths == [], (
            f"the second process ran the cost step meanwhile: {outcome}, {blocked.paths}"
        )
        after = Recorder()
        again = sync_cost(
            b, after, now=NOW + timedelta(hours=1), default_from=NOW - timedelta(days=1), note=note
        )  # type: ignore[arg-type]
        assert again is not None and after.paths, "the lock was not released after the step"
        assert to_text(after.windows[0][0]) == to_text(NOW - LOOKBACK), after.windows
    finally:
        a.close()
        b.close()
