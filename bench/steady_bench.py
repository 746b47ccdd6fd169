"""Steady state: what a cron run costs, narrowed lookback vs the whole lookback.

A world where requests arrive at 2.5/s on average (diurnal), with billing that lands late
(seconds for most requests, up to 30 minutes for ~5%, never for a few), requests fal records
late, and requests still running when a run starts. After a 6-hour backfill, a run every 5
minutes of simulated time (the simulator's clock is moved by hand, so the runs follow each
other at once): each step runs the narrowed sync on one mirror and ``--full-lookback`` on a
copy of it, against the same server state. Per run it prints the API calls and the bytes
downloaded, against the targets of issue 12:

- calls per run <= 2 x ceil(new rows / 100) + 2 per target, summed over the targets;
- bytes downloaded per run <= 3 x the bytes of the new rows (as served, with payloads);

averaged over the runs, and asserts that both mirrors equal the server at the end (after a
last run once every request has ended and been billed). Scheduled re-checks are off in
both (they are the same in both: one analytics call per target and tier when due).

The simulated API runs in this process (threads): calls and bytes are counted, not timed.

    .venv/bin/python bench/steady_bench.py [--runs 20] [--per-hour 9000] [--seed 1]
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import ENDPOINTS, TARGETS, command_line  # noqa: E402

from mirror.api import FalClient, make_http_client  # noqa: E402
from mirror.simulator import ManualClock, SimulatedAPI, WorldConfig, generate_world  # noqa: E402
from mirror.store import Store  # noqa: E402
from mirror.sync import SyncOptions, sync  # noqa: E402

STEP = timedelta(minutes=5)


class CountingAPI(SimulatedAPI):
    """The simulated API, counting the bytes of every answer body it sends."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.sent = 0
        self._count_lock = threading.Lock()

    def respond(self, method: str, path: str, params: Any, authorization: Any, **kw: Any):  # type: ignore[no-untyped-def]
        answer = super().respond(method, path, params, authorization, **kw)
        with self._count_lock:
            self.sent += len(answer.body)
        return answer


def billing_mix(world: Any, slow: float, rng: random.Random) -> None:
    """Billing lands within 20 s of a request's end, but for ``slow`` of the successful
    requests 1 to 10 minutes after it."""
    billed = [r for r in world if r.billable_units is not None]
    for req in billed:
        late = rng.random() < slow
        lag = rng.uniform(60, 600) if late else rng.uniform(0.3, 20)
        world.update(req.request_id, billing_at=req.ended_at + timedelta(seconds=lag))


def target_of(endpoint_id: str) -> str:
    return next(t for t in TARGETS if endpoint_id == t or endpoint_id.startswith(t + "/"))


def ids(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r for (r,) in conn.execute("SELECT request_id FROM requests")}


def one_run(
    api: CountingAPI, db: Path, clock: ManualClock, *, steady: bool, recheck: bool = False
) -> tuple[int, int]:
    """(API calls, bytes downloaded) of one sync of ``db`` at the world's present."""
    store = Store.open(str(db))
    sent0 = api.sent
    try:
        with make_http_client() as http:
            client = FalClient(http, "sim-key-id:sim-key-secret", base_url=api.base_url)
            opts = SyncOptions(targets=TARGETS, steady=steady, recheck=recheck, cost=False)
            report = sync(store, client, opts, clock=clock)
    finally:
        store.close()
    if report.outcome != "ok":
        raise SystemExit(f"a run failed: {report.error}")
    return report.api_calls, api.sent - sent0


def row_bytes(world: Any, rids: set[str]) -> tuple[int, Mapping[str, int]]:
    """The bytes of these rows as a page serves them, and how many there are per target."""
    view = world.server_view()
    total, per_target = 0, dict.fromkeys(TARGETS, 0)
    for rid in rids:
        item = view.get(rid)
        if item is None:
            continue
        total += len(orjson.dumps(item)) + 1
        per_target[target_of(item["endpoint_id"])] += 1
    return total, per_target


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--per-hour", type=float, default=9000.0, help="requests arriving per hour")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--slow-billing",
        default="0.01",
        help="share of successful requests billed 1-10 minutes late (the rest within 20 s), "
        "or 'generator': the simulator's own mix (~5%% 1-30 minutes late, 0.5%% never)",
    )
    ap.add_argument("-v", "--verbose", action="store_true", help="log what each run narrows")
    args = ap.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
        for name in ("mirror.sync", "mirror.walk", "mirror.api", "mirror.pacing"):
            logging.getLogger(name).setLevel(logging.WARNING)

    # the runs span 08:25-10:05 UTC, where the simulated day's traffic is at its average
    # (quiet nights, busy afternoons): new rows per run are about per-hour / 12
    start = datetime.now(UTC).replace(hour=8, minute=20, second=0, microsecond=0)
    start -= timedelta(days=1)
    clock = ManualClock(start)
    world = generate_world(
        WorldConfig(clock=clock),
        seed=args.seed,
        now=start,
        days=0.25,
        endpoints=dict(ENDPOINTS),
        requests_per_hour=args.per_hour,
        future_minutes=(args.runs + 1) * STEP.total_seconds() / 60,
        late_fraction=0.005,
        running=10,
    )
    if args.slow_billing != "generator":
        billing_mix(world, float(args.slow_billing), random.Random(args.seed))
    tmp = Path(tempfile.mkdtemp(prefix="steady-bench-"))
    narrowed_db, full_db = tmp / "narrowed.sqlite", tmp / "full.sqlite"
    rows: list[tuple[int, int, int, int, int, int, int]] = []
    try:
        with CountingAPI(world) as api:
            store = Store.open(str(narrowed_db))
            try:
                with make_http_client() as http:
                    client = FalClient(http, "sim-key-id:sim-key-secret", base_url=api.base_url)
                    sync(
                        store,
                        client,
                        SyncOptions(targets=TARGETS, since=start - timedelta(hours=6), cost=False),
                        clock=clock,
                    )
            finally:
                store.close()
            shutil.copy(narrowed_db, full_db)
            print(command_line())
            print(
                f"{len(ids(narrowed_db)):,} requests after a 6 h backfill; a run every "
                f"{STEP} of simulated time, {args.per_hour / 3600:.2f} requests/s arriving "
                "on average over the day"
            )
            print(
                f"{'run':>3} {'new':>5} {'calls':>6} {'target':>6} {'full':>6}   "
                f"{'KB':>8} {'3x new':>8} {'full KB':>9}"
            )
            for k in range(1, args.runs + 1):
                clock.advance(STEP.total_seconds())
                held = ids(narrowed_db)
                calls, sent = one_run(api, narrowed_db, clock, steady=True)
                new = ids(narrowed_db) - held
                full_calls, full_sent = one_run(api, full_db, clock, steady=False)
                new_bytes, per_target = row_bytes(world, new)
                target = sum(2 * math.ceil(n / 100) + 2 for n in per_target.values())
                rows.append((len(new), calls, target, full_calls, sent, new_bytes, full_sent))
                print(
                    f"{k:>3} {len(new):>5} {calls:>6} {target:>6} {full_calls:>6}   "
                    f"{sent / 1e3:>8.0f} {3 * new_bytes / 1e3:>8.0f} {full_sent / 1e3:>9.0f}"
                )
            # the end: every request ended and billed; one more run each, then compare
            clock.advance(STEP.total_seconds())
            world.finish_all()
            # billing still pending lands now for the requests of the last hour (billing that
            # lands later than the lookback is the scheduled re-checks' and verify's, as before)
            now = clock.now()
            for req in list(world):
                pending = req.billing_at is None or req.billing_at > now
                recent = now - timedelta(hours=1) < req.ended_at
                if req.billable_units is not None and pending and recent:
                    world.update(req.request_id, billing_at=max(now, req.ended_at))
            clock.advance(1)  # past the instant they ended: inside the last run's windows
            # with the scheduled re-checks made due: they find what fal recorded hours late
            for db in (narrowed_db, full_db):
                with sqlite3.connect(db) as conn:
                    conn.execute(
                        "UPDATE sync_rechecks SET checked_at = '2000-01-01T00:00:00.000000Z'"
                    )
            one_run(api, narrowed_db, clock, steady=True, recheck=True)
            one_run(api, full_db, clock, steady=False, recheck=True)
            server = set(world.server_view())
            lost = {
                name: server - ids(db)
                for name, db in (("narrowed", narrowed_db), ("full lookback", full_db))
            }
            for name, gone in lost.items():
                for rid in sorted(gone)[:5]:
                    r = world.get(rid)
                    print(
                        f"lost by {name}: {rid} sent {r.sent_at} ended {r.ended_at} recorded {r.recorded_at}",
                        file=sys.stderr,
                    )
            assert not any(lost.values()), f"requests lost: {lost}"
            same = same_rows(narrowed_db, full_db, world)
            assert same, "the narrowed mirror differs from the server"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def mean(i: int) -> float:
        return statistics.fmean(r[i] for r in rows)

    def median(i: int) -> float:
        return statistics.median(r[i] for r in rows)

    print()
    print(f"averaged over {len(rows)} runs (median in brackets):")
    print(
        f"  new rows per run            {mean(0):8.0f} ({median(0):.0f})\n"
        f"  API calls per run           {mean(1):8.1f} ({median(1):.0f})   target "
        f"{mean(2):.1f}: {mean(1) / mean(2):.2f}x the target   "
        f"full lookback {mean(3):.1f} ({median(3):.0f}): {mean(3) / mean(2):.2f}x the target\n"
        f"  KB downloaded per run       {mean(4) / 1e3:8.0f} ({median(4) / 1e3:.0f})   "
        f"3x the new rows {3 * mean(5) / 1e3:.0f}: {mean(4) / (3 * mean(5)):.2f}x the target   "
        f"full lookback {mean(6) / 1e3:.0f} ({median(6) / 1e3:.0f}): "
        f"{mean(6) / (3 * mean(5)):.2f}x the target"
    )
    print(
        f"  the narrowed run costs {mean(1) / mean(3):.2f}x the calls and "
        f"{mean(4) / mean(6):.2f}x the bytes of the full lookback"
    )
    print("nothing lost: both mirrors equal the server at the end")


def same_rows(narrowed: Path, full: Path, world: Any) -> bool:
    """Every request of the server in the narrowed mirror, with the server's values."""

    view = world.server_view()
    cols = ("request_id", "ended_at", "status_code", "billable_units")
    with sqlite3.connect(narrowed) as conn:
        got = {r[0]: r for r in conn.execute(f"SELECT {', '.join(cols)} FROM requests")}
    bad = []
    for rid, item in view.items():
        row = got.get(rid)
        if row is None:
            bad.append((rid, "missing"))
            continue
        if (row[2], row[3]) != (item.get("status_code"), item.get("billable_units")):
            bad.append((rid, row[2:], (item.get("status_code"), item.get("billable_units"))))
    if bad:
        print(f"{len(bad)} rows differ from the server, e.g. {bad[:3]}", file=sys.stderr)
    return not bad


if __name__ == "__main__":
    main()
