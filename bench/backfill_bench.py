"""Backfill wall time against a plain sequential sync, on a slow, rate-limited simulated API.

    python bench/backfill_bench.py            # 60,000 requests over 3 days + a dense hour of 20,000
    python bench/backfill_bench.py --quick    # 15,000 + 5,000

The simulated API (its own process, 127.0.0.1) answers every call after 50 ms and refuses
calls beyond 100 per second (token bucket, burst 10) with a 429 without ``Retry-After``.
Both sides backfill the same three apps over the same range into a new database:

- baseline: one-hour windows walked one after another, page after page, one call in flight
  (``python bench/common.py sequential``);
- mirror: ``mirror sync --max-concurrency N`` as a user runs it.

Printed: wall times (median of ``--runs``), their ratio, pages requested against
ceil(rows / 100), and the longest run of 429s the client received: across all calls, and
for one same call (the target: no request refused twice in a row).
Targets: >= 5x faster; pages <= 1.15 x ceil(rows/100); no call refused twice in a row.
"""

from __future__ import annotations

import json
import math
import sys

import common as c

SPEED_TARGET = 5.0
PAGES_TARGET = 1.15


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--max-concurrency", type=int, default=16)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--rate-limit", type=float, default=100.0)
    p.add_argument("--no-baseline", action="store_true", help="only run mirror")
    a = p.parse_args()
    runs = a.runs or 3
    if a.quick:
        spec = c.WorldSpec(requests=15_000, dense=5_000)
    else:
        spec = c.WorldSpec(requests=60_000, dense=20_000)
    spec.latency, spec.rate_limit = a.latency, a.rate_limit
    c.header(
        "Backfill: mirror vs a sequential sync",
        [
            f"world: {spec.requests:,} requests over {spec.days:g} days + a dense hour of "
            f"{spec.dense:,}, apps {', '.join(c.TARGETS)}; API latency {spec.latency * 1000:g} ms "
            f"per call, rate limit {spec.rate_limit:g}/s (burst {spec.burst:g}); {runs} runs each",
        ],
    )
    tmp = c.workdir(a.tmp, "mirror-bench-")
    mirror_s: list[float] = []
    base_s: list[float] = []
    pages: list[int] = []
    base_pages: list[int] = []
    worst_same = worst_any = 0
    with c.SimServer(spec) as server:
        rows = server.rows
        ideal = math.ceil(rows / 100)
        for i in range(runs):
            if not a.no_baseline:
                db = tmp / "baseline.db"
                c.remove_db(db)
                server.clear()
                res = c.run_measured(c.sequential_cmd(server, db), c.sim_env(server.base_url))
                if res.code != 0:
                    sys.exit(f"baseline failed: {res.stderr[-2000:]}")
                out = json.loads(res.stdout)
                base_s.append(res.seconds)
                base_pages.append(out["pages"])
                print(
                    f"  baseline run {i + 1}/{runs}: {res.seconds:.2f}s, {out['pages']} pages",
                    file=sys.stderr,
                    flush=True,
                )
            db = tmp / "mirror.db"
            c.remove_db(db)
            server.clear()
            res = c.mirror_sync(server, db, max_concurrency=a.max_concurrency)
            log = server.log()
            run = c.last_run(db)
            if run["rows"] < rows:
                sys.exit(f"mirror holds {run['rows']} rows, the API {rows}")
            mirror_s.append(res.seconds)
            pages.append(run["pages"])
            worst_same = max(worst_same, log["longest_429_run_same_call"])
            worst_any = max(worst_any, log["longest_429_run"])
            print(
                f"  mirror run {i + 1}/{runs}: {res.seconds:.2f}s, {run['pages']} pages, "
                f"{run['api_calls']} calls, 429s {log['status'].get('429', 0)}, "
                f"longest 429 run {log['longest_429_run']} (same call "
                f"{log['longest_429_run_same_call']})",
                file=sys.stderr,
                flush=True,
            )
    m = c.median(mirror_s)
    ratio_pages = c.median(pages) / ideal
    table = []
    if base_s:
        b = c.median(base_s)
        speed = b / m
        table.append(
            [
                "backfill wall time (s)",
                m,
                b,
                f"{speed:.2f}x faster",
                f">= {SPEED_TARGET:g}x",
                c.verdict(speed >= SPEED_TARGET),
            ]
        )
    table.append(
        [
            "pages / ceil(rows/100)",
            ratio_pages,
            c.median(base_pages) / ideal if base_pages else "-",
            f"{c.median(pages):.0f} / {ideal}",
            f"<= {PAGES_TARGET:g}",
            c.verdict(ratio_pages <= PAGES_TARGET),
        ]
    )
    table.append(
        [
            "longest run of 429s for one call",
            float(worst_same),
            "-",
            f"(any calls: {worst_any})",
            "<= 1",
            c.verdict(worst_same <= 1),
        ]
    )
    print(f"rows: {rows:,}; mirror: `{c.mirror_sync_cmd_text(a.max_concurrency)}`\n")
    print(c.table(["figure", "mirror", "baseline", "ratio", "target", "result"], table))


if __name__ == "__main__":
    main()
