"""`mirror demo` syncs both histories and shows a spend answer, and `mirror fake-api`
serves the cost operations: the two ways to try mirror without a key.

The demo syncs the account's apps and the key's calls to two hosted models with `mirror
sync`'s own library call, cost included (billing events, prices, fal's usage totals); its
spend per day is what `mirror cost --by day` answers from the file it leaves, and what it
billed is what the simulated server's usage totals say.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx

from mirror.api import FalClient
from mirror.billing_api import fetch_prices, fetch_usage, list_billing_events
from mirror.demo import MODELS, TARGETS, run_demo
from mirror.simulator import DEFAULT_KEY, ManualClock, SimulatedAPI, WorldConfig, demo_world
from mirror.simulator.billing import EventQuery
from mirror.simulator.generate import DEMO_MODELS

SPEND_COLUMNS = ["day", "events", "billed_usd", "estimated", "estimated_usd", "total_usd",
                 "unpriced"]  # fmt: skip


def _server(now: datetime, since: datetime) -> tuple[dict[str, int], list[tuple], list[tuple]]:
    """What the demo's simulated server says at ``now`` (its clock frozen there, the same
    world the demo built): its usage totals per UTC day from ``since``, in nano-USD, its
    billing events, and its current prices."""
    world = demo_world(now, config=WorldConfig(clock=ManualClock(now)))
    with SimulatedAPI(world) as api, httpx.Client() as http:
        client = FalClient(http, DEFAULT_KEY, base_url=api.base_url)
        usage: dict[str, int] = {}
        for line in fetch_usage(client, start=since, end=now + timedelta(days=1)):
            usage[line.bucket[:10]] = usage.get(line.bucket[:10], 0) + line.cost_total_nano
        events = sorted((e.request_id, e.endpoint_id, e.total_nano)
                        for e in api.ledger.select(EventQuery(start=since, end=now), now))  # fmt: skip
        prices = sorted((p.endpoint_id, p.unit, p.unit_price, p.currency)
                        for p in fetch_prices(client, MODELS))  # fmt: skip
    return usage, events, prices


def test_the_demo_syncs_both_histories_and_its_spend_is_the_servers_usage(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    echoed: list[str] = []
    now = datetime.now(UTC).replace(microsecond=0)
    run_demo(db, echo=echoed.append, days=1, frozen=now)
    lines = "\n".join(echoed).splitlines()
    titles = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == [
        "Requests per history and endpoint:", "The five slowest requests:",
        "Archived output files (mirror media):", "Billable units per day:",
        f"Spend per day (mirror cost --db {db} --by day):", "Browse it yourself:",
    ], "the demo's sections changed"  # fmt: skip
    (billing,) = [line for line in lines if line.startswith("  billing: ")]
    found = re.fullmatch(
        r"  billing: (\d+) billing events of the key's calls to "
        r"fal-ai/flux/dev, fal-ai/flux/schnell; 2 prices; fal's usage totals agree",
        billing,
    )
    assert found, billing
    usage, events, prices = _server(now, now - timedelta(days=1))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        targets = con.execute("SELECT target, history FROM sync_targets ORDER BY 1").fetchall()
        histories = dict(con.execute("SELECT history, count(*) FROM requests GROUP BY 1"))
        stored = con.execute("SELECT request_id, endpoint_id, cost_estimate_nano_usd "
                             "FROM billing_events ORDER BY 1, 2, 3").fetchall()  # fmt: skip
        priced = con.execute("SELECT endpoint_id, unit, unit_price, currency FROM prices "
                             "ORDER BY 1").fetchall()  # fmt: skip
    finally:
        con.close()
    assert targets == sorted([*((t, "serverless") for t in TARGETS),
                              *((m, "model") for m in MODELS)]), targets  # fmt: skip
    assert histories.get("model", 0) > 100 and histories.get("serverless", 0) > 1000, histories
    assert int(found[1]) == len(events) > 100, (
        f"said {found[1]} events, the server has {len(events)}"
    )
    assert stored == events, "the demo's billing events are not the server's"
    assert priced == prices, f"the demo's prices are not the server's: {priced}"

    start = lines.index(titles[4]) + 1
    table = lines[start : lines.index("", start)]
    notes = [line.strip() for line in table if line.strip().startswith("mirror: note:")]
    shown = [line.split() for line in table if not line.strip().startswith("mirror: note:")]
    assert shown[0] == SPEND_COLUMNS, shown[0]
    billed = {row[0]: int(Decimal(row[2]) * 1_000_000_000) for row in shown[1:]}
    assert billed == usage, f"the spend shown {billed} is not the server's usage totals {usage}"
    r = subprocess.run([sys.executable, "-m", "mirror", "cost", "--db", str(db), "--by", "day",
                        "-f", "json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    assert shown == [SPEND_COLUMNS, *([str(row[c]) for c in SPEND_COLUMNS] for row in answer)]
    estimated = sum(row["estimated"] for row in answer)
    assert notes == (
        [f"mirror: note: estimated_usd is an estimate: {estimated} requests without a billing "
         "event, priced at the price seen for their time"] if estimated else []
    ), notes  # fmt: skip


def test_fake_api_serves_billing_events_pricing_and_usage_that_agree() -> None:
    server = subprocess.Popen([sys.executable, "-m", "mirror", "fake-api", "--port", "0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        first = server.stdout.readline() if server.stdout else ""
        assert first.startswith("simulated fal API at http://127.0.0.1:"), first
        base_url = first.split(" at ", 1)[1].split(" ", 1)[0]
        # an hour back: every event of the range has appeared (billing lands at most half
        # an hour late), so the answers below cannot move while they are asked
        end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        start = end - timedelta(days=2)
        with httpx.Client() as http:
            client = FalClient(http, DEFAULT_KEY, base_url=base_url)
            billed: dict[str, int] = {}
            cursor = None
            while True:
                page = list_billing_events(client, start=start, end=end, cursor=cursor)
                for e in page.events:
                    billed[e.endpoint_id] = billed.get(e.endpoint_id, 0) + e.cost_estimate_nano_usd
                cursor = page.next_cursor
                if cursor is None:
                    break
            usage: dict[str, int] = {}
            for line in fetch_usage(client, start=start, end=end):
                usage[line.endpoint_id] = usage.get(line.endpoint_id, 0) + line.cost_total_nano
            quoted = {p.endpoint_id: p.currency for p in fetch_prices(client, DEMO_MODELS)}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=20) == 0, "fake-api did not stop cleanly"
        finally:
            server.kill()
    assert sorted(billed) == sorted(DEMO_MODELS), f"billed endpoints: {sorted(billed)}"
    assert usage == billed, "usage totals are not the billing events summed"
    assert quoted == dict.fromkeys(DEMO_MODELS, "USD")
