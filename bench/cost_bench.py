"""Cost: billing-event ingest against raw sqlite3, a 1M-event backfill's memory, `mirror cost`'s speed.

    python bench/cost_bench.py                 # 200,000 events ingested, 1M backfilled, 1M+1M cost
    python bench/cost_bench.py --quick         # 50,000 / 100,000 / 100,000+100,000

1. **Ingest**: the same billing events (synthetic, in the table's column order, ids in random
   order) into a freshly migrated database, 10,000 per transaction, as the sync's pages
   come: ``Store.upsert_billing_events`` in ``engine.begin()`` (the sync's path) against raw
   ``sqlite3`` executemany of a plain ``INSERT … ON CONFLICT (request_id) DO UPDATE … WHERE``
   a value changed, ``BEGIN IMMEDIATE`` / ``COMMIT`` around each batch, the same PRAGMAs
   (``mirror.db.sqlite_on_connect``). New events/s, median of ``--runs``, interleaved.
   Target: mirror >= 50% of raw.
2. **Backfill memory**: a child process runs ``mirror.cost_sync.sync_cost`` (the sync's
   cost step: windows, the checked client, the store) against a small HTTP server in a
   second process that serves ``--events`` billing events spread over 100 days, 10,000 a
   page, generated as asked; its peak RSS (``VmHWM``) against the same child's peak after
   importing everything and opening (migrating) the store, the baseline. Target: <= 120 MiB.
3. **`mirror cost --by day,endpoint`** over a mirror of ``--requests`` model requests and
   ``--events`` billing events (70% of the requests billed, the rest estimated at two
   prices per endpoint, plus events of requests the mirror does not hold): ``mirror.cost.spend``
   in process, median of ``--runs`` after one warm-up, and the whole command
   (``python -m mirror cost``) once, against ``sqlite3``'s own ``GROUP BY`` of the billed
   part (the floor), run by turns with it. Target: < 1 s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import common as c

BATCH = 10_000
TARGET_RATIO = 0.5
TARGET_RSS_MIB = 120
TARGET_COST_S = 1.0
END = datetime(2026, 11, 28, tzinfo=UTC)
SPAN = timedelta(days=100)
MODELS = ("fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/whisper")
STAMP = "2026-11-28T12:00:00.000000Z"
COLS = ("request_id", "endpoint_id", "timestamp", "output_units", "unit_price",
        "percent_discount", "cost_subtotal", "cost_discount", "cost_total",
        "cost_estimate_nano_usd", "auth_method", "api_key_id", "login_username",
        "first_seen_at", "last_changed_at")  # fmt: skip
RAW_UPSERT = (
    f"INSERT INTO billing_events ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(f"{k} = excluded.{k}" for k in COLS[1:13])
    + ", last_changed_at = excluded.last_changed_at WHERE "
    + " OR ".join(f"billing_events.{k} IS NOT excluded.{k}" for k in COLS[1:13])
)


def _rid(i: int) -> str:
    h = f"{(i * 0x9E3779B97F4A7C15) & ((1 << 128) - 1):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _when(i: int, n: int) -> datetime:
    return END - SPAN + SPAN * (i / n)


def event(i: int, n: int, *, rid: str | None = None) -> tuple[Any, ...]:
    """The i-th of n billing events (``BILLING_EVENT_FIELDS`` order), spread over `SPAN`."""
    from mirror.timeparse import to_text

    units = 1 + i % 4
    nano = units * 25_000_000
    usd = nano / 1e9
    key = ("key-a", "key-b", None)[i % 3]
    return (rid or _rid(i), MODELS[i % 3], to_text(_when(i, n)), float(units), 0.025, None,
            usd, 0.0, usd, nano, "API Key" if key else "user", key,
            None if key else "alice")  # fmt: skip


# --------------------------------------------------------------------------- 1. ingest


def _template(tmp: Path) -> Path:
    from mirror.store import Store

    path = tmp / "template.db"
    Store.open(str(path)).close()
    return path


def _mirror_ingest(path: Path, events: list[tuple[Any, ...]]) -> float:
    from mirror.store import Store

    store = Store.open(str(path))
    try:
        t0 = time.perf_counter()
        for k in range(0, len(events), BATCH):
            with store.engine.begin() as conn:
                store.upsert_billing_events(conn, events[k : k + BATCH], now=STAMP)
        return len(events) / (time.perf_counter() - t0)
    finally:
        store.close()


def _raw_ingest(path: Path, events: list[tuple[Any, ...]]) -> float:
    from mirror.db import sqlite_on_connect

    con = sqlite3.connect(path, isolation_level=None)
    sqlite_on_connect(con, None)
    try:
        rows = [(*e, STAMP, STAMP) for e in events]  # the stamps are part of the row
        t0 = time.perf_counter()
        for k in range(0, len(rows), BATCH):
            con.execute("BEGIN IMMEDIATE")
            con.executemany(RAW_UPSERT, rows[k : k + BATCH])
            con.execute("COMMIT")
        return len(rows) / (time.perf_counter() - t0)
    finally:
        con.close()


def bench_ingest(n: int, runs: int) -> None:
    order = list(range(n))
    random.Random(1).shuffle(order)  # pages do not come in key order
    events = [event(i, n) for i in order]
    rates: dict[str, list[float]] = {"mirror": [], "raw": []}
    with tempfile.TemporaryDirectory() as d:
        template = _template(Path(d))
        for _ in range(runs):
            for name, fn in (("raw", _raw_ingest), ("mirror", _mirror_ingest)):
                path = Path(d) / f"{name}.db"
                for suffix in ("", "-wal", "-shm"):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
                shutil.copy(template, path)
                rates[name].append(fn(path, events))
    raw, mine = statistics.median(rates["raw"]), statistics.median(rates["mirror"])
    print(f"1. billing-event ingest, {n:,} new events, batches of {BATCH:,}, median of {runs}:")
    print(f"   raw sqlite3 executemany       {raw:>10,.0f} events/s")
    print(f"   Store.upsert_billing_events   {mine:>10,.0f} events/s  {mine / raw:.2f} of raw "
          f"(target >= {TARGET_RATIO:.2f}: {'met' if mine / raw >= TARGET_RATIO else 'MISSED'})")  # fmt: skip


# --------------------------------------------------------------------------- 2. backfill memory


class _Events(BaseHTTPRequestHandler):
    """``/models/billing-events`` over ``n`` events spread over `SPAN` (cursor: an offset
    into the window's events), empty ``/models/pricing`` and ``/models/usage``."""

    n = 0

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = parse_qs(url.query)
        if url.path.endswith("/models/pricing"):
            body: dict[str, Any] = {"prices": [], "next_cursor": None, "has_more": False}
        elif url.path.endswith("/models/usage"):
            body = {"time_series": [], "next_cursor": None, "has_more": False}
        else:
            n = self.n
            lo_t = datetime.fromisoformat(q["start"][0])
            hi_t = datetime.fromisoformat(q["end"][0])
            first = max(0, math.ceil((lo_t - END + SPAN) / SPAN * n))
            last = min(n, math.ceil((hi_t - END + SPAN) / SPAN * n))
            offset = int(q.get("cursor", ["0"])[0])
            limit = int(q["limit"][0])
            ids = range(first + offset, min(last, first + offset + limit))
            items = []
            for i in ids:
                e = event(i, n)
                items.append({
                    "request_id": e[0], "endpoint_id": e[1], "timestamp": e[2],
                    "output_units": e[3], "unit_price": e[4], "percent_discount": None,
                    "cost_subtotal": e[6], "cost_discount": 0, "cost_total": e[8],
                    "cost_estimate_nano_usd": e[9], "auth_method": e[10],
                    "auth_method_structured": {"detail": e[10], "api_key_id": e[11],
                                               "login_username": e[12]},
                })  # fmt: skip
            more = first + offset + limit < last
            body = {"billing_events": items, "has_more": more,
                    "next_cursor": str(offset + limit) if more else None}  # fmt: skip
        raw = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


def serve(n: int) -> None:
    _Events.n = n
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Events)
    print(json.dumps({"base_url": f"http://127.0.0.1:{server.server_port}/v1"}), flush=True)
    server.serve_forever()


def _rss_mib() -> float:
    """This process's peak RSS: ``VmHWM``, which starts afresh at ``exec`` (``ru_maxrss``
    keeps the forking parent's peak across it, the bench's own here)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def backfill(base_url: str, db: str) -> None:
    """The child: import, open, note the baseline RSS, then the cost step over 100 days."""
    from mirror.api import FalClient, make_http_client
    from mirror.cost_sync import sync_cost_now
    from mirror.pacing import Pacer
    from mirror.store import Store

    store = Store.open(db)
    base = _rss_mib()
    t0 = time.perf_counter()
    with make_http_client(env={}) as http:
        client = FalClient(http, c.KEY, base_url=base_url, pacer=Pacer(1))
        report = sync_cost_now(store, client, now=END, default_from=END - SPAN, note=print)
    seconds = time.perf_counter() - t0
    store.close()
    print(json.dumps({"base": base, "peak": _rss_mib(), "events": report.events_new,
                      "pages": report.pages, "seconds": seconds}))  # fmt: skip


def bench_backfill(n: int) -> None:
    server = subprocess.Popen([c.PY, __file__, "serve", str(n)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = json.loads(server.stdout.readline())["base_url"]
        with tempfile.TemporaryDirectory() as d:
            out = subprocess.run(
                [c.PY, __file__, "backfill", base_url, str(Path(d) / "b.db")],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
        got = json.loads(out.stdout.splitlines()[-1])
    finally:
        server.terminate()
        server.wait()
    assert got["events"] == n, f"the backfill stored {got['events']} of {n} events"
    print(
        f"2. backfill of {n:,} billing events over 100 days ({got['pages']} pages, "
        f"{got['seconds']:.0f}s, {n / got['seconds']:,.0f} events/s over HTTP):"
    )
    print(f"   peak RSS {got['peak']:.0f} MiB; after imports and opening the store "
          f"{got['base']:.0f} MiB; the backfill added {got['peak'] - got['base']:.0f} MiB "
          f"(target <= {TARGET_RSS_MIB} MiB: {'met' if got['peak'] <= TARGET_RSS_MIB else 'MISSED'})")  # fmt: skip


# --------------------------------------------------------------------------- 3. mirror cost


def _requests(n: int) -> Iterator[tuple[Any, ...]]:
    from mirror.records import Row, derive_status
    from mirror.timeparse import to_text

    for i in range(n):
        ended = _when(i, n)
        sent = ended - timedelta(seconds=3)
        code = 500 if i % 50 == 0 else 200
        row = (_rid(i), MODELS[i % 3], None, to_text(sent), to_text(sent), to_text(ended),
               code, 3.0, None, None, None)  # fmt: skip
        yield Row(*row, derive_status(row[5], row[6]))


def build_cost_db(path: Path, n_requests: int, n_events: int) -> None:
    from mirror.store import Store

    store = Store.open(str(path))
    try:
        batch: list[Any] = []
        for row in _requests(n_requests):
            batch.append(row)
            if len(batch) == BATCH:
                with store.engine.begin() as conn:
                    store.upsert(conn, batch, payloads=False, billing=False, now=STAMP)
                batch = []
        if batch:
            with store.engine.begin() as conn:
                store.upsert(conn, batch, payloads=False, billing=False, now=STAMP)
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE requests SET history = 'model'")
        billed = int(n_requests * 0.7)
        events = [event(i, n_requests) for i in range(billed)]
        events += [event(i, n_events - billed, rid=f"unheld-{i}") for i in range(n_events - billed)]
        for k in range(0, len(events), BATCH):
            with store.engine.begin() as conn:
                store.upsert_billing_events(conn, events[k : k + BATCH], now=STAMP)
        with store.engine.begin() as conn:
            for m in MODELS:
                store.record_prices(
                    conn, [(m, "image", 0.025, "USD")], "2026-08-01T00:00:00.000000Z"
                )
                store.record_prices(
                    conn, [(m, "image", 0.03, "USD")], "2026-10-01T00:00:00.000000Z"
                )
        store.checkpoint()
    finally:
        store.close()


def bench_cost(path: Path, n_requests: int, n_events: int, runs: int, rebuild: bool) -> None:
    from mirror.cost import CostFilters, spend
    from mirror.db import reader_engine

    if rebuild or not path.exists():
        for suffix in ("", "-wal", "-shm", ".lock"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        print(f"   building {path}: {n_requests:,} requests, {n_events:,} billing events …",
              file=sys.stderr)  # fmt: skip
        build_cost_db(path, n_requests, n_events)
    engine = reader_engine(str(path))
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    times, floor = [], []
    try:
        with engine.connect() as conn:
            rows = spend(conn, CostFilters(), by=("day", "endpoint"))
            # interleaved, so that the load of a shared machine weighs on both alike
            for _ in range(runs):
                t0 = time.perf_counter()
                rows = spend(conn, CostFilters(), by=("day", "endpoint"))
                times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                con.execute("SELECT substr(timestamp, 1, 10), endpoint_id, count(*), "
                            "sum(cost_estimate_nano_usd) FROM billing_events GROUP BY 1, 2"
                            ).fetchall()  # fmt: skip
                floor.append(time.perf_counter() - t0)
    finally:
        engine.dispose()
        con.close()
    t0 = time.perf_counter()
    subprocess.run([c.PY, "-m", "mirror", "cost", "--db", str(path), "--by", "day,endpoint",
                    "-f", "csv"], check=True, capture_output=True, cwd=c.REPO)  # fmt: skip
    whole = time.perf_counter() - t0
    med = statistics.median(times)
    print(
        f"3. mirror cost --by day,endpoint over {n_requests:,} requests and {n_events:,} "
        f"billing events ({len(rows)} groups), median of {runs}:"
    )
    print(
        f"   mirror.cost.spend             {med * 1000:>8.0f} ms  "
        f"(target < {TARGET_COST_S:.0f} s: {'met' if med < TARGET_COST_S else 'MISSED'})"
    )
    print(
        f"   sqlite3 GROUP BY, billed only {statistics.median(floor) * 1000:>8.0f} ms  "
        f"(the floor; spend is {med / statistics.median(floor):.1f}x it)"
    )
    print(f"   the whole command, once       {whole * 1000:>8.0f} ms  (python start and imports included)")  # fmt: skip


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "backfill":
        backfill(sys.argv[2], sys.argv[3])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--db", type=Path, default=None, help="the cost database (kept between runs)")
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--only", choices=("ingest", "backfill", "cost"))
    args = ap.parse_args()
    ingest, events, requests = (
        (50_000, 100_000, 100_000) if args.quick else (200_000, 1_000_000, 1_000_000)
    )
    db = args.db or Path(tempfile.gettempdir()) / f"mirror-cost-{requests}.db"
    print(c.command_line())
    if args.only in (None, "ingest"):
        bench_ingest(ingest, args.runs)
    if args.only in (None, "backfill"):
        bench_backfill(events)
    if args.only in (None, "cost"):
        bench_cost(db, requests, events, args.runs, args.rebuild)


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    main()
