"""`mirror demo` shows a spend answer, and `mirror fake-api` serves the cost operations:
the two ways to try mirror without a key.

The demo's billing events and prices come from the simulated API through the real client
(``mirror.billing_api``) into the real store; its spend per day is what `mirror cost --by
day` answers from the file it leaves.
"""

from __future__ import annotations

import json
import re
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from support.sim import NOW

from mirror.api import FalClient
from mirror.billing_api import fetch_prices, fetch_usage, list_billing_events
from mirror.demo import run_demo, store_billing
from mirror.simulator import DEFAULT_KEY, ManualClock, SimulatedAPI, WorldConfig, demo_world
from mirror.simulator.billing import EventQuery
from mirror.simulator.generate import DEMO_MODELS
from mirror.store import Store


def test_the_demo_prints_spend_per_day_as_mirror_cost_answers_it(tmp_path: Path) -> None:
    db = tmp_path / "demo.db"
    echoed: list[str] = []
    run_demo(db, echo=echoed.append, days=1)
    lines = "\n".join(echoed).splitlines()
    titles = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
    assert titles == [
        "Requests per endpoint and status:", "The five slowest requests:",
        "Archived output files (mirror media):", "Billable units per day:",
        f"Spend per day (mirror cost --db {db} --by day):", "Browse it yourself:",
    ], "the demo's sections changed"  # fmt: skip
    (billing,) = [line for line in lines if line.startswith("  billing: ")]
    found = re.fullmatch(
        r"  billing: (\d+) billing events of the key's calls to "
        r"fal-ai/flux/dev, fal-ai/flux/schnell; 2 prices",
        billing,
    )
    assert found, billing
    events = int(found[1])
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        stored = con.execute("SELECT count(*) FROM billing_events").fetchone()[0]
        priced = con.execute("SELECT endpoint_id FROM prices ORDER BY 1").fetchall()
    finally:
        con.close()
    assert events > 100 and stored == events, f"said {events} events, stored {stored}"
    assert priced == [("fal-ai/flux/dev",), ("fal-ai/flux/schnell",)]

    start = lines.index(titles[4]) + 1
    table = lines[start : lines.index("", start)]
    shown = [line.split() for line in table]
    r = subprocess.run([sys.executable, "-m", "mirror", "cost", "--db", str(db), "--by", "day",
                        "-f", "json"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    answer = json.loads(r.stdout)
    columns = ["day", "events", "billed_usd", "estimated", "estimated_usd", "total_usd",
               "unpriced"]  # fmt: skip
    assert shown == [columns, *([str(row[c]) for c in columns] for row in answer)]
    assert sum(row["events"] for row in answer) == events and len(answer) >= 2


def test_store_billing_keeps_the_servers_events_and_prices_exactly(tmp_path: Path) -> None:
    world = demo_world(NOW, config=WorldConfig(clock=ManualClock(NOW)))
    since = NOW - timedelta(days=3)
    store = Store.open(str(tmp_path / "m.db"))
    try:
        with SimulatedAPI(world) as api, httpx.Client() as http:
            client = FalClient(http, DEFAULT_KEY, base_url=api.base_url)
            got = store_billing(store, client, list(DEMO_MODELS), since, NOW)
            want = api.ledger.select(EventQuery(start=since, end=NOW), NOW)
            quoted = [api.ledger.price_at(e, NOW) for e in DEMO_MODELS]
        with store.engine.connect() as conn:
            events = conn.exec_driver_sql(
                "SELECT request_id, endpoint_id, cost_estimate_nano_usd FROM billing_events "
                "ORDER BY request_id"
            ).all()
            prices = conn.exec_driver_sql(
                "SELECT endpoint_id, unit, unit_price, currency FROM prices ORDER BY 1"
            ).all()
    finally:
        store.close()
    assert got == (len(want), 2) and len(want) > 1000
    assert events == sorted((e.request_id, e.endpoint_id, e.total_nano) for e in want)
    assert prices == [(e, p.unit, p.unit_price, p.currency)
                      for e, p in zip(DEMO_MODELS, quoted, strict=True) if p]  # fmt: skip


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
