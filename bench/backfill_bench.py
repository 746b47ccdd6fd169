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
unpacked), in the same runs, with its own defaults. Printed: medians of ``--runs``, and for
``analytics`` the CPU time mirror used (user + system) and the cores it got on average.

``--ceiling`` first measures the simulated API itself: ``CEILING_THREADS`` threads of a
trivial client (``http.client``, one keep-alive connection each, no decoding) asking for
real pages for ``CEILING_SECONDS``, without and with the rate limit, so the bound above is
known to be the limit's and not the simulator's. ``--autogroup-nice N`` (Linux, root for
N < 0) sets the scheduling priority of this session's autogroup (``/proc/self/autogroup``)
for the length of the run, restored after: with autogroups, every session gets an equal
share of the cores whatever its processes' own nice value, so on a shared machine this is
how the benchmark's processes get the cores a quiet machine would give them.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import math
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import common as c

SPEED_TARGET = 5.0
PAGES_TARGET = 1.15
BOUND_TARGET = 1.3
OLD_CONCURRENCY = 4
#: the trivial client of ``--ceiling``: as many threads as mirror's default concurrency
CEILING_THREADS = 16
CEILING_SECONDS = 6.0


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
        f"  {label} run {i + 1}/{runs}: {res.seconds:.2f}s ({res.cpu_seconds:.2f}s CPU), "
        f"{run['pages']} pages, "
        f"{run['api_calls']} calls ({answered} answered), 429s {log['status'].get('429', 0)}, "
        f"longest 429 run {log['longest_429_run']} (same call {log['longest_429_run_same_call']})",
        file=sys.stderr,
        flush=True,
    )
    return {
        "seconds": res.seconds,
        "cpu": res.cpu_seconds,
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
        ["CPU, user + system (s)", med(m, "cpu"), med(before, "cpu") if before else "-",
         med(old, "cpu"), f"{med(m, 'cpu') / med(m, 'answered') * 1000:.1f} ms per answered "
         f"call; {med(m, 'cpu') / med(m, 'seconds'):.2f} cores got on average, "
         f"{med(m, 'cpu') / (BOUND_TARGET * bound):.2f} needed for {BOUND_TARGET:g}x", "-", "-"],
    ]  # fmt: skip
    print(f"rows: {rows:,}\n")
    return table


def ceiling(a: Any) -> list[list[Any]]:
    """The simulated API's own throughput: ``CEILING_THREADS`` trivial clients asking for
    real pages (100 items with payloads and billing), without and with the rate limit."""
    table: list[list[Any]] = []
    for limit in (None, a.rate_limit):
        spec = c.WorldSpec(18_150, dense=5_000) if a.quick else c.WorldSpec(72_600, dense=20_000)
        spec.latency, spec.rate_limit = a.latency, limit
        with c.SimServer(spec) as server:
            statuses = hammer(server, CEILING_THREADS, CEILING_SECONDS)
        answered = statuses.get(200, 0) / CEILING_SECONDS
        table.append([f"{CEILING_THREADS} threads, rate limit {limit or 'none'}",
                      answered, statuses.get(429, 0) / CEILING_SECONDS,
                      f"{CEILING_THREADS / a.latency:.0f}" if limit is None else f"{limit:g}",
                      dict(sorted(statuses.items()))])  # fmt: skip
    return table


def hammer(server: c.SimServer, threads: int, seconds: float) -> Counter[int]:
    """Each thread asks for page after page of the whole world, one target each in turn,
    reading each answer whole and nothing more; the answers' statuses, counted."""
    url = urlsplit(server.base_url)
    path = url.path.rstrip("/") + "/serverless/requests/by-endpoint?"
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client(i: int) -> None:
        con = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port)
        page = 1
        while time.monotonic() < stop:
            params = [("endpoint_id", server.targets[i % len(server.targets)]),
                      ("start", server.since), ("end", server.until), ("limit", 100),
                      ("expand", "payloads"), ("expand", "billing")]  # fmt: skip
            if page > 1:  # the simulator's cursor is the page number, base64-encoded
                params.append(("cursor", base64.b64encode(str(page).encode()).decode()))
            con.request("GET", path + urlencode(params), headers={"Authorization": f"Key {c.KEY}"})
            answer = con.getresponse()
            answer.read()
            with lock:
                statuses[answer.status] += 1
            page = page % 200 + 1
        con.close()

    workers = [threading.Thread(target=client, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return statuses


@contextlib.contextmanager
def autogroup_nice(nice: int | None) -> Iterator[None]:
    """This session's autogroup at ``nice`` for the block, then back to what it was."""
    if nice is None:
        yield
        return
    path = Path("/proc/self/autogroup")
    try:
        was = int(path.read_text().split()[-1])
        path.write_text(str(nice))
    except (OSError, ValueError, IndexError) as e:
        sys.exit(f"--autogroup-nice: cannot set {path} ({e}); Linux with autogroups, root for < 0")
    print(f"autogroup nice {nice} for this run (was {was})\n")
    try:
        yield
    finally:
        path.write_text(str(was))


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--max-concurrency", type=int, default=None, help="default: the CLI's")
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--rate-limit", type=float, default=100.0)
    p.add_argument("--no-baseline", action="store_true", help="no sequential baseline")
    p.add_argument("--scenario", choices=["no-analytics", "analytics", "both"], default="both")
    p.add_argument("--before", type=Path, default=None,
                   help="a source tree of mirror to measure beside (e.g. main's)")  # fmt: skip
    p.add_argument("--ceiling", action="store_true",
                   help="first measure the simulated API's own throughput")  # fmt: skip
    p.add_argument("--autogroup-nice", type=int, default=None,
                   help="this session's autogroup priority for the run (see above)")  # fmt: skip
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
    with autogroup_nice(a.autogroup_nice):
        if a.ceiling:
            print(f"### the simulated API alone: {CEILING_THREADS} threads of a trivial client, "
                  f"{CEILING_SECONDS:g} s each\n")  # fmt: skip
            print(c.table(["client", "answered/s", "429s/s", "ceiling (threads / latency, or "
                           "the limit)", "statuses"], ceiling(a)) + "\n")  # fmt: skip
        if a.scenario in ("no-analytics", "both"):
            print(c.table(headers, no_analytics(a, runs, tmp)) + "\n")
        if a.scenario in ("analytics", "both"):
            print(c.table(headers, with_analytics(a, runs, tmp)))


if __name__ == "__main__":
    main()
