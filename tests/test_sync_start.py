"""When a sync waits for the next whole second before its first call, and when it need not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mirror.api import FalClient, RetryPolicy
from mirror.simulator import SimulatedAPI, WorldConfig, generate_world
from mirror.store import Store
from mirror.sync import Syncer, SyncOptions


@pytest.mark.parametrize(
    ("until", "waits"),
    [
        (None, [0.7]),  # the last window ends at the next whole second: reach it first
        (timedelta(hours=-1), []),  # a backfill ending in the past starts at once
        (timedelta(seconds=-0.1), []),  # (ending before the sync started, by a fraction)
        (timedelta(seconds=0.5), [0.5]),  # ending within this second: wait until then only
    ],
)
def test_start_of_run_wait(tmp_path, until: timedelta | None, waits: list[float]) -> None:
    world_now = datetime.now(UTC).replace(microsecond=0)
    world = generate_world(WorldConfig(), seed=3, now=world_now, days=1,
                           endpoints=["acme/a"], requests_per_hour=40, dense_hour=None)  # fmt: skip
    started = world_now + timedelta(seconds=0.3)
    opts = SyncOptions(
        targets=["acme/a"],
        since=world_now - timedelta(hours=6),
        until=started + until if until is not None else None,
        recheck=False,
        cost=False,
    )
    waited: list[float] = []
    store = Store.open(str(tmp_path / "m.db"))
    with SimulatedAPI(world) as api, httpx.Client() as http:
        client = FalClient(http, "sim-key-id:sim-key-secret", base_url=api.base_url,
                           retry=RetryPolicy(attempts=3, base=0.01, cap=0.05))  # fmt: skip
        report = Syncer(store, client, opts, clock=lambda: started, wait=waited.append).run()
    with store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT count(*) FROM requests").scalar()
    store.close()
    assert report.outcome == "ok", report.error
    assert [round(w, 6) for w in waited] == waits, f"until {until}: waited {waited}"
    assert stored == report.inserted > 0, (stored, report.inserted)
