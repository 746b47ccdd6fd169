"""Ingest speed: mirror's write path against raw ``sqlite3`` executemany, same rows, same schema.

    python bench/ingest_bench.py            # 200,000 rows
    python bench/ingest_bench.py --quick    # 50,000 rows
    python bench/ingest_bench.py --no-costs # skip the per-index/trigger cost table

Rows come from the simulated API's own pages (payloads and billing expanded), decoded by
``mirror.records.parse_page``: exactly the rows the sync hands to the store. No HTTP, no latency.
Every run starts from a copy of one freshly migrated database (``Store.open``: every Alembic
revision present, so the same indexes and triggers on both sides) and commits every 10,000
rows, as the sync's writer does.

- mirror: ``Store.upsert`` in ``engine.begin()``, the sync's writer path (SQLAlchemy Core
  ``exec_driver_sql``, multi-row statements, honest inserted/updated counts);
- raw: ``sqlite3`` executemany of a plain ``INSERT … ON CONFLICT(request_id) DO UPDATE …
  WHERE`` a value changed, the same PRAGMAs (``mirror.db.sqlite_on_connect``),
  ``BEGIN IMMEDIATE`` / ``COMMIT`` around each batch.

Figures: new rows/s and unchanged-resync rows/s (median of ``--runs``), their ratio, raw
sqlite3 with the same multi-row statements as mirror (info), and the decoding rate (page
bytes -> row tuples). Then what the storage choices gained, the same ingest on a copy
that lacks one: 16 KiB pages (a 4 KiB file, as earlier mirrors created), migration 0005's
per-batch indexing (downgraded to 0004's row-by-row insert triggers), 0004's FTS5 settings
(downgraded to 0003). Then what each index and trigger set costs, dropped one at a time
from revision 0004, where the triggers do all the indexing and summarizing.
Target: mirror >= 50% of raw on new rows.
"""

from __future__ import annotations

import shutil
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common as c
import orjson

BATCH = 10_000
#: the revision whose triggers alone keep the index and the summary (0005 batches inserts)
ROW_BY_ROW = "0004"
TARGET = 0.5
STAMP = "2026-11-28T12:00:00.000000Z"

_ALWAYS = ("endpoint_id", "runner_id", "sent_at", "started_at", "ended_at", "status_code",
           "duration", "status")  # fmt: skip
_KEPT = ("json_input", "json_output", "billable_units")
_COLS = ("request_id", "endpoint_id", "runner_id", "sent_at", "started_at", "ended_at",
         "status_code", "duration", "billable_units", "json_input", "json_output", "status",
         "first_seen_at", "last_changed_at")  # fmt: skip
#: the baseline's statement: a plain upsert that updates a row only when a value changed
RAW_UPSERT = (
    f"INSERT INTO requests ({', '.join(_COLS)}) VALUES ({', '.join('?' * len(_COLS))}) "
    "ON CONFLICT (request_id) DO UPDATE SET "
    + ", ".join(
        [f"{k} = excluded.{k}" for k in _ALWAYS]
        + [f"{k} = COALESCE(excluded.{k}, requests.{k})" for k in _KEPT]
        + ["last_changed_at = excluded.last_changed_at"]
    )
    + " WHERE "
    + " OR ".join(
        [f"requests.{k} IS NOT excluded.{k}" for k in _ALWAYS]
        + [f"(excluded.{k} IS NOT NULL AND requests.{k} IS NOT excluded.{k})" for k in _KEPT]
    )
)


def page_bodies(n: int) -> list[bytes]:
    """The simulated API's pages (as sent over HTTP) holding about ``n`` requests."""
    from mirror.simulator import Query
    from mirror.simulator.server import BODY_OPTIONS, encode_cursor
    from mirror.simulator.world import FULL_VIEW

    spec = c.WorldSpec(requests=n)
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    world = c.build_world(spec, now)
    since, until = c.world_window(spec, now)
    bodies = []
    for t in c.TARGETS:
        q = Query(endpoint_ids=(t,), start=since, end=until)
        offset, more, k = 0, True, 1
        while more:
            items, more = world.page(q, offset=offset, limit=100, view=FULL_VIEW, now=now)
            cursor = encode_cursor(k + 1) if more else None
            body = {"items": items, "next_cursor": cursor, "has_more": more}
            bodies.append(orjson.dumps(body, option=BODY_OPTIONS))
            offset += 100
            k += 1
    return bodies


def decode(bodies: Sequence[bytes]) -> list[tuple[Any, ...]]:
    from mirror.records import parse_page

    rows: list[tuple[Any, ...]] = []
    for b in bodies:
        rows.extend(parse_page(orjson.loads(b), payloads=True, billing=True).rows)
    return rows


def batches(rows: Sequence[tuple[Any, ...]]) -> list[Sequence[tuple[Any, ...]]]:
    return [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]


def template(folder: Path, page_size: int | None = None) -> Path:
    """A freshly migrated, empty mirror database; ``page_size``: as a file created by an
    earlier mirror (4,096: SQLite's default, before ``mirror.db.PAGE_SIZE``)."""
    from mirror.store import Store

    path = folder / (f"template-{page_size}.db" if page_size else "template.db")
    c.remove_db(path)
    if page_size:
        con = sqlite3.connect(path)
        con.execute(f"PRAGMA page_size = {page_size}")
        con.execute("PRAGMA journal_mode = WAL")
        con.close()
    Store.open(str(path)).close()
    con = sqlite3.connect(path)
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    return path


def fresh(tpl: Path, name: str) -> Path:
    dest = tpl.with_name(name)
    c.remove_db(dest)
    shutil.copyfile(tpl, dest)
    return dest


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with exactly the PRAGMAs mirror's engine sets."""
    from mirror.db import sqlite_on_connect

    con = sqlite3.connect(path, isolation_level=None)
    sqlite_on_connect(con, None)
    return con


def ingest_raw(path: Path, parts: Sequence[Sequence[tuple[Any, ...]]]) -> float:
    con = raw_connect(path)
    t0 = time.perf_counter()
    for part in parts:
        con.execute("BEGIN IMMEDIATE")
        con.executemany(RAW_UPSERT, [(*r, STAMP, STAMP) for r in part])
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return dt


def ingest_raw_multi(
    path: Path, parts: Sequence[Sequence[tuple[Any, ...]]], rows: int = 1000
) -> float:
    """Raw sqlite3 again, but ``rows`` rows per INSERT statement (a multi-row VALUES list)."""
    head, tail = RAW_UPSERT.split(" VALUES ", 1)
    one, rest = tail.split(" ON CONFLICT ", 1)
    con = raw_connect(path)
    t0 = time.perf_counter()
    for part in parts:
        con.execute("BEGIN IMMEDIATE")
        for i in range(0, len(part), rows):
            chunk = part[i : i + rows]
            sql = f"{head} VALUES {', '.join([one] * len(chunk))} ON CONFLICT {rest}"
            con.execute(sql, [v for r in chunk for v in (*r, STAMP, STAMP)])
        con.execute("COMMIT")
    dt = time.perf_counter() - t0
    con.close()
    return dt


def ingest_mirror(path: Path, parts: Sequence[Sequence[tuple[Any, ...]]]) -> tuple[float, int, int]:
    from mirror.db import make_engine
    from mirror.store import Store

    # not Store.open: that would upgrade a variant downgraded on purpose (the template is
    # migrated already)
    store = Store(make_engine(str(path)), str(path))
    ins = upd = 0
    t0 = time.perf_counter()
    for part in parts:
        with store.engine.begin() as conn:
            res = store.upsert(conn, part, payloads=True, billing=True, now=STAMP)
        ins += res.inserted
        upd += res.updated
    dt = time.perf_counter() - t0
    store.close()
    return dt, ins, upd


def schema_sets(path: Path) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """The triggers on ``requests`` grouped by family (name up to its last ``_``), and the
    secondary indexes with their SQL."""
    con = sqlite3.connect(path)
    triggers: dict[str, list[str]] = {}
    for (name,) in con.execute(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'requests'"
    ):
        triggers.setdefault(name.rsplit("_", 1)[0], []).append(name)
    indexes = list(
        con.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'requests' "
            "AND sql IS NOT NULL ORDER BY name"
        )
    )
    con.close()
    return triggers, indexes


def variant(
    tpl: Path,
    name: str,
    drop_triggers: Sequence[str],
    drop_indexes: Sequence[str],
    revision: str | None = None,
) -> Path:
    """A copy of ``tpl``, downgraded to ``revision`` first if given, without those triggers
    and indexes. Dropping every trigger of the head revision also drops ``sync_batch``
    (migration 0005), so that the upsert does no indexing of its own either."""
    path = fresh(tpl, name)
    if revision is not None:  # e.g. 0004: the row-by-row insert triggers before 0005
        from alembic import command

        from mirror.db import alembic_config, make_engine

        engine = make_engine(str(path))
        with engine.begin() as conn:
            command.downgrade(alembic_config(conn), revision)
        engine.dispose()
    con = sqlite3.connect(path)
    for t in drop_triggers:
        con.execute(f"DROP TRIGGER {t}")
    for i in drop_indexes:
        con.execute(f"DROP INDEX {i}")
    left = con.execute("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'").fetchone()[0]
    if not left:
        con.execute("DROP TABLE IF EXISTS sync_batch")
    con.commit()
    con.close()
    return path


def timed(runs: int, label: str, fn: Callable[[], float]) -> float:
    return c.median(c.repeat(runs, lambda _i: fn(), label))


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--no-costs", action="store_true", help="skip the index/trigger costs")
    a = p.parse_args()
    runs = a.runs or (3 if a.quick else 5)
    n = a.rows or (50_000 if a.quick else 200_000)
    tmp = c.workdir(a.tmp, "mirror-ingest-")

    bodies = page_bodies(n)

    def time_decode(_i: int) -> float:
        t0 = time.perf_counter()
        decode(bodies)
        return time.perf_counter() - t0

    t_dec = c.median(c.repeat(runs, time_decode))
    rows = decode(bodies)
    parts = batches(rows)
    tpl = template(tmp)
    triggers, indexes = schema_sets(tpl)
    c.header(
        "Ingest: Store.upsert vs raw sqlite3 executemany",
        [
            f"{len(rows):,} rows from the simulated API's pages, batches of {BATCH:,}, "
            f"{runs} runs each, every run on a copy of a freshly migrated database",
            f"schema: triggers {sorted(t for ts in triggers.values() for t in ts) or 'none'}; "
            f"indexes {[i for i, _ in indexes]}",
        ],
    )

    def new_raw() -> float:
        return ingest_raw(fresh(tpl, "raw.db"), parts)

    def new_mirror() -> float:
        dt, ins, upd = ingest_mirror(fresh(tpl, "mirror.db"), parts)
        assert (ins, upd) == (len({r[0] for r in rows}), 0), (ins, upd)
        return dt

    raw_new = timed(runs, "raw new", new_raw)
    mir_new = timed(runs, "mirror new", new_mirror)
    multi_new = timed(
        runs, "raw multi-row new", lambda: ingest_raw_multi(fresh(tpl, "raw.db"), parts)
    )

    # resync: every row already stored and unchanged
    full_raw = fresh(tpl, "raw-full.db")
    ingest_raw(full_raw, parts)
    full_mir = fresh(tpl, "mirror-full.db")
    ingest_mirror(full_mir, parts)
    raw_re = timed(runs, "raw resync", lambda: ingest_raw(full_raw, parts))

    def re_mirror() -> float:
        dt, ins, upd = ingest_mirror(full_mir, parts)
        assert (ins, upd) == (0, 0), (ins, upd)
        return dt

    mir_re = timed(runs, "mirror resync", re_mirror)

    k = len(rows)
    ratio = raw_new / mir_new
    table = [
        ["ingest, new rows", k / mir_new, k / raw_new, f"{ratio:.2f}", f">= {TARGET:g}",
         c.verdict(ratio >= TARGET)],
        ["resync, unchanged rows", k / mir_re, k / raw_re, f"{raw_re / mir_re:.2f}", "-", "-"],
        ["(info) new rows vs raw sqlite3 with 1,000-row VALUES statements", k / mir_new,
         k / multi_new, f"{multi_new / mir_new:.2f}", "-", "-"],
        ["(info) decode page bytes -> rows (orjson + parse_page)", k / t_dec, "-", "-", "-", "-"],
    ]  # fmt: skip
    print(
        c.table(
            ["figure", "mirror rows/s", "raw sqlite3 rows/s", "ratio", "target", "result"], table
        )
    )
    print()
    if a.no_costs:
        return
    costs(tpl, parts, k, runs, triggers, indexes)


def costs(
    tpl: Path,
    parts: Sequence[Sequence[tuple[Any, ...]]],
    k: int,
    runs: int,
    triggers: dict[str, list[str]],
    indexes: list[tuple[str, str]],
) -> None:
    """mirror's new-row ingest (Store.upsert) on variants of the schema: what each storage
    choice gained, then what each trigger set and index costs."""
    tpl4k = template(tpl.parent, page_size=4096)
    # (label, template, triggers dropped, indexes dropped, revision downgraded to first)
    Case = tuple[str, Path, list[str], list[str], str | None]
    gains: list[Case] = [
        ("full schema, as migrated (head, 16 KiB pages)", tpl, [], [], None),
        ("with 4 KiB pages (a file created before mirror set PAGE_SIZE)", tpl4k, [], [], None),
        ("at revision 0004: row-by-row insert triggers (before 0005)", tpl, [], [], "0004"),
        ("at revision 0003: also FTS5's default settings (before 0004)", tpl, [], [], "0003"),
    ]
    all_trig = [t for ts in triggers.values() for t in ts]
    base_costs: list[Case] = [("revision 0004, full schema", tpl, [], [], ROW_BY_ROW)]
    for fam, names in sorted(triggers.items()):
        base_costs.append((f"without triggers {fam}_*", tpl, names, [], ROW_BY_ROW))
    base_costs.append(("without any trigger", tpl, all_trig, [], ROW_BY_ROW))
    for i, _ in indexes:
        base_costs.append(
            (f"without any trigger, without index {i}", tpl, all_trig, [i], ROW_BY_ROW)
        )
    all_idx = [i for i, _ in indexes]
    base_costs.append(("primary key only (no trigger, no index)", tpl, all_trig, all_idx,
                       ROW_BY_ROW))  # fmt: skip

    def measure(cases: list[Case]) -> list[tuple[str, float]]:
        out = []
        for label, t, dt, di, rev in cases:
            s = timed(
                runs,
                f"mirror {label}",
                lambda t=t, dt=dt, di=di, rev=rev: ingest_mirror(
                    variant(t, "v.db", dt, di, rev), parts
                )[0],
            )
            out.append((label, s))
        return out

    gained = measure(gains)
    base = gained[0][1]
    print("### What the storage choices gain (Store.upsert, new rows)\n")
    # what each variant lacks, against the variant that has it: 16 KiB pages and 0005
    # against head, 0004's FTS5 settings against 0004
    step = {1: (0, "16 KiB pages"), 2: (0, "0005's batches"), 3: (2, "0004's settings")}
    rows = [[gained[0][0], k / base, "1.00", ""]]
    for i, (label, s) in enumerate(gained[1:], 1):
        ref, what = step[i]
        rows.append([label, k / s, f"{s / base:.2f}",
                     f"{what} take {1 - gained[ref][1] / s:.0%} off this time"])  # fmt: skip
    print(c.table(["schema", "rows/s", "time vs head", "gain"], rows))
    print()
    results = measure(base_costs)
    base = results[0][1]
    no_trig = next(s for lbl, s in results if lbl == "without any trigger")
    print(
        "### What each index and trigger set costs (Store.upsert, new rows, revision 0004:\n"
        "the triggers do all the indexing and summarizing there)\n"
    )
    out = []
    for label, s in results:
        ref = no_trig if "without index" in label else base
        saved = 1 - s / ref
        note = f"{saved:+.0%} of the time" + (" (vs no trigger)" if ref is no_trig else "")
        out.append([label, k / s, f"{s / base:.2f}", note if s is not base else ""])
    print(c.table(["schema", "rows/s", "time vs 0004", "time saved by dropping"], out))
    print()


if __name__ == "__main__":
    sys.path.insert(0, str(c.REPO))
    main()
