"""Backfill wall time on a slow, rate-limited simulated API, without and with analytics.

    python bench/backfill_bench.py                    # both scenarios, 3 runs each
    python bench/backfill_bench.py --quick            # a quarter of the requests
    python bench/backfill_bench.py --before DIR       # also main's code (a source tree) beside

The simulated API (its own process, 127.0.0.1) answers every call after 50 ms and refuses
calls beyond 100 per second (token bucket, burst 10) with a 429 without ``Retry-After``.
Every side backfills the same three apps over the same 3 days into a new database;
``mirror sync`` runs as a user runs it (no ``--max-concurrency``: the default).

- ``no-analytics``: 60,000 requests + a dense hour of 20,000 inside a long window, and
  ``/serverless/analytics`` answers 404 (a key without its scope), so the windows are cut
  only by what their pages show. Baseline: one-hour windows walked one after another, page
  after page, one call in flight (``python bench/common.py sequential``). Targets: >= 5x
  the baseline; pages <= 1.15 x ceil(rows / 100); no call refused twice in a row.
- ``analytics``: 72,600 requests + a dense hour of 20,000 (~92,600), analytics answering.
  The bound: every answered call (pages and analytics) at the limit's rate. Baseline: the
  same code with ``--max-concurrency 4`` (the default before the pacer grew past it).
  Target: wall time <= 1.3 x the bound.

``--before DIR`` runs ``mirror`` from another source tree too (e.g. ``git archive main``
unpacked), in the same runs, with its own defaults. Printed: medians of ``--runs``.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import common as c

SPEED_TARGET = 5.0
PAGES_TARGET = 1.15
BOUND_TARGET = 1.3
OLD_CONCURRENCY = 4


def measure_mirror(
    server: c.SimServer, db: Path, label: str, i: int, runs: int, **kw: Any
) -> dict[str, Any]:
    c.remove_db(db)
    server.clear()
    res = c.mirror_sync(server, db, **kw)
    log = server.log()
    run = c.last_run(db)
    if run["rows"] < server.rows:
        sys.exit(f"{label}: the mirror holds {run['rows']} rows, the API {server.rows}")
    answered = log["status"].get("200", 0)
    print(
        f"  {label} run {i + 1}/{runs}: {res.seconds:.2f}s, {run['pages']} pages, "
        f"{run['api_calls']} calls ({answered} answered), 429s {log['status'].get('429', 0)}, "
        f"longest 429 run {log['longest_429_run']} (same call {log['longest_429_run_same_call']})",
        file=sys.stderr,
        flush=True,
    )
    return {
        "seconds": res.seconds,
        "pages": run["pages"],
        "answered": answered,
        "same_429": log["longest_429_run_same_call"],
        "any_429": log["longest_429_run"],
    }


def med(xs: list[dict[str, Any]], key: str) -> float:
    return c.median([x[key] for x in xs])


def no_analytics(a: Any, runs: int, tmp: Path) -> list[list[Any]]:
    spec = (
        c.WorldSpec(requests=15_000, dense=5_000) if a.quick else c.WorldSpec(60_000, dense=20_000)
    )
    spec.latency, spec.rate_limit, spec.analytics = a.latency, a.rate_limit, False
    print(
        f"### no analytics (404): {spec.requests:,} requests over {spec.days:g} days + a dense "
        f"hour of {spec.dense:,}\n"
    )
    sides: dict[str, list[dict[str, Any]]] = {"mirror": [], "before": []}
    base_s: list[float] = []
    base_pages: list[int] = []
    with c.SimServer(spec) as server:
        ideal = math.ceil(server.rows / 100)
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
                print(f"  baseline run {i + 1}/{runs}: {res.seconds:.2f}s, {out['pages']} pages",
                      file=sys.stderr, flush=True)  # fmt: skip
            sides["mirror"].append(
                measure_mirror(
                    server, tmp / "m.db", "mirror", i, runs, max_concurrency=a.max_concurrency
                )
            )
            if a.before:
                sides["before"].append(
                    measure_mirror(server, tmp / "b.db", "before", i, runs, code=a.before)
                )
        rows = server.rows
    m = sides["mirror"]
    before = sides["before"]
    table: list[list[Any]] = []
    if base_s:
        b = c.median(base_s)
        speed = b / med(m, "seconds")
        was = f"{b / med(before, 'seconds'):.2f}x" if before else "-"
        table.append(["wall time (s)", med(m, "seconds"), med(before, "seconds") if before else "-",
                      b, f"{speed:.2f}x the baseline (before: {was})", f">= {SPEED_TARGET:g}x",
                      c.verdict(speed >= SPEED_TARGET)])  # fmt: skip
    ratio = med(m, "pages") / ideal
    table.append(["pages / ceil(rows/100)", ratio,
                  med(before, "pages") / ideal if before else "-",
                  c.median(base_pages) / ideal if base_pages else "-",
                  f"{med(m, 'pages'):.0f} / {ideal}", f"<= {PAGES_TARGET:g}",
                  c.verdict(ratio <= PAGES_TARGET)])  # fmt: skip
    worst = max(x["same_429"] for x in m)
    table.append(["longest run of 429s for one call", float(worst),
                  float(max(x["same_429"] for x in before)) if before else "-", "-",
                  f"(any calls: {max(x['any_429'] for x in m)})", "<= 1",
                  c.verdict(worst <= 1)])  # fmt: skip
    print(f"rows: {rows:,}\n")
    return table


def with_analytics(a: Any, runs: int, tmp: Path) -> list[list[Any]]:
    spec = c.WorldSpec(18_150, dense=5_000) if a.quick else c.WorldSpec(72_600, dense=20_000)
    spec.latency, spec.rate_limit = a.latency, a.rate_limit
    print(
        f"### analytics answering: {spec.requests:,} requests over {spec.days:g} days + a dense "
        f"hour of {spec.dense:,}\n"
    )
    m: list[dict[str, Any]] = []
    old: list[dict[str, Any]] = []
    before: list[dict[str, Any]] = []
    with c.SimServer(spec) as server:
        for i in range(runs):
            m.append(measure_mirror(server, tmp / "m.db", "mirror", i, runs,
                                    max_concurrency=a.max_concurrency))  # fmt: skip
            old.append(measure_mirror(server, tmp / "o.db", f"--max-concurrency {OLD_CONCURRENCY}",
                                      i, runs, max_concurrency=OLD_CONCURRENCY))  # fmt: skip
            if a.before:
                before.append(
                    measure_mirror(server, tmp / "b.db", "before", i, runs, code=a.before)
                )
        rows = server.rows
    bound = med(m, "answered") / a.rate_limit
    ratio = med(m, "seconds") / bound
    table = [
        ["wall time (s)", med(m, "seconds"), med(before, "seconds") if before else "-",
         med(old, "seconds"), f"{ratio:.2f}x the bound ({bound:.1f} s; --max-concurrency "
         f"{OLD_CONCURRENCY}: {med(old, 'seconds') / bound:.2f}x)", f"<= {BOUND_TARGET:g}x",
         c.verdict(ratio <= BOUND_TARGET)],
        ["calls answered", med(m, "answered"), med(before, "answered") if before else "-",
         med(old, "answered"), f"rows {rows:,}", "-", "-"],
    ]  # fmt: skip
    print(f"rows: {rows:,}\n")
    return table


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--max-concurrency", type=int, default=None, help="default: the CLI's")
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--rate-limit", type=float, default=100.0)
    p.add_argument("--no-baseline", action="store_true", help="no sequential baseline")
    p.add_argument("--scenario", choices=["no-analytics", "analytics", "both"], default="both")
    p.add_argument("--before", type=Path, default=None,
                   help="a source tree of mirror to measure beside (e.g. main's)")  # fmt: skip
    a = p.parse_args()
    runs = a.runs or 3
    c.header(
        "Backfill: mirror vs a sequential sync, without and with analytics",
        [f"API latency {a.latency * 1000:g} ms per call, rate limit {a.rate_limit:g}/s "
         f"(burst 10); apps {', '.join(c.TARGETS)}; {runs} runs each; mirror: "
         f"`{c.mirror_sync_cmd_text(a.max_concurrency)}`"
         + (f"; before: the same from {a.before}" if a.before else "")],
    )  # fmt: skip
    tmp = c.workdir(a.tmp, "mirror-bench-")
    headers = ["figure", "mirror", "before", "baseline", "ratio", "target", "result"]
    if a.scenario in ("no-analytics", "both"):
        print(c.table(headers, no_analytics(a, runs, tmp)) + "\n")
    if a.scenario in ("analytics", "both"):
        print(c.table(headers, with_analytics(a, runs, tmp)))


if __name__ == "__main__":
    main()
