"""The estimate follows the billing events as they arrive: the real command against the
simulated API over HTTP, on SQLite and PostgreSQL (docs/cost.md, how the estimate is
counted).

A team first mirrors its model calls with a key that cannot read billing events: every
successful call is estimated. A key with ADMIN scope then brings the events, which arrive
after their requests: the estimate keeps only the calls fal has not billed. Each time,
`mirror cost` equals the spend worked out request by request from what the mirror holds.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from support.cli import mirror
from support.sim import API_SCOPE_KEY, KEYS, fast_env, static_world
from support.spend import expected_rollup, expected_spend, stored_rollup

from mirror.db import make_engine
from mirror.simulator import DEFAULT_KEY, SimulatedAPI
from mirror.simulator.billing import BillingConfig, PriceBook
from mirror.simulator.generate import MODEL_ENDPOINTS
from mirror.simulator.world import WorldConfig

HOURS = 30


def _expected(db: str) -> tuple[list[dict[str, Any]], bool]:
    engine = make_engine(db)
    try:
        with engine.connect() as conn:
            return (
                expected_spend(conn, ("day", "endpoint"), None, None, ()),
                stored_rollup(conn) == expected_rollup(conn),
            )
    finally:
        engine.dispose()


def _cost(db: str, env: dict[str, str]) -> list[dict[str, Any]]:
    run = mirror(["cost", "--db", db, "--by", "day,endpoint", "-f", "json"], env)
    assert run.code == 0, f"mirror cost failed: {run.stderr}"
    return json.loads(run.stdout)  # type: ignore[no-any-return]


def test_events_arriving_after_their_requests_leave_the_estimate(db_url: str) -> None:
    now = (datetime.now(UTC) - timedelta(seconds=2)).replace(microsecond=0)
    world = static_world(WorldConfig(), seed=17, hours=HOURS, per_hour=12, now=now,
                         endpoints=list(MODEL_ENDPOINTS), big_tie_group=0, running=0)  # fmt: skip
    billing = BillingConfig(prices=PriceBook(changes=[now - timedelta(hours=10, minutes=17)]))
    models = [a for m in MODEL_ENDPOINTS for a in ("--model", m)]
    with SimulatedAPI(
        world, billing=billing, keys=KEYS, admin_keys=frozenset({DEFAULT_KEY})
    ) as api:
        plain = fast_env(api.base_url, FAL_KEY=API_SCOPE_KEY)
        first = mirror(["sync", "--db", db_url, *models, "--since", f"{HOURS + 2}h"], plain)
        assert first.code == 0, f"the sync with a non-ADMIN key failed: {first.stderr}"
        before = _cost(db_url, plain)
        want, rollup_ok = _expected(db_url)
        assert rollup_ok, "unbilled_hourly differs from the requests and events stored"
        assert before == want, "spend with no billing event differs from the recomputation"
        assert sum(r["events"] for r in before) == 0, "events read with a non-ADMIN key"
        estimated = sum(r["estimated"] for r in before)
        assert estimated > 100, f"the model calls should be estimated, not {estimated}"

        admin = fast_env(api.base_url)  # the default key has ADMIN scope
        second = mirror(["sync", "--db", db_url], admin)  # the stored targets, as from cron
        assert second.code == 0, f"the sync with an ADMIN key failed: {second.stderr}"
    after = _cost(db_url, admin)
    want, rollup_ok = _expected(db_url)
    assert rollup_ok, "unbilled_hourly differs after the events arrived"
    assert after == want, "spend after the events arrived differs from the recomputation"
    assert sum(r["events"] for r in after) > 100, "the ADMIN key's sync brought no events"
    left = sum(r["estimated"] for r in after)
    assert left < estimated / 10, (
        f"{left} of {estimated} requests are still estimated once their events arrived"
    )
