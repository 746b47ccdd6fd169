"""An incremental `mirror sync` pays for what changed, and still catches every change.

The real CLI against the simulated API over HTTP, on a world whose clock stands still
between runs (``static_world``), so what the mirror must hold is exactly what the server
lists. After a backfill, the world changes the ways fal's does inside the lookback: a few
requests are recorded late into a minute already walked, billing lands, running requests
end. The next run, narrowed by the per-minute analytics counts (``mirror.steady``), must
store all of it while walking only the minutes that changed and the stretch that still held
unbilled or unfinished rows; ``--full-lookback`` walks it all, as before; and without
usable analytics the run walks it all and says so once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import mirror
from support.compare import assert_mirror_equals, completed_windows, covers
from support.sim import (
    READING_PARAMS,
    TARGETS,
    analytics_refusing,
    fast_env,
    listable,
    static_world,
    sync_args,
)

from mirror.simulator import SimulatedAPI, WorldConfig
from mirror.simulator.faults import ANALYTICS_PATH

LOOKBACK = timedelta(hours=2)


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def walks(api: SimulatedAPI) -> list[tuple[str, datetime, datetime]]:
    """(target, start, end) of every window walk (first pages; not the look-ups by id)."""
    return [
        (e.params["endpoint_id"][0], _time(e.params["start"][0]), _time(e.params["end"][0]))
        for e in api.log
        if e.path.endswith("/requests/by-endpoint")
        and "request_id" not in e.params
        and "cursor" not in e.params
    ]


def walked_seconds(
    api: SimulatedAPI, lo: dict[str, datetime], hi: dict[str, datetime]
) -> dict[str, float]:
    """Per target: the seconds of ``[lo, hi)`` its window walks covered (overlaps once)."""
    out: dict[str, float] = {}
    for target in TARGETS:
        spans = sorted(
            (max(a, lo[target]), min(b, hi[target]))
            for t, a, b in walks(api)
            if t == target and max(a, lo[target]) < min(b, hi[target])
        )
        total, reach = 0.0, lo[target]
        for a, b in spans:
            if b > reach:
                total += (b - max(a, reach)).total_seconds()
                reach = b
        out[target] = total
    return out


def land_billing(world: Any, since: datetime) -> list[str]:
    """Billing still pending for requests that ended after ``since`` lands now."""
    now = world.now()
    due = [
        r.request_id
        for r in world
        if r.billable_units is not None
        and since < r.ended_at <= now
        and (r.billing_at is None or r.billing_at > now)
    ]
    for rid in due:
        world.update(rid, billing_at=now)
    return due


def lookback_of(db: Path) -> tuple[dict[str, datetime], dict[str, datetime]]:
    """Per target: where the next run's lookback starts, and its last completed point."""
    last: dict[str, datetime] = {}
    for target, _, b in completed_windows(db):
        last[target] = max(b, last.get(target, b))
    return {t: b - LOOKBACK for t, b in last.items()}, last


def oldest_pending(rows: dict[str, dict[str, Any]], target: str, lo: datetime) -> datetime | None:
    """The earliest sent_at of the target's stored rows in the lookback that may still
    change: running, or successful and not billed yet."""
    sent = [
        row["sent_at"]
        for row in rows.values()
        if covers(target, row["endpoint_id"])
        and (
            (row["ended_at"] is None and row["sent_at"] >= lo)
            or (
                row["ended_at"] is not None
                and row["ended_at"] >= lo
                and row["billable_units"] is None
                and 200 <= row["status_code"] < 300
            )
        )
    ]
    return min(sent, default=None)


@pytest.mark.parametrize("config", READING_PARAMS)
def test_an_incremental_run_walks_what_changed_and_catches_every_change(
    tmp_path: Path, config: WorldConfig
) -> None:
    world = static_world(config, hours=5, per_hour=900, running=8, late_fraction=0)
    db = tmp_path / "mirror.sqlite"
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        first = mirror(sync_args(db, "--since", "6h"), env)
        assert first.code == 0, f"backfill failed: {first.stderr}"
        before = assert_mirror_equals(db, listable(world))
        lo, last = lookback_of(db)

        # inside the lookback: late records in a minute walked already, billing landing,
        # running requests ending
        late = world.backdate(
            4, hours_ago=1.2, endpoint_id="acme/upscaler", spread_minutes=0.3, seed=7
        )
        billed = set(land_billing(world, min(lo.values())))
        now = world.now()
        # the requests running now: listed once they end, in minutes by their sent_at or
        # started_at (under readings that hide them while they run, the mirror never saw them)
        running = [(r.sent_at, min(r.started_at, now), now) for r in world
                   if r.sent_at <= now < r.ended_at]  # fmt: skip
        ended = world.finish_all()
        api.clear_log()
        second = mirror(sync_args(db), env)
        assert second.code == 0, f"incremental run failed: {second.stderr}"
        assert second.stderr == "", f"analytics answered, yet the run printed: {second.stderr}"
        after = assert_mirror_equals(db, listable(world), context=" after the incremental run")
        missing_late = {r.request_id for r in late} - set(after)
        assert not missing_late, f"late records in a walked minute were not caught: {missing_late}"
        billed_stored = [
            rid for rid in billed if rid in before and before[rid]["billable_units"] is None
        ]
        assert billed_stored, (
            "no stored row was waiting for its billing: the scenario proves nothing"
        )
        ended_stored = [rid for rid, row in before.items() if row["ended_at"] is None]
        if config.unfinished_visible and config.filter_field != "ended_at":
            assert ended and ended_stored, "no stored row was running: the scenario proves nothing"

        # what it walked of the lookback's completed part: the minutes of the late records
        # and of the rows stored running (their counts moved), and the stretch from the
        # oldest row stored unbilled or running, nothing else
        changed = [(r.sent_at, r.started_at, r.ended_at) for r in late] + running
        late_minutes = {
            t.replace(second=0, microsecond=0) for ts in changed for t in ts if t is not None
        }
        # (a stretch between two of those may be walked with them, where one page holds it
        # all; a target whose changes would cost more calls than its lookback walks it whole)
        narrowed = walked_seconds(api, lo, last)
        for target, a, b in walks(api):
            a, b = max(a, lo[target]), min(b, last[target])
            if a >= b or narrowed[target] == LOOKBACK.total_seconds():
                continue
            oldest = oldest_pending(before, target, lo[target])
            allowed = [(m, m + timedelta(minutes=1)) for m in late_minutes]
            if oldest is not None:
                allowed.append((oldest.replace(microsecond=0), last[target]))
            inside = [(max(x, a), min(y, b)) for x, y in sorted(allowed) if max(x, a) < min(y, b)]
            assert inside and inside[0][0] == a and max(y for _, y in inside) == b, (
                f"{target} walked {a}..{b} of its lookback: it does not start and end at a late "
                f"record, a running row or the stretch from the oldest unbilled or running row "
                f"({oldest})"
            )
        assert narrowed["acme/upscaler"] < LOOKBACK.total_seconds(), narrowed
        steady_calls = len([e for e in api.log if e.path.endswith("/requests/by-endpoint")])

        # --full-lookback: the whole lookback again, as before (nothing changed meanwhile)
        lo, last = lookback_of(db)
        api.clear_log()
        full = mirror(sync_args(db, "--full-lookback"), env)
        assert full.code == 0, f"--full-lookback failed: {full.stderr}"
        assert not [e for e in api.log if e.path == ANALYTICS_PATH and "minute" in str(e.params)], (
            "--full-lookback still asked analytics for the lookback"
        )
        whole = walked_seconds(api, lo, last)
        assert whole == {t: LOOKBACK.total_seconds() for t in TARGETS}, (
            f"--full-lookback walked {whole} seconds of the lookback, not all of it"
        )
        full_calls = len([e for e in api.log if e.path.endswith("/requests/by-endpoint")])
        # never more; as many when the stretch from the oldest unbilled row spans it all
        assert steady_calls <= full_calls, (
            f"the narrowed run made {steady_calls} list calls, the full lookback {full_calls}"
        )
        assert_mirror_equals(db, listable(world), context=" after --full-lookback")


@pytest.mark.parametrize("status", [404, 403, 200])
def test_without_analytics_the_whole_lookback_is_walked_and_said_once(
    tmp_path: Path, status: int
) -> None:
    world = static_world(hours=4, per_hour=300, late_fraction=0)
    db = tmp_path / "mirror.sqlite"
    with analytics_refusing(status)(world) as api:
        env = fast_env(api.base_url)
        assert mirror(sync_args(db, "--since", "5h"), env).code == 0
        lo, last = lookback_of(db)
        late = world.backdate(3, hours_ago=1.5, endpoint_id="acme/whisper-v3", seed=3)
        api.clear_log()
        r = mirror(sync_args(db), env)
        assert r.code == 0, f"the run failed without analytics: {r.stderr}"
        why = {
            404: "HTTP 404",
            403: "HTTP 403",
            200: "the analytics answer has no time_series list",
        }[status]
        assert r.stderr == (
            f"mirror: note: /serverless/analytics gave no usable counts ({why}); the whole "
            "lookback is walked, as with --full-lookback\n"
        ), f"the fallback must be said once per run, in one line: {r.stderr!r}"
        whole = walked_seconds(api, lo, last)
        assert whole == {t: LOOKBACK.total_seconds() for t in TARGETS}, (
            f"without analytics the run walked {whole} seconds of the lookback, not all of it"
        )
        asked = [e.params["endpoint_id"][0] for e in api.log if e.path == ANALYTICS_PATH]
        want = TARGETS[:1] if status == 404 else TARGETS
        assert asked == list(want), f"analytics asked for {asked} after answering {status}"
        after = assert_mirror_equals(db, listable(world))
        assert {r.request_id for r in late} <= set(after), "late records were not caught"


def list_calls(api: SimulatedAPI, target: str) -> int:
    return len(
        [
            e
            for e in api.log
            if e.path.endswith("/requests/by-endpoint") and e.params["endpoint_id"][0] == target
        ]
    )


def test_changes_scattered_over_the_lookback_cost_no_more_calls_than_walking_it(
    tmp_path: Path,
) -> None:
    world = static_world(hours=3, per_hour=900, running=0, late_fraction=0)
    db = tmp_path / "mirror.sqlite"
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        assert mirror(sync_args(db, "--since", "4h"), env).code == 0
        # one late record in each of 24 minutes spread over the upscaler's lookback; two in
        # minutes three apart on flux-lora
        late = [
            r
            for i in range(24)
            for r in world.backdate(
                1,
                hours_ago=0.1 + i * 0.075,
                endpoint_id="acme/upscaler",
                spread_minutes=0.01,
                seed=i,
            )
        ]
        pair = [
            r
            for i, ago in enumerate((1.0, 1.05))
            for r in world.backdate(
                1, hours_ago=ago, endpoint_id="acme/flux-lora", spread_minutes=0.01, seed=100 + i
            )
        ]
        api.clear_log()
        r = mirror(sync_args(db), env)
        assert r.code == 0, f"incremental run failed: {r.stderr}"
        after = assert_mirror_equals(db, listable(world), context=" after the incremental run")
        missing = {x.request_id for x in late + pair} - set(after)
        assert not missing, f"late records were not caught: {missing}"
        steady = {t: list_calls(api, t) for t in TARGETS}
        # the minutes that changed: those of the timestamp the list filters on
        a, b = sorted(getattr(x, world.config.filter_field) for x in pair)
        joined = [(s, e) for t, s, e in walks(api) if t == "acme/flux-lora" and s <= a and b < e]
        assert joined, (
            "two changed minutes three apart were walked apart: "
            f"{[(s, e) for t, s, e in walks(api) if t == 'acme/flux-lora']}"
        )

        api.clear_log()
        assert mirror(sync_args(db, "--full-lookback"), env).code == 0
        full = {t: list_calls(api, t) for t in TARGETS}
        minutes = {x.sent_at.replace(second=0, microsecond=0) for x in late}
        assert len(minutes) > full["acme/upscaler"], (
            f"{len(minutes)} changed minutes cost no more than the whole lookback's "
            f"{full['acme/upscaler']} calls: the scenario proves nothing"
        )
        dearer = {t: (steady[t], full[t]) for t in TARGETS if steady[t] > full[t]}
        assert not dearer, f"narrowed runs made more list calls than the full lookback: {dearer}"
