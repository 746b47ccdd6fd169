"""Query-side benchmark: the filtered query and `stats --by endpoint,day` on 1,000,000 rows.

    python bench/query_bench.py                 # build (or reuse) $TMPDIR/mirror-query-1m.db, time
    python bench/query_bench.py --rows 200000   # smaller
    python bench/query_bench.py --ingest 200000 # what 0002's indexes and triggers cost the sync

The database is built through the real write path (`Store.open` migrates, `Store.upsert` in
batches of 10,000, one transaction each), with rows shaped like the API's items, payloads
included. Each timing is the median of several runs, and each is printed next to a baseline
measured in the same run (the same question answered without the indexes), because this
machine is noisy: trust the ratios more than the absolute figures.
Targets: filtered query < 50 ms, stats < 1.5 s.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from mirror.records import API_FIELDS, Row, derive_status
from mirror.store import Store
from mirror.timeparse import to_text

END = datetime(2026, 11, 28, tzinfo=UTC)
DAYS = 30
ENDPOINTS = (
    "acme/flux-lora",
    "acme/flux-lora/edit",
    "acme/upscaler",
    "acme/whisper-v3",
    "beta/sdxl",
    "beta/sdxl/inpaint",
    "gamma/tts",
    "gamma/video-gen",
)
WORDS = [
    "lighthouse",
    "harbor",
    "dusk",
    "portrait",
    "cinematic",
    "neon",
    "forest",
    "misty",
    "castle",
    "dragon",
    "ocean",
    "sunset",
    "city",
    "rain",
    "robot",
    "garden",
    "winter",
    "golden",
    "watercolor",
    "studio",
    "macro",
    "desert",
]
BATCH = 10_000


def make_rows(n: int, *, seed: int = 7, start: int = 0) -> Iterator[Row]:
    """Rows as the sync hands them to the upsert."""
    rnd = random.Random(seed * 1_000_003 + start)
    span = DAYS * 86400
    for _i in range(start, start + n):
        ep = ENDPOINTS[rnd.randrange(len(ENDPOINTS))]
        sent = END - timedelta(seconds=rnd.random() * span)
        r = rnd.random()
        duration = round(rnd.lognormvariate(1.0, 0.8), 6)
        started = sent + timedelta(seconds=rnd.random() * 2)
        ended: datetime | None = started + timedelta(seconds=duration)
        code: int | None = 200
        if r < 0.01:
            ended, code, duration = None, None, None  # type: ignore[assignment]
        elif r < 0.04:
            code = rnd.choice((400, 404, 422))
        elif r < 0.06:
            code = rnd.choice((500, 503, 504))
        prompt = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 30)))
        json_input = orjson.dumps(
            {"prompt": prompt, "seed": rnd.randrange(10**9), "image_size": "landscape_4_3",
             "num_inference_steps": 28, "guidance_scale": 3.5, "enable_safety_checker": True}
        ).decode()  # fmt: skip
        json_output = (
            orjson.dumps(
                {"images": [{"url": f"https://v3.fal.media/files/{rnd.getrandbits(64):016x}/"
                             f"{rnd.getrandbits(96):024x}.png", "width": 1024, "height": 768,
                             "content_type": "image/png"}],
                 "timings": {"inference": duration}, "seed": rnd.randrange(10**9),
                 "has_nsfw_concepts": [False], "prompt": prompt}
            ).decode()
            if code == 200
            else None
        )  # fmt: skip
        billable = round(rnd.random() * 4, 3) if ended is not None and rnd.random() < 0.9 else None
        rid = f"{rnd.getrandbits(128):032x}"
        rid = f"{rid[:8]}-{rid[8:12]}-{rid[12:16]}-{rid[16:20]}-{rid[20:]}"
        row = (
            rid, ep, f"runner-{rnd.randrange(64)}", to_text(sent), to_text(started),
            to_text(ended) if ended else None, code, duration, billable, json_input, json_output,
        )  # fmt: skip
        yield Row(*row, derive_status(row[5], row[6]))


def build(path: Path, rows: int, *, seed: int = 7) -> float:
    """Fill a fresh database through Store.upsert; returns rows/s."""
    store = Store.open(str(path))
    t0 = time.perf_counter()
    try:
        batch: list[tuple[Any, ...]] = []
        now = to_text(END)
        for n, row in enumerate(make_rows(rows, seed=seed), 1):
            batch.append(row)
            if len(batch) == BATCH:
                with store.engine.begin() as conn:
                    store.upsert(conn, batch, payloads=True, billing=True, now=now)
                batch = []
                elapsed = time.perf_counter() - t0
                print(f"\r  {n:,} rows in {elapsed:.0f}s", end="", file=sys.stderr, flush=True)
        if batch:
            with store.engine.begin() as conn:
                store.upsert(conn, batch, payloads=True, billing=True, now=now)
        store.checkpoint()
    finally:
        store.close()
    print(file=sys.stderr)
    return rows / (time.perf_counter() - t0)


def median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    fn()  # warm the page cache: every run after this one is measured alike
    times = []
    out = None
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def plan(con: sqlite3.Connection, sql: str, params: Any) -> str:
    return "; ".join(r[3] for r in con.execute(f"EXPLAIN QUERY PLAN {sql}", params))


def bench_queries(path: Path, runs: int) -> None:
    import sqlalchemy as sa

    from mirror import query
    from mirror.db import reader_engine

    engine = reader_engine(str(path))
    raw = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    day = (END - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)
    f = query.Filters(
        endpoints=("acme/upscaler",), statuses=("error",), since=day, until=day + timedelta(days=1)
    )
    with engine.connect() as conn:
        n = conn.execute(sa.text("SELECT count(*) FROM requests")).scalar_one()
        print(f"database: {path} ({n:,} rows, {path.stat().st_size / 2**20:,.0f} MiB)")

        stmt = query.listing_statement(conn, f, columns=query.DEFAULT_COLUMNS, limit=1000)
        sql, params = query.statement_sql(conn, stmt)
        print("\nfiltered query: endpoint + status + one day")
        print(f"  plan: {plan(raw, sql, params)}")
        q_ms, rows = median_ms(
            lambda: list(query.select_requests(conn, f, columns=query.DEFAULT_COLUMNS, limit=1000)),
            runs,
        )
        base_sql = sql.replace("FROM requests", "FROM requests NOT INDEXED", 1)
        b_ms, brows = median_ms(lambda: raw.execute(base_sql, params).fetchall(), max(3, runs // 3))
        assert len(rows) == len(brows), (len(rows), len(brows))
        print(f"  {len(rows)} rows: median {q_ms:.2f} ms (target < 50 ms); "
              f"without indexes (NOT INDEXED) {b_ms:.1f} ms: {b_ms / q_ms:.0f}x")  # fmt: skip

        print("\nstats --by endpoint,day over all rows (p50/p90/p95/p99, max, rates, units)")
        by = ("endpoint", "day")
        every = query.Filters()
        print(f"  summary path: counts from summary_hourly; durations: "
              f"{plan(raw, *query.statement_sql(conn, query.durations_statement(every, by, None)))}")  # fmt: skip
        s_ms, groups = median_ms(lambda: query.stats(conn, every, by=by), runs)
        print(f"  {len(groups)} groups: median {s_ms:.0f} ms (target < 1500 ms)")
        base = (
            "SELECT endpoint_id, substr(ended_at, 1, 10) AS day, count(*), sum(billable_units), "
            "max(duration) FROM requests NOT INDEXED GROUP BY 1, 2"
        )
        b_ms, _ = median_ms(lambda: raw.execute(base).fetchall(), max(3, runs // 3))
        print(f"  baseline (a table scan with GROUP BY, no percentiles): {b_ms:.0f} ms; "
              f"stats/baseline {s_ms / b_ms:.2f}")  # fmt: skip
        # the same question with a filter the summary cannot answer (a duration bound):
        # every row's keys, status, duration and units come from the covering index
        rows_f = query.Filters(min_duration=0.0)
        print(f"  row path (--min-duration 0): "
              f"{plan(raw, *query.statement_sql(conn, query.stats_statement(rows_f, by, 'sqlite')))}")  # fmt: skip
        r_ms, _ = median_ms(lambda: query.stats(conn, rows_f, by=by), max(3, runs // 2))
        print(f"  median {r_ms:.0f} ms; summary path is {r_ms / s_ms:.1f}x faster")
    raw.close()
    engine.dispose()


# --------------------------------------------------------------------------- ingest cost


def _raw_baseline(path: Path, rows: list[tuple[Any, ...]]) -> float:
    """The baseline: a raw sqlite3 executemany upsert, committing every 10,000 rows."""
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.execute(
        "CREATE TABLE requests (request_id TEXT PRIMARY KEY, endpoint_id TEXT NOT NULL, "
        "runner_id TEXT, sent_at TEXT NOT NULL, started_at TEXT, ended_at TEXT, "
        "status_code INTEGER, duration REAL, billable_units REAL, json_input TEXT, "
        "json_output TEXT, status TEXT NOT NULL, first_seen_at TEXT NOT NULL, "
        "last_changed_at TEXT NOT NULL)"
    )
    cols = (*API_FIELDS, "status", "first_seen_at", "last_changed_at")
    sql = (
        f"INSERT INTO requests ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
        "ON CONFLICT (request_id) DO UPDATE SET ended_at = excluded.ended_at"
    )
    t0 = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        con.executemany(sql, [(*r, "x", "x") for r in rows[i : i + BATCH]])
        con.commit()
    con.close()
    return len(rows) / (time.perf_counter() - t0)


def _store_rate(path: Path, rows: list[tuple[Any, ...]], revision: str, drop: list[str]) -> float:
    from alembic import command

    from mirror.db import alembic_config, make_engine

    engine = make_engine(str(path))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
        for stmt in drop:
            conn.exec_driver_sql(stmt)
    engine.dispose()
    store = Store(make_engine(str(path)), str(path))
    t0 = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        with store.engine.begin() as conn:
            store.upsert(conn, rows[i : i + BATCH], payloads=True, billing=True, now="x")
    rate = len(rows) / (time.perf_counter() - t0)
    store.close()
    return rate


def _raw_on_schema(path: Path, rows: list[tuple[Any, ...]], revision: str) -> float:
    """Store.upsert's own SQL through raw sqlite3 executemany, on a migrated schema."""
    from alembic import command

    from mirror.db import alembic_config, make_engine

    engine = make_engine(str(path))
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    engine.dispose()
    sql = Store(make_engine(str(path)), str(path))._upsert_statement(True, True)
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=NORMAL")
    t0 = time.perf_counter()
    for i in range(0, len(rows), BATCH):
        con.executemany(sql, [(*r, "x", "x") for r in rows[i : i + BATCH]])
        con.commit()
    con.close()
    return len(rows) / (time.perf_counter() - t0)


def bench_ingest(n: int, repeats: int) -> None:
    rows = list(make_rows(n, seed=11))
    fts = ["DROP TRIGGER requests_fts_ai", "DROP TRIGGER requests_fts_au",
           "DROP TRIGGER requests_fts_ad"]  # fmt: skip
    summ = ["DROP TRIGGER requests_summary_ai", "DROP TRIGGER requests_summary_au",
            "DROP TRIGGER requests_summary_ad"]  # fmt: skip
    idx = ["DROP INDEX ix_requests_status_ended", "DROP INDEX ix_requests_sent_at"]
    variants: list[tuple[str, Callable[[Path], float]]] = [
        ("raw sqlite3 executemany (baseline)", lambda p: _raw_baseline(p, rows)),
        ("Store.upsert, schema 0001", lambda p: _store_rate(p, rows, "0001", [])),
        ("raw executemany of the upsert SQL, schema 0001", lambda p: _raw_on_schema(p, rows, "0001")),
        ("raw executemany of the upsert SQL, schema 0002", lambda p: _raw_on_schema(p, rows, "0002")),
        ("Store.upsert, 0002 indexes only", lambda p: _store_rate(p, rows, "0002", fts + summ)),
        ("Store.upsert, 0002 indexes + summary triggers",
         lambda p: _store_rate(p, rows, "0002", fts)),
        ("Store.upsert, 0002 indexes + FTS triggers", lambda p: _store_rate(p, rows, "0002", summ)),
        ("Store.upsert, 0002 complete", lambda p: _store_rate(p, rows, "0002", [])),
        ("Store.upsert, 0002 complete (wider index kept, no new indexes)",
         lambda p: _store_rate(p, rows, "0002", idx)),
    ]  # fmt: skip
    results: dict[str, list[float]] = {name: [] for name, _ in variants}
    for _ in range(repeats):
        for name, fn in variants:  # interleaved, so drift of the machine hits every variant
            with tempfile.TemporaryDirectory() as d:
                results[name].append(fn(Path(d) / "ingest.db"))
    raw = statistics.median(results[variants[0][0]])
    base = statistics.median(results["Store.upsert, schema 0001"])
    print(f"ingest of {n:,} new rows with payloads, batches of {BATCH:,}, median of {repeats}:")
    for name, _ in variants:
        rate = statistics.median(results[name])
        print(f"  {name:<64} {rate:>9,.0f} rows/s  {rate / raw:5.2f} of raw  "
              f"{rate / base:5.2f} of 0001")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    # outside the work tree: the database is ~1 GB and must never be committed
    ap.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "mirror-query-1m.db")
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the database first")
    ap.add_argument("--ingest", type=int, metavar="N", help="measure ingest cost on N rows instead")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.ingest:
        bench_ingest(args.ingest, args.repeats)
        return
    db: Path = args.db
    if args.rows != 1_000_000 and db.name == "mirror-query-1m.db":
        db = db.with_name(f"mirror-query-{args.rows}.db")
    if args.rebuild or not db.exists():
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        print(f"building {db} with {args.rows:,} rows through Store.upsert …")
        rate = build(db, args.rows)
        print(f"  {rate:,.0f} rows/s")
    bench_queries(db, args.runs)


if __name__ == "__main__":
    main()
