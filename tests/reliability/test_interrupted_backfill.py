"""A first backfill that ends early, and a local clock that is wrong, never leave requests out.

The stories: a user starts `mirror sync --since 31h -e …`; the run is killed (SIGKILL: a
reboot, an OOM kill), stopped (SIGTERM, Ctrl-C), or fails (an outage) before its oldest
windows complete; then cron runs a bare `mirror sync`. The bare runs must finish what was
asked, and `mirror status` must show what is still missing meanwhile. And a machine whose
clock runs hours fast or minutes slow (libfaketime on the real process) must still end with
the mirror equal to the server.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import die, mirror, note, run_cli
from support.compare import assert_mirror_equals, query
from support.sim import TARGETS, env_for, listable, static_world, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI
from mirror.store import Store
from mirror.sync import Syncer
from mirror.timeparse import from_text, to_text

#: the world holds 30 h of history; the first run asks for all of it, more than the 24 h a
#: bare first sync would take, so a run that forgets the request cannot pass by accident
HOURS = 30
SINCE = "31h"


def world() -> Any:
    return static_world(hours=HOURS, per_hour=40, big_tie_group=0, late_fraction=0)


def status(db: Path, env: dict[str, str], out: Path) -> dict[str, dict[str, Any]]:
    r = run_cli(["status", "--db", str(db), "--format", "json"], env, out)
    assert r.code == 0, f"mirror status failed: {r.stderr}"
    return {t["target"]: t for t in json.loads(r.stdout)}


def bare_runs_finish(db: Path, env: dict[str, str], out: Path, world_: Any, runs: int = 2) -> None:
    """What cron does next: bare `mirror sync`, which must end with everything asked for."""
    for i in range(runs):
        r = run_cli(["sync", "--db", str(db), "-q"], env, out, no_second_wait=True)
        assert r.code == 0, f"bare run {i + 1} failed: {r.stderr}"
    assert_mirror_equals(db, listable(world_), context=f"after {runs} bare runs")


def after_start_run(sig: int):  # type: ignore[no-untyped-def]
    """A patch for the child: signal itself once the run is logged, before any call."""

    def patch(notes: Path) -> None:
        orig = Store.start_run

        def start_run(self: Store, *a: Any, **kw: Any) -> int:
            run_id = orig(self, *a, **kw)
            note(notes, "run logged")
            die(sig)
            return run_id

        Store.start_run = start_run  # type: ignore[method-assign]

    return patch


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_first_backfill_stopped_before_any_window_is_finished_by_bare_runs(
    tmp_path: Path, sig: int
) -> None:
    w = world()
    db = tmp_path / "m.db"
    with SimulatedAPI(w) as api:
        env = env_for(api.base_url)
        first = run_cli(sync_args(db, "--since", SINCE), env, tmp_path, patch=after_start_run(sig))
        assert first.notes == ["run logged"], f"the kill point was not reached: {first}"
        assert first.code == (-signal.SIGKILL if sig == signal.SIGKILL else 130), first
        assert not query(db, "SELECT * FROM sync_windows"), "a window completed before the kill"

        # meanwhile, status shows what was asked and that none of it is covered yet
        st = status(db, env, tmp_path)
        assert sorted(st) == sorted(TARGETS), f"targets not kept after the {sig!r}: {st}"
        for t in TARGETS:
            asked = from_text(st[t]["requested_from"])
            assert abs(asked - (w.now() - timedelta(hours=31))) < timedelta(minutes=1), st[t]
            assert st[t]["covered_from"] is None, st[t]
            assert len(st[t]["gaps"]) == 1 and st[t]["gaps"][0][0] == st[t]["requested_from"], (
                f"the uncovered requested range is not shown as a gap: {st[t]}"
            )
        bare_runs_finish(db, env, tmp_path, w)
        st = status(db, env, tmp_path)
        for t in TARGETS:
            assert st[t]["gaps"] == [], f"{t}: gaps left after the bare runs: {st[t]}"
            assert st[t]["covered_from"] == st[t]["requested_from"], st[t]


def earliest_blocked_then_killed(since_floor: str):  # type: ignore[no-untyped-def]
    """A patch: walks of the first windows of the range hang; once a later window's
    completion is committed, the process is SIGKILLed (earliest windows still in flight)."""

    def patch(notes: Path) -> None:
        import threading

        walk, write = Syncer._walk_once, Syncer._write_once
        forever = threading.Event()

        def walk_once(self: Syncer, task: Any) -> Any:
            if to_text(task.window.start) <= since_floor:
                note(notes, f"holding {task.target} {task.window.start}")
                forever.wait(60)
            return walk(self, task)

        def write_once(self: Syncer, row_events: Any, stamp: str) -> Any:
            result = write(self, row_events, stamp)
            _written, done = result
            if done:  # committed: a later window is complete
                note(notes, "a later window completed")
                die(signal.SIGKILL)
            return result

        Syncer._walk_once = walk_once  # type: ignore[method-assign]
        Syncer._write_once = write_once  # type: ignore[method-assign]

    return patch


def test_a_first_backfill_killed_with_its_earliest_windows_in_flight(tmp_path: Path) -> None:
    w = world()
    db = tmp_path / "m.db"
    since = to_text(w.now() - timedelta(hours=31))
    with SimulatedAPI(w) as api:
        env = env_for(api.base_url)
        first = run_cli(
            sync_args(db, "--since", since, "--max-concurrency", "4", targets=TARGETS[:1]),
            env,
            tmp_path,
            patch=earliest_blocked_then_killed(since),
        )
        assert first.code == -signal.SIGKILL, f"not killed as planned: {first}"
        assert "a later window completed" in first.notes, first.notes
        windows = query(db, "SELECT window_start FROM sync_windows")
        assert windows and min(a for (a,) in windows) > since, (
            f"the scenario needs later windows complete and the earliest not: {windows}"
        )
        st = status(db, env, tmp_path)[TARGETS[0]]
        assert st["requested_from"] == since, st
        assert st["gaps"] and st["gaps"][0] == [since, st["covered_from"]], (
            f"status does not show the stretch the backfill stopped short of: {st}"
        )
        expected = {
            rid: rec
            for rid, rec in listable(w).items()
            if rec["endpoint_id"].startswith(TARGETS[0])
        }
        for _ in range(2):
            r = run_cli(["sync", "--db", str(db), "-q"], env, tmp_path, no_second_wait=True)
            assert r.code == 0, f"a bare run failed: {r.stderr}"
        assert_mirror_equals(db, expected, context="bare runs after the kill")


def test_a_first_run_failing_on_an_outage_is_finished_by_bare_runs(tmp_path: Path) -> None:
    w = world()
    db = tmp_path / "m.db"
    with SimulatedAPI(w, faults=FaultConfig(outage=True)) as api:
        env = env_for(api.base_url, MIRROR_RETRY_ATTEMPTS="2")
        first = run_cli(sync_args(db, "--since", SINCE), env, tmp_path, no_second_wait=True)
        assert first.code == 1 and "did not answer" in first.stderr, first
        api.faults = None
        bare_runs_finish(db, env, tmp_path, w)


def test_a_later_since_never_shrinks_the_range_and_narrow_does(tmp_path: Path) -> None:
    w = world()
    db = tmp_path / "m.db"
    with SimulatedAPI(w) as api:
        env = env_for(api.base_url)
        run_cli(
            sync_args(db, "--since", SINCE), env, tmp_path, patch=after_start_run(signal.SIGKILL)
        )
        asked = {t: s["requested_from"] for t, s in status(db, env, tmp_path).items()}
        r = run_cli(sync_args(db, "--since", "2h"), env, tmp_path, no_second_wait=True)
        assert r.code == 0, r.stderr
        assert_mirror_equals(db, listable(w), context="a later --since after an interrupted one")
        st = status(db, env, tmp_path)
        assert {t: s["requested_from"] for t, s in st.items()} == asked, st
        later = to_text(w.now() - timedelta(hours=5))
        r = run_cli(sync_args(db, "--since", later, "--narrow"), env, tmp_path, no_second_wait=True)
        assert r.code == 0, r.stderr
        st = status(db, env, tmp_path)
        assert {t: s["requested_from"] for t, s in st.items()} == dict.fromkeys(TARGETS, later), st
        assert all(s["gaps"] == [] for s in st.values()), st
        bad = run_cli(["sync", "--db", str(db), "--narrow"], env, tmp_path)
        assert bad.code == 2 and "--narrow" in bad.stderr, bad


# --------------------------------------------------------------------------- the clock

#: Debian's libfaketime, wherever the machine's multiarch folder is
FAKETIME = next(iter(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")), "libfaketime.so.1")


@pytest.mark.skipif(
    not os.path.exists(FAKETIME) and not os.environ.get("CI"),
    reason="libfaketime is not installed (.ci/run installs it: apt-get install faketime)",
)
@pytest.mark.parametrize("offset", ["+3h", "-10m"], ids=["3h-fast", "10m-slow"])
def test_a_wrong_local_clock_still_ends_equal_to_the_server(tmp_path: Path, offset: str) -> None:
    """The real process under libfaketime; the simulator's clock is the API's present.

    A backfill, a few seconds of new requests, then the next sync: everything that ended
    in between must be there (but for the last two seconds, the next run's), and `status`
    must say how far off this clock is."""
    w = static_world(hours=0.5, per_hour=7200, big_tie_group=0, late_fraction=0,
                     future_minutes=5, running=0)  # fmt: skip
    born = time.monotonic()
    db = tmp_path / "m.db"
    since = to_text(w.now() - timedelta(hours=3, minutes=5))
    with SimulatedAPI(w) as api:
        env = env_for(api.base_url, LD_PRELOAD=FAKETIME, FAKETIME=offset)
        first = mirror(sync_args(db, "--since", since), env)
        assert first.code == 0, f"the backfill failed: {first.stderr}"
        backfilled = w.now()
        # the API's clock moves as this machine's does (the world's stands still otherwise),
        # and new requests end meanwhile (~3 a second)
        time.sleep(2)
        w.config.clock.advance(time.monotonic() - born)  # type: ignore[attr-defined]
        second = mirror(["sync", "--db", str(db)], env)
        assert second.code == 0, f"the next sync failed: {second.stderr}"
        # With this clock wrong, the sync bounds its windows by the API's clock as the Date
        # header gives it: whole seconds, read a call's latency ago, so up to ~1 s behind
        # (behind, never ahead, or a window could be done before all its requests ended).
        # What ended in that last stretch is the next run's; everything before must be here.
        edge = w.now() - timedelta(seconds=2)
        server = listable(w)
        recent = {r for r, v in server.items() if v["ended_at"] is None or v["ended_at"] > edge}
        assert any(
            backfilled < v["ended_at"] <= edge for r, v in server.items() if r not in recent
        ), "no request ended between the two syncs early enough to be checked"
        assert_mirror_equals(
            db,
            {r: v for r, v in server.items() if r not in recent},
            allow_extra=recent,
            context=f"local clock {offset}",
        )
        skew = {s["clock_skew"] for s in json.loads(mirror(
            ["status", "--db", str(db), "--format", "json"], env).stdout)}  # fmt: skip
        want = 3 * 3600 if offset == "+3h" else -600
        assert len(skew) == 1 and abs(skew.pop() - want) < 120, (
            f"status does not show the clock {offset}: {skew}"
        )
        if offset == "+3h":  # beyond the lookback: a warning on every run
            assert "ahead of the API's, more than the lookback" in second.stderr, second.stderr
