"""Page drift, ties, and late-arriving or back-dated requests, under every reading of the API.

- *Ties*: hundreds of requests ending on the same microsecond (and with equal durations),
  so an offset page boundary cuts through them, in both sort directions.
- *Drift*: while a window is walked, requests land inside it after its first page and every
  running request ends, so offset pages shift under the walk. The run must still store
  every request the server listed when it started plus those that landed mid-walk, and a
  second run must leave the mirror equal to the server.
- *Late and back-dated requests*: the platform records requests after they ended (inside
  the lookback, and beyond it). An incremental run picks up the former; a run with a wider
  ``--lookback`` picks up the latter; nothing stored is ever lost on the way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from support.cli import run_cli
from support.compare import assert_mirror_equals, check_consistent, stored_ids
from support.figures import count
from support.sim import READINGS, env_for, listable, static_world, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI
from mirror.timeparse import from_text

LIST = "/v1/serverless/requests/by-endpoint"


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("tie", [150, 333])
def test_ties_across_page_boundaries(tmp_path, reading: str, tie: int) -> None:
    world = static_world(READINGS[reading], seed=91, hours=8, per_hour=30, big_tie_group=tie)
    expected = listable(world)
    db = tmp_path / "m.db"
    with SimulatedAPI(world) as api:
        o = run_cli(sync_args(db, "--since", "9h", "--max-concurrency", "1"),
                    env_for(api.base_url), tmp_path / "out", no_second_wait=True)  # fmt: skip
    assert o.code == 0, o.stderr
    assert_mirror_equals(db, expected, context=f"{reading}, a tie of {tie}")
    check_consistent(db, expected, world.config.filter_field)


@pytest.mark.parametrize("reading", list(READINGS))
@pytest.mark.parametrize("finish", [False, True], ids=["arrivals", "arrivals-and-endings"])
def test_rows_moving_under_the_pages(tmp_path, reading: str, finish: bool) -> None:
    """After the first page of each multi-page window (its first walk only), requests land
    near both ends and in the middle of it; with ``finish``, every running request also ends
    at that moment, the first time. The walk that follows sees the pages shift."""
    world = static_world(READINGS[reading], seed=92, hours=10, per_hour=80, running=8,
                         big_tie_group=150)  # fmt: skip
    start_view = listable(world)
    db = tmp_path / "m.db"
    added: list[str] = []
    with SimulatedAPI(world, faults=FaultConfig(latency=0.01)) as api:
        orig = api.respond
        moved: set[tuple[str, str, str]] = set()

        def respond(method: str, path: str, params: Any, auth: Any, *, now: Any = None) -> Any:
            answer = orig(method, path, params, auth, now=now)
            key = (params.get("endpoint_id", [""])[0], params.get("start", [""])[0],
                   params.get("end", [""])[0])  # fmt: skip
            if (path == LIST and key not in moved and "cursor" not in params
                    and "request_id" not in params and answer.page and answer.page["has_more"]):  # fmt: skip
                moved.add(key)
                a, b = from_text(key[1]), from_text(key[2])
                for frac in (0.1, 0.5, 0.9):  # near both ends of the window and in the middle
                    at = a + (b - a) * frac
                    hours = max(0.01, (world.now() - at).total_seconds() / 3600)
                    reqs = world.backdate(2, hours, endpoint_id=key[0], spread_minutes=0.5,
                                          seed=len(added))  # fmt: skip
                    added.extend(r.request_id for r in reqs
                                 if a <= from_text(listable_value(world, r, reading)) < b)  # fmt: skip
                if finish and len(moved) == 1:
                    world.finish_all()
            return answer

        api.respond = respond  # type: ignore[method-assign]
        env = env_for(api.base_url)
        args = sync_args(db, "--since", "11h", "--max-concurrency", "2")
        o = run_cli(args, env, tmp_path / "out", no_second_wait=True)
        assert o.code == 0, o.stderr
        assert "kept changing" not in o.stdout + o.stderr, o.stdout
        assert moved and added, "no window had a second page: the scenario proves nothing"
        count("windows whose rows moved while they were walked", len(moved))
        stored = stored_ids(db)
        lost = sorted(set(start_view) - stored)
        assert not lost, (
            f"{reading}: {len(lost)} requests listed when the run started are missing: {lost[:3]}"
        )
        mid = sorted(set(added) - stored)
        assert not mid, (
            f"{reading}: {len(mid)} of {len(added)} requests that landed inside a window while it "
            f"was walked are missing, although every window was recorded complete: {mid[:3]}"
        )
        api.respond = orig  # type: ignore[method-assign]
        again = run_cli(args, env, tmp_path / "out", no_second_wait=True)
        assert again.code == 0, again.stderr
    end_view = listable(world)
    assert_mirror_equals(db, end_view, context=f"{reading}, after a second run")
    check_consistent(db, end_view, world.config.filter_field)


def listable_value(world: Any, req: Any, reading: str) -> str:
    """The value of the reading's filter field for a request, as the API serves it."""
    return world.server_view()[req.request_id][READINGS[reading].filter_field]


@pytest.mark.parametrize("reading", list(READINGS))
def test_late_and_backdated_requests(tmp_path, reading: str) -> None:
    """Recorded after the first run: 30 min ago (in the lookback) and 5 h ago (beyond it)."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=20)
    world = static_world(READINGS[reading], seed=93, hours=12, per_hour=40, now=now)
    clock = world.config.clock
    db = tmp_path / "m.db"
    with SimulatedAPI(world) as api:
        env = env_for(api.base_url)
        first = run_cli(sync_args(db, "--since", "13h"), env, tmp_path / "out", no_second_wait=True)
        assert first.code == 0, first.stderr
        before = stored_ids(db)
        recent = world.backdate(6, 0.5, endpoint_id="acme/upscaler", seed=1)
        old = world.backdate(6, 5.0, endpoint_id="acme/flux-lora/turbo", seed=2)
        clock.advance(600)  # ten minutes pass (still before the real now)
        second = run_cli(sync_args(db), env, tmp_path / "out", no_second_wait=True)
        assert second.code == 0, second.stderr
        stored = stored_ids(db)
        assert before <= stored, "requests stored by the first run were lost"
        missing = sorted({r.request_id for r in recent} - stored)
        assert not missing, (
            f"{reading}: late requests inside the lookback were not picked up: {missing}"
        )
        wide = run_cli(
            sync_args(db, "--lookback", "6h"), env, tmp_path / "out", no_second_wait=True
        )
        assert wide.code == 0, wide.stderr
        missing = sorted({r.request_id for r in old} - stored_ids(db))
        assert not missing, (
            f"{reading}: --lookback 6h did not pick up requests back-dated 5 h: {missing}"
        )
    expected = listable(world)
    assert_mirror_equals(db, expected, context=f"{reading}, after --lookback 6h")
    check_consistent(db, expected, world.config.filter_field)
