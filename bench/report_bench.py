"""`mirror report` on a big mirror: the time to write it and the file's size.

    python bench/report_bench.py                 # build (or reuse) $TMPDIR/mirror-query-1m.db
    python bench/report_bench.py --rows 100000   # a quick run on a smaller mirror

The mirror is query_bench's (`query_bench.build`: rows through the real write path, 30 days
of eight endpoints, payloads included), so both benchmarks share one file. Each timing is
the median of several runs of `mirror.report.write_report` (the whole command but click:
the queries, the page, the write), printed next to a baseline measured in the same run:
`stats --by endpoint,day` over the same range, the query layer's own answer that the
report's figures are made of. Targets: 1M requests, the whole 30 days per hour, in < 3 s and
< 6 MB (plotly.js inlined is most of it).
"""

from __future__ import annotations

import argparse
import tempfile
from datetime import timedelta
from pathlib import Path

from query_bench import DAYS, END, build, median_ms

from mirror import query, report
from mirror.db import reader_engine

TARGET_SECONDS = 3.0
TARGET_BYTES = 6_000_000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "mirror-query-1m.db")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the database first")
    args = ap.parse_args()
    db: Path = args.db
    if args.rows != 1_000_000 and db.name == "mirror-query-1m.db":
        db = db.with_name(f"mirror-query-{args.rows}.db")
    if args.rebuild or not db.exists():
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        print(f"building {db} with {args.rows:,} rows through Store.upsert …")
        print(f"  {build(db, args.rows):,.0f} rows/s")
    print(f"database: {db} ({db.stat().st_size / 2**20:,.0f} MiB, {args.rows:,} rows)")
    out = Path(tempfile.gettempdir()) / "mirror-report-bench.html"
    for label, span, by in (
        (f"the whole {DAYS} days per hour", timedelta(days=DAYS), "hour"),
        ("the last 7 days per hour (the default range)", timedelta(days=7), "hour"),
    ):
        since = END - span
        opts = report.ReportOptions(since=since, until=END, by=by)
        ms, done = median_ms(
            lambda o=opts: report.write_report(str(db), out, o, now=END), args.runs
        )
        engine = reader_engine(str(db))
        with engine.connect() as conn:
            filters = query.Filters(since=since, until=END, endpoints=report.every_endpoint(conn))
            base_ms, _ = median_ms(
                lambda c=conn, f=filters: query.stats(c, f, by=["endpoint", "day"]), args.runs
            )
        engine.dispose()
        print(f"\nreport of {label}: {done.requests:,} requests, {done.endpoints} endpoints")
        print(f"  written in median {ms / 1000:.2f} s (target < {TARGET_SECONDS:g} s); "
              f"{done.bytes / 1e6:.2f} MB (target < {TARGET_BYTES / 1e6:g} MB)")  # fmt: skip
        print(f"  baseline stats --by endpoint,day over the same range: {base_ms / 1000:.2f} s; "
              f"report/baseline {ms / base_ms:.2f}")  # fmt: skip
    out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
