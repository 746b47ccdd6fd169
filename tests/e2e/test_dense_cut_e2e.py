"""A dense hour hidden in a long window, with analytics refused (404): the real command cuts
the rest of the window once its pages show the density and spreads it over several walkers,
and the mirror equals the server. Under a reading where the window filters on another time
than the pages' ``ended_at`` it does not cut (the probe says so), and the mirror is complete
all the same."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import mirror
from support.compare import assert_mirror_equals
from support.sim import READING_PARAMS, IdentifyingAPI, fast_env, listable, static_world

from mirror.simulator import FaultConfig, WorldConfig
from mirror.simulator.faults import ANALYTICS_PATH, SERVERLESS_LIST_PATH
from mirror.simulator.server import Answer

TARGET = "acme/app"
DENSE = 3_000


class AnalyticsRefused(IdentifyingAPI):
    """The simulated API without ``/serverless/analytics`` (404), as for a key without its
    scope; every call, that one too, answers after the faults' latency."""

    def respond(self, method: str, path: str, *args: Any, **kwargs: Any) -> Answer:
        if path == ANALYTICS_PATH:
            return Answer(404, b'{"detail": "Not Found"}')
        return super().respond(method, path, *args, **kwargs)


@pytest.mark.parametrize("config", READING_PARAMS)
def test_a_dense_hour_in_a_long_window_without_analytics_is_cut_and_walked_whole(
    tmp_path: Path, config: WorldConfig
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=2)
    # the dense hour, 12 h back: one day-long window holds the whole history, and its
    # first page (either order) sees only the sparse hours
    world = static_world(config, hours=20, per_hour=60, endpoints=[TARGET], running=3,
                         late_fraction=0.0, big_tie_group=120, now=now,
                         dense_hour=(now - timedelta(hours=12), DENSE))  # fmt: skip
    db = tmp_path / "m.db"
    with AnalyticsRefused(world, faults=FaultConfig(latency=0.02)) as api:
        r = mirror(["sync", "--db", str(db), "--since", "21h", "-e", TARGET, "-v"],
                   fast_env(api.base_url))  # fmt: skip
        lists = [c for c in api.calls if c.path == SERVERLESS_LIST_PATH]
        # a walk's first page carries no cursor: one per window walked
        walks = sum(
            1 for e in api.log if e.path == SERVERLESS_LIST_PATH and "cursor" not in e.params
        )
        refusals = [e for e in api.log if e.path == ANALYTICS_PATH and e.status == 404]
    assert r.code == 0, f"sync failed: {r.stderr[-2000:]}"
    expected = listable(world)
    assert len(expected) > DENSE, f"the world holds only {len(expected)} requests"
    assert_mirror_equals(db, expected, context=config.filter_field)
    assert refusals, "analytics was never asked for: the run did not plan blind"
    cut = "denser than planned" in r.stderr
    if config.filter_field == "ended_at":
        assert cut, f"the dense window was not cut mid-walk: {r.stderr[-3000:]}"
        # the cut's pieces were walked at once: several list calls in flight together
        events = sorted([(c.began, 1) for c in lists] + [(c.ended, -1) for c in lists])
        in_flight = peak = 0
        for _, d in events:
            in_flight += d
            peak = max(peak, in_flight)
        assert peak >= 3, f"at most {peak} list calls in flight: walked by one walker"
        ideal = math.ceil(len(expected) / 100)
        # beyond the pages the rows fill: each walk's partial last page (how many pieces
        # the rest is cut into follows the walkers idle at that moment) and the probe's two
        # look-ups (a window read twice would cost more than one more page)
        assert len(lists) <= ideal + walks + 2, (
            f"{len(lists)} list calls for {ideal} pages of rows in {walks} walks"
        )
    else:
        assert not cut, f"cut under a reading where the cut is unsound: {r.stderr[-3000:]}"
