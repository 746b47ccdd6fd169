"""Peak memory of ``mirror sync`` for a backfill of 100,000 and of 1,000,000 requests.

    python bench/memory_bench.py            # 100,000 and 1,000,000 requests
    python bench/memory_bench.py --quick    # 20,000 and 200,000

The simulated API runs in its own process (``bench/common.py serve``; the world of a million
requests alone takes about 1 GB there), so only the sync's memory is measured: the peak RSS
of the ``mirror sync`` child process (``wait4``'s ``ru_maxrss``), which backfills the whole
world into a new database with no latency. Memory must not grow with the history: pages
stream through a bounded queue to one writer.
Targets: peak RSS <= 120 MiB for 1,000,000 requests, and within 20% of the 100,000 figure.
"""

from __future__ import annotations

import sys

import common as c

LIMIT_MIB = 120.0
FLAT = 0.20


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--max-concurrency", type=int, default=None)
    a = p.parse_args()
    runs = a.runs or (3 if a.quick else 2)
    small, large = (20_000, 200_000) if a.quick else (100_000, 1_000_000)
    c.header(
        "Memory: peak RSS of mirror sync",
        [
            f"worlds of {small:,} and {large:,} requests over 3 days, apps {', '.join(c.TARGETS)}; "
            f"no latency; {runs} runs each, new database each run"
        ],
    )
    tmp = c.workdir(a.tmp, "mirror-mem-")
    results: dict[int, tuple[float, float, int]] = {}
    for n in (small, large):
        rss, secs = [], []
        rows = 0
        with c.SimServer(c.WorldSpec(requests=n)) as server:
            for i in range(runs):
                db = tmp / f"mem-{n}.db"
                c.remove_db(db)
                res = c.mirror_sync(server, db, max_concurrency=a.max_concurrency)
                rows = c.last_run(db)["rows"]
                rss.append(res.max_rss_mib)
                secs.append(res.seconds)
                print(
                    f"  {n:,}: run {i + 1}/{runs}: {rows} rows, peak RSS {res.max_rss_mib:.1f} MiB, "
                    f"{res.seconds:.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                c.remove_db(db)
        results[n] = (c.median(rss), c.median(secs), rows)
    s_rss, l_rss = results[small][0], results[large][0]
    growth = l_rss / s_rss - 1
    print(f"mirror: `{c.mirror_sync_cmd_text(a.max_concurrency)}`\n")
    print(
        c.table(
            ["figure", "value", "target", "result"],
            [
                [f"peak RSS, {results[small][2]:,} rows (MiB)", s_rss, "-", "-"],
                [
                    f"peak RSS, {results[large][2]:,} rows (MiB)",
                    l_rss,
                    f"<= {LIMIT_MIB:g}",
                    c.verdict(l_rss <= LIMIT_MIB),
                ],
                [
                    "growth from the small to the large backfill",
                    f"{growth:+.1%}",
                    f"<= {FLAT:+.0%}",
                    c.verdict(growth <= FLAT),
                ],
                [
                    f"wall time {small:,} / {large:,} (s)",
                    f"{results[small][1]:.1f} / {results[large][1]:.1f}",
                    "-",
                    "-",
                ],
            ],
        )
    )


if __name__ == "__main__":
    main()
