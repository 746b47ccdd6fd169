"""Every page `mirror browse` offers, timed on a big mirror, beside the same page before the
rollups (schema revision 0010 and the Datasette metadata of that time), in one run.

    python bench/browse_bench.py                    # 1,000,000 requests (query_bench's mirror)
    python bench/browse_bench.py --rows 200000      # smaller
    python bench/browse_bench.py --grow-to 10000000 # then simulate 10M (see below) and time again

The mirror is built as ``bench/query_bench.py`` builds it (rows shaped like the API's items,
through ``Store.upsert``, batches of 10,000), at schema head, and reused from ``--db`` when it
exists. A copy taken back to revision 0010 (Alembic's downgrade drops what 0011 added) is
served the way `mirror browse` served it before: ``datasette serve`` with the metadata of
``BEFORE`` and the same settings. The mirror itself is served by a real `mirror browse`
process. Both run side by side and every page is loaded alternately from each, after one
warm-up load: each time is the median of ``--runs`` loads of the HTML page.

Each page is then checked through its JSON: HTTP 200, no error, no interrupted query
(Datasette reports a facet that ran out of time in ``facets_timed_out`` and a count that did
in a missing ``filtered_table_rows_count``; a canned query that did answers 400).

``--grow-to N`` simulates a bigger mirror: copies of the built mirror's rows, each shifted
14 days later with new ids, are written through ``Store.upsert`` until it holds N requests
(1M per two weeks, as a busy account), and the pages are timed on it (the old schema is not
built at that size: its pages already fail at 1M).
"""

from __future__ import annotations

import argparse
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common as c
import httpx
from query_bench import build

from mirror.records import Row
from mirror.store import Store

#: the last commit before the rollups: its mirror/datasette.yml is what "before" serves
BEFORE = "ccc80cf"
#: the schema revision before the rollups
BEFORE_REVISION = "0010"
#: the settings `mirror browse` gave Datasette then (and still does)
SETTINGS = ["--setting", "sql_time_limit_ms", "5000", "--setting", "facet_time_limit_ms", "1000"]
WORD = "lighthouse"  # in ~57% of the generated prompts
COPY_SHIFT_DAYS = 14
#: (label, path, whether the issue's target applies: the pages browse links to as they open)
PAGES = [
    ("instance", "/", True),
    ("database", "/{db}", True),
    ("requests (facets endpoint, status)", "/{db}/requests", True),
    ("request_log", "/{db}/request_log", True),
    (f"requests, search '{WORD}'", f"/{{db}}/requests?_search={WORD}", True),
    (f"request_log, search '{WORD}'", f"/{{db}}/request_log?_search={WORD}", True),
    ("requests, + date facet ended_at",
     "/{db}/requests?_facet=endpoint_id&_facet=status&_facet_date=ended_at", True),
    ("requests, next page", "{next}", True),
    ("canned: failed requests", "/{db}/failed_requests", True),
    ("canned: slowest requests", "/{db}/slowest_requests", True),
    ("canned: latency percentiles per hour", "/{db}/latency_percentiles_per_hour", True),
    ("canned: billable units per day", "/{db}/billable_units_per_day", True),
    ("canned: prompt failures (form)", "/{db}/prompt_failures", True),
    ("canned: spend per day", "/{db}/spend_per_day", True),
    ("canned: most expensive requests", "/{db}/most_expensive_requests", True),
    ("request_costs", "/{db}/request_costs", True),
    ("hourly_summary", "/{db}/hourly_summary", True),
    ("daily_summary", "/{db}/daily_summary", True),
    ("daily_usage", "/{db}/daily_usage", True),
    ("sync_runs", "/{db}/sync_runs", True),
    (f"(filled in) prompt failures '{WORD}'", f"/{{db}}/prompt_failures?words={WORD}", False),
    ("(filled in) failed requests, all of history",
     "/{db}/failed_requests?since=2000-01-01&until=2100-01-01", False),
]  # fmt: skip


class Server:
    """A Datasette process on a free loopback port, stopped on exit."""

    def __init__(self, cmd: list[str], name: str, log: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [*cmd, "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT
            )
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.client.get("/-/versions.json").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                sys.exit(f"{name}: Datasette did not start")
            time.sleep(0.2)

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(30)

    def load(self, path: str) -> tuple[float, int]:
        t0 = time.perf_counter()
        try:
            r = self.client.get(path)
        except httpx.TransportError as e:
            tail = self.log.read_text(errors="replace")[-2000:]
            sys.exit(f"{self.name}: {path}: {e} (exit code {self.proc.poll()}); its log:\n{tail}")
        return time.perf_counter() - t0, r.status_code

    def problems(self, path: str) -> tuple[str, str]:
        """What is wrong with a page, and what else to know, read from its JSON."""
        base, _, query = path.partition("?")
        if base.count("/") < 2:
            return "", ""  # the instance and database pages: no query of their own
        html = self.client.get(path).text
        # (Datasette 0.65 says which facets ran out of time on the page only, not in JSON)
        late = 'class="facets-timed-out"' in html
        r = self.client.get(f"{base}.json" + (f"?{query}" if query else ""))
        if r.status_code != 200:
            error = re.sub(r"<[^>]+>", "", str(r.json().get("error", "")))
            return f"HTTP {r.status_code}: {' '.join(error.split())[:70]}", ""
        data = r.json()
        out, notes = [], []
        if data.get("error"):
            out.append(str(data["error"])[:70])
        if late:
            out.append("facets timed out")
        if "filtered_table_rows_count" in data and data["filtered_table_rows_count"] is None:
            if "not counted" in (data.get("human_description_en") or ""):
                notes.append("big search: not counted or faceted, by design")
            else:
                out.append("count interrupted")
        return "; ".join(out), "; ".join(notes)


def old_metadata(db_name: str, tmp: Path) -> Path:
    """The metadata `mirror browse` served at ``BEFORE``, as it passed it to Datasette."""
    import json

    import yaml

    try:
        text = subprocess.run(
            ["git", "show", f"{BEFORE}:mirror/datasette.yml"], capture_output=True, text=True,
            check=True, cwd=c.REPO,
        ).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as e:
        sys.exit(f"cannot read mirror/datasette.yml at {BEFORE} (a git clone is needed): {e}")
    meta = yaml.safe_load(text)
    meta["databases"] = {db_name: meta["databases"]["mirror"]}
    path = tmp / "before-metadata.json"
    path.write_text(json.dumps(meta), encoding="utf-8")
    return path


def before_copy(db: Path, tmp: Path) -> Path:
    """A copy of the mirror at `BEFORE_REVISION`, named like it (Datasette names it by its
    file)."""
    from alembic import command

    from mirror.db import alembic_config, make_engine

    out = tmp / "before" / db.name
    out.parent.mkdir(exist_ok=True)
    if not out.exists():
        print(f"copying {db} to {out} and taking it back to revision {BEFORE_REVISION} …",
              file=sys.stderr)  # fmt: skip
        shutil.copyfile(db, out)
        engine = make_engine(str(out))
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), BEFORE_REVISION)
        engine.dispose()
    return out


def grow(db: Path, target: int) -> None:
    """Copies of the first rows, each 14 days later with new ids, through Store.upsert."""
    import sqlite3

    from mirror.timeparse import to_text

    store = Store.open(str(db))
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    have = con.execute("SELECT count(*) FROM requests").fetchone()[0]
    base = con.execute("SELECT max(rowid) FROM requests WHERE request_id NOT LIKE 'z%'").fetchone()[
        0
    ]
    shift = "strftime('%Y-%m-%dT%H:%M:%S', {c}, '+{d} days') || substr({c}, 20)"
    copy = 0
    t0 = time.perf_counter()
    try:
        while have < target:
            copy += 1
            d = copy * COPY_SHIFT_DAYS
            ids = f"'z{copy:02d}' || substr(request_id, 4)"
            sql = (
                f"SELECT {ids}, endpoint_id, runner_id, {shift.format(c='sent_at', d=d)}, "
                f"{shift.format(c='started_at', d=d)}, "
                f"CASE WHEN ended_at IS NOT NULL THEN {shift.format(c='ended_at', d=d)} END, "
                "status_code, duration, billable_units, json_input, json_output, status "
                "FROM requests WHERE rowid > ? AND rowid <= ? ORDER BY rowid"
            )
            for lo in range(0, base, 10_000):
                if have >= target:
                    break
                found = con.execute(sql, (lo, min(lo + 10_000, base, lo + target - have)))
                rows = [Row(*r) for r in found]
                with store.engine.begin() as conn:
                    have += store.upsert(conn, rows, payloads=True, billing=True,
                                         now=to_text(datetime.now(UTC))).inserted  # fmt: skip
                print(f"\r  {have:,} rows ({time.perf_counter() - t0:.0f}s)", end="",
                      file=sys.stderr, flush=True)  # fmt: skip
        store.checkpoint()
    finally:
        con.close()
        store.close()
    print(file=sys.stderr)


def time_pages(servers: list[Server], db_name: str, runs: int) -> dict[str, list[Any]]:
    """Per page: (median seconds, status, problems) from each server, loads interleaved."""
    out: dict[str, list[Any]] = {}
    # the second page's link, as the first page gives it (the same rows on both sides)
    first = servers[-1].client.get(f"/{db_name}/requests.json").json()
    second = "/" + first["next_url"].split("/", 3)[3].replace(".json", "", 1)
    for label, template, _ in PAGES:
        path = template.format(db=db_name, next=second)
        times: list[list[float]] = [[] for _ in servers]
        status = [0] * len(servers)
        for s in servers:
            s.load(path)  # warm-up
        for _ in range(runs):
            for i, s in enumerate(servers):
                t, status[i] = s.load(path)
                times[i].append(t)
        out[label] = [(statistics.median(ts), st, *s.problems(path))
                      for ts, st, s in zip(times, status, servers, strict=True)]  # fmt: skip
        cells = "  ".join(f"{s.name} {m * 1000:,.0f} ms {st}" for s, (m, st, *_) in
                          zip(servers, out[label], strict=True))  # fmt: skip
        print(f"  {label}: {cells}", file=sys.stderr, flush=True)
    return out


def report(title: str, results: dict[str, list[Any]], names: list[str]) -> None:
    headers = ["page"]
    for n in names:
        headers += [f"{n} ms", f"{n}: status, problems (notes)"]
    if len(names) == 2:
        headers.append("before / now")
    rows = []
    for label, cells in results.items():
        row: list[Any] = [label]
        for m, st, problems, notes in cells:
            row += [f"{m * 1000:,.0f}", f"{st}" + (f", {problems}" if problems else "")
                    + (f" ({notes})" if notes else "")]  # fmt: skip
        if len(names) == 2:
            row.append(f"{cells[0][0] / cells[1][0]:.1f}x")
        rows.append(row)
    print(f"### {title}\n")
    print(c.table(headers, rows))
    target = {label for label, _, applies in PAGES if applies}
    now = [cells[-1] for label, cells in results.items() if label in target]
    slowest = max(m for m, *_ in now)
    clean = all(st == 200 and not p for _, st, p, _ in now)
    print(f"\nnow, pages as they open: slowest {slowest * 1000:,.0f} ms (target: < 1,000 ms at "
          f"1M, < 5,000 ms, Datasette's limit, at 10M); every one 200 with no error and no "
          f"query cut short: {'yes' if clean else 'NO'}\n")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    # query_bench's mirror: built once for both (outside the work tree: ~1.5 GB)
    ap.add_argument("--db", type=Path, default=Path(tempfile.gettempdir()) / "mirror-query-1m.db")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--rebuild", action="store_true", help="rebuild the mirror first")
    ap.add_argument("--grow-to", type=int, metavar="N", help="then simulate N requests and time")
    a = ap.parse_args()
    db: Path = a.db
    if a.rows != 1_000_000 and db.name == "mirror-query-1m.db":
        db = db.with_name(f"mirror-query-{a.rows}.db")
    tmp = Path(tempfile.mkdtemp(prefix="mirror-browse-bench-"))
    try:
        if a.rebuild or not db.exists():
            for suffix in ("", "-wal", "-shm", ".lock"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            print(f"building {db} with {a.rows:,} rows through Store.upsert …", file=sys.stderr)
            build(db, a.rows)
        Store.open(str(db)).close()  # at schema head before anything is timed
        c.header(
            "Browse: every page `mirror browse` links to",
            [f"mirror: {db} ({db.stat().st_size / 2**30:.1f} GiB), {a.runs} loads per page, "
             f"median; before: revision {BEFORE_REVISION} and the metadata of {BEFORE}"],
        )  # fmt: skip
        old = before_copy(db, tmp)
        now_cmd = [sys.executable, "-m", "mirror", "browse", "--db", str(db)]
        old_cmd = [sys.executable, "-m", "datasette", "serve", str(old), "--metadata",
                   str(old_metadata(db.stem, tmp)), "--host", "127.0.0.1", *SETTINGS]  # fmt: skip
        servers = [Server(old_cmd, "before", tmp / "before.log"),
                   Server(now_cmd, "now", tmp / "now.log")]  # fmt: skip
        try:
            results = time_pages(servers, db.stem, a.runs)
        finally:
            for s in servers:
                s.stop()
        report(f"{a.rows:,} requests", results, ["before", "now"])
        if a.grow_to:
            big = db.with_name(f"{db.stem}-grown-{a.grow_to}.db")
            if not big.exists():
                print(f"growing a copy of {db} to {a.grow_to:,} requests …", file=sys.stderr)
                shutil.copyfile(db, big)
                grow(big, a.grow_to)
            server = Server([sys.executable, "-m", "mirror", "browse", "--db", str(big)], "now",
                            tmp / "grown.log")  # fmt: skip
            try:
                results = time_pages([server], big.stem, a.runs)
            finally:
                server.stop()
            report(f"{a.grow_to:,} requests (simulated: copies shifted {COPY_SHIFT_DAYS} days)",
                   results, ["now"])  # fmt: skip
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
