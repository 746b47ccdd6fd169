"""`mirror copy`: a mirror goes SQLite -> PostgreSQL -> SQLite and comes back the same.

Every column of every table is compared, read without mirror's own code (sqlite3 for the
files, plain psycopg for PostgreSQL). JSON payloads are compared as values, not text:
PostgreSQL's ``jsonb`` keeps a document's value but not its spacing or key order, so the
text that comes back from PostgreSQL is its rendering of the same value. Everything else,
timestamps included (canonical text with microseconds on SQLite, ``timestamptz`` on
PostgreSQL), must come back exactly.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support.cli import assert_one_line
from support.compare import db_query
from support.rows import add_targets

from mirror import lock, oversize
from mirror.billing_api import BillingEvent
from mirror.copy import copy_mirror
from mirror.demo import run_demo
from mirror.records import Row
from mirror.schema import cost_state, cost_windows, requests, usage_checks
from mirror.store import Store

TABLES = {
    "requests": "request_id",
    "sync_targets": "target",
    "sync_windows": "target, window_start",
    "sync_runs": "id",
    "sync_rechecks": "target, tier",
    "billing_events": "request_id",
    "sync_page_limits": "target, window_start, window_end",
    "oversized_requests": "request_id",
    "cost_windows": "window_start",
    "cost_state": "id",
    "usage_checks": "day, endpoint_id",
    "prices": "endpoint_id, seen_at",
    "summary_hourly": "hour, endpoint_id, status",  # derived: rebuilt by the triggers
    "duration_histogram": "hour, bucket, endpoint_id, status",  # derived, too
    "duration_buckets": "bucket",  # made by the migration, the same on both
}
JSON_COLUMNS = {"json_input", "json_output"}
INSTANTS = {"sent_at", "started_at", "ended_at", "first_seen_at", "last_changed_at", "added_at",
            "window_start", "window_end", "completed_at", "checked_at",
            "requested_from", "timestamp", "seen_at", "learned_at", "last_seen_at", "ok_at",
            "prices_checked_at", "usage_checked_at"}  # fmt: skip

TRICKY_JSON = (
    '{ "z": 1,  "a": [1.5, -0.0, 1e-300, 12345678901234567890, null, true],"ü": "日本\\n\\"q\\"" }'
)


def mirror_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mirror", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def sqlite_dump(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, JSON columns decoded (compared as values)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = {}
        for table, order in TABLES.items():
            cur = con.execute(f"SELECT * FROM {table} ORDER BY {order}")
            cols = [d[0] for d in cur.description]
            out[table] = [
                tuple(
                    json.loads(v) if c in JSON_COLUMNS and v is not None else v
                    for c, v in zip(cols, r, strict=True)
                )
                for r in cur
            ]
        return out
    finally:
        con.close()


def pg_dump_as_sqlite(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """The PostgreSQL copy in the SQLite file's terms: instants as canonical UTC text."""
    out = {}
    for table, order in TABLES.items():
        cols = [r[0] for r in db_query(url, f"SELECT column_name FROM information_schema.columns "
                                            f"WHERE table_name = '{table}' ORDER BY ordinal_position")]  # fmt: skip
        rows = db_query(url, f"SELECT {', '.join(cols)} FROM {table} ORDER BY {order}")
        out[table] = [
            tuple(
                _canonical(v) if c in INSTANTS else _hour(v) if c == "hour" else v
                for c, v in zip(cols, r, strict=True)
            )
            for r in rows
        ]
    return out


def _canonical(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return v


def _hour(v: Any) -> Any:
    return v.astimezone(UTC).strftime("%Y-%m-%dT%H:00:00Z") if isinstance(v, datetime) else v


def assert_same(
    a: dict[str, list[tuple[Any, ...]]], b: dict[str, list[tuple[Any, ...]]], what: str
) -> None:
    for table in TABLES:
        assert len(a[table]) == len(b[table]), (
            f"{what}: {table} has {len(b[table])} rows, expected {len(a[table])}"
        )
        diffs = [(x, y) for x, y in zip(a[table], b[table], strict=True) if x != y]
        assert not diffs, f"{what}: {len(diffs)} rows of {table} differ, e.g. {diffs[:2]}"


#: requests of the model history (``requests.history``), one of them billed below
MODEL_ROWS = [
    Row("model-1", "fal-ai/odd", None, "2026-01-01T01:00:00.000000Z",
        "2026-01-01T01:00:01.000000Z", "2026-01-01T01:00:03.000000Z", 200, 2.0, None,
        '{"prompt": "ü"}', None, "success"),
    Row("model-2", "fal-ai/odd/eu", None, "2026-01-01T02:00:00.000000Z", None, None, None, None,
        None, None, None, "unfinished"),
]  # fmt: skip
#: billed requests beyond the demo's: one the mirror holds, one it does not (kept)
ODD_EVENTS = [
    BillingEvent("model-1", "fal-ai/odd", "2026-01-01T01:00:03.000000Z", 3.0, 0.1, 12.5,
                 0.30000000000000004, 0.0375, 0.2625, 262_500_000, "Production key", "key-1",
                 None),
    BillingEvent("never-seen", "fal-ai/odd/eu", "2026-01-01T00:00:00.000001Z", None, None, None,
                 1e-9, 0.0, 1e-9, 1, "User token", None, "zoë"),
]  # fmt: skip


@pytest.fixture(scope="module")
def source_db(tmp_path_factory) -> Path:
    """A real synced mirror (the demo's day of history, its billing events and prices), plus
    rows and state chosen to be awkward: unfinished requests, payloads with odd JSON, nulls,
    a failed run, requests of the model history, an event for a request the mirror does not
    hold, amounts whose floats and integers must both come back exact, a price changed and
    one in euros."""
    db = tmp_path_factory.mktemp("copy") / "source.db"
    run_demo(db, echo=lambda _s: None, days=1)
    store = Store.open(str(db))
    try:
        now = "2026-01-02T03:04:05.678901Z"
        rows = [
            Row("odd-1", "acme/odd", "runner-ü", "2026-01-01T00:00:00.000001Z", None, None,
                None, None, None, TRICKY_JSON, None, "unfinished"),
            Row("odd-2", "acme/odd/route", None, "2026-01-01T00:00:00.000000Z",
                "2026-01-01T00:00:01.999999Z", "2026-01-01T00:00:02.500000Z",
                503, 0.1, 1e-9, "[]", '{"b":{"c":[{}]},"a":"x"}', "error"),
        ]  # fmt: skip
        with store.engine.begin() as conn:
            store.upsert(conn, rows, payloads=True, billing=True, now=now)
            add_targets(conn, ["acme/odd"], now)
            store.mark_complete(conn, "acme/odd", "2025-12-31T00:00:00.000000Z",
                                "2026-01-01T12:00:00.000000Z", now)  # fmt: skip
            store.upsert(conn, MODEL_ROWS, payloads=True, billing=True, now=now)
            conn.execute(
                requests.update()
                .where(requests.c.request_id.in_([r.request_id for r in MODEL_ROWS]))
                .values(history="model")
            )
            store.upsert_billing_events(conn, ODD_EVENTS, now=now)
            store.record_prices(
                conn,
                [("fal-ai/odd", "image", 0.1, "USD"), ("fal-ai/odd/eu", "megapixel", 1e-7, "EUR")],
                now,
            )
            store.record_prices(conn, [("fal-ai/odd", "image", 0.12, "USD")],
                                "2026-01-02T04:00:00.000000Z")  # fmt: skip
            # what walks learned of pages over the body cap: the copy must not meet them again
            oversize.record(conn, [oversize.TooBig(rows[1], 9_000_000, 8_388_608),
                                   oversize.TooBig(MODEL_ROWS[1], None, 8_388_608)], now)  # fmt: skip
            oversize.save_stretches(
                conn,
                [oversize.Stretch("acme/odd", datetime(2026, 1, 1, tzinfo=UTC),
                                  datetime(2026, 1, 1, 0, 30, tzinfo=UTC), 3)],
                now,
            )  # fmt: skip
        run = store.start_run(["acme/odd"], datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC))
        store.finish_run(run, datetime(2026, 1, 2, 3, 5, tzinfo=UTC), "failed",
                         {"pages": 3, "api_calls": 9, "rows_inserted": 2, "rows_updated": 0},
                         "the API said: «no» (500)")  # fmt: skip
        store.mark_rechecked("acme/odd", ["day"], now)
        with store.engine.begin() as conn:  # what the sync keeps about mirroring cost
            conn.execute(
                cost_windows.insert().values(
                    window_start="2025-12-01T00:00:00.000000Z",
                    window_end="2026-01-02T03:04:05.000000Z",
                    completed_at=now,
                )
            )
            conn.execute(cost_state.delete())  # (the fixture's sync kept one of its own)
            conn.execute(
                cost_state.insert().values(
                    id=1,
                    state="refused",
                    reason="the key lacks «ADMIN» scope",
                    checked_at=now,
                    ok_at="2026-01-01T00:00:00.000001Z",
                    prices_checked_at=now,
                    usage_checked_at=None,
                )
            )
            conn.execute(usage_checks.insert().values(
                day="2026-01-01", endpoint_id="fal-ai/odd", usage_nano_usd=10**15 + 1,
                mirror_nano_usd=10**15, checked_at=now))  # fmt: skip
    finally:
        store.close()
    return db


def test_sqlite_to_postgresql_to_sqlite_round_trips_every_table(
    tmp_path, source_db, pg_url
) -> None:
    original = sqlite_dump(source_db)
    assert len(original["requests"]) > 1000 and len(original["sync_runs"]) == 2, "fixture too small"
    con = sqlite3.connect(source_db)
    try:  # the state a sync records of what was asked and of the API's clock is carried too
        asked, targets = con.execute(
            "SELECT count(requested_from), count(*) FROM sync_targets"
        ).fetchone()
        skews = con.execute("SELECT count(clock_skew) FROM sync_runs").fetchone()[0]
    finally:
        con.close()
    assert asked >= 3 and targets >= asked and skews == 1, (
        f"fixture lacks requested starts or skews: {asked} of {targets}, {skews}"
    )
    histories = {r[-1] for r in original["requests"]}
    assert histories == {"serverless", "model"}, f"fixture lacks a history: {histories}"
    events, n_prices = len(original["billing_events"]), len(original["prices"])
    assert events > len(ODD_EVENTS) and n_prices > 3, "fixture lacks the demo's cost rows"
    empty = sorted(t for t, rows in original.items() if not rows)
    assert empty == [], f"the fixture leaves tables empty, so their copy is not proved: {empty}"

    r = mirror_cli("copy", "--from", str(source_db), "--to", pg_url)
    assert r.returncode == 0, f"SQLite -> PostgreSQL failed: {r.stderr}"
    n = len(original["requests"])
    assert r.stdout.startswith(f"copied {n} requests, {targets} targets, "), r.stdout
    assert f" {events} billing events and {n_prices} prices from " in r.stdout, r.stdout
    assert_same(original, pg_dump_as_sqlite(pg_url), "on PostgreSQL")

    # back, through the library with a tiny batch: many partitions and statements
    back = tmp_path / "back.db"
    report = copy_mirror(pg_url, str(back), batch=97)
    copied = {t: len(rows) for t, rows in original.items() if t in report.counts}
    assert report.counts == copied, report.summary()
    assert_same(original, sqlite_dump(back), "back on SQLite")
    assert sqlite_dump(source_db) == original, "the source changed"
    con = sqlite3.connect(back)
    try:
        con.execute("INSERT INTO requests_fts(requests_fts) VALUES('integrity-check')")
        hits = con.execute(
            "SELECT request_id FROM requests WHERE rowid IN "
            "(SELECT rowid FROM requests_fts WHERE requests_fts MATCH '日本')"
        ).fetchall()
    finally:
        con.close()
    assert hits == [("odd-1",)], f"the full-text index was not rebuilt from the copied rows: {hits}"

    # the copy is a working mirror: the next run id follows the copied ones, on both
    for db in (pg_url, str(back)):
        store = Store.open(db)
        try:
            assert store.start_run(["x"], datetime.now(UTC)) == 3, f"{db}: run ids restarted"
        finally:
            store.close()


def test_sqlite_to_sqlite(tmp_path, source_db) -> None:
    dest = tmp_path / "copy.db"
    r = mirror_cli("copy", "--from", str(source_db), "--to", f"sqlite:///{dest}")
    assert r.returncode == 0, r.stderr
    assert_same(sqlite_dump(source_db), sqlite_dump(dest), "SQLite to SQLite")


@pytest.mark.parametrize(
    "case",
    [
        "missing source",
        "bad url",
        "url without database",
        "same database",
        "source not a mirror",
        "non-empty destination",
        "destination with billing events only",
    ],
)
def test_refusals_are_one_line_exit_2_and_change_nothing(
    tmp_path, source_db, pg_url, case: str
) -> None:
    # compared by content: a read-only reader's leftover empty -wal file may come and go
    before = sqlite_dump(source_db)
    junk = tmp_path / "junk.db"
    con = sqlite3.connect(junk)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    other = tmp_path / "other.db"  # another mirror, copied file by file
    shutil.copyfile(source_db, other)
    costly = tmp_path / "costly.db"  # a mirror holding nothing but billing events
    if case == "destination with billing events only":
        store = Store.open(str(costly))
        with store.engine.begin() as conn:
            store.upsert_billing_events(conn, ODD_EVENTS, now="2026-01-02T00:00:00.000000Z")
        store.close()
    args, needle = {
        "missing source": (["--from", str(tmp_path / "nope.db"), "--to", str(tmp_path / "o.db")], "does not exist"),
        "bad url": (["--from", str(source_db), "--to", "mysql://u@h/db"], "unsupported database 'mysql'"),
        "url without database": (["--from", str(source_db), "--to", "postgresql://"], "names no database"),
        "same database": (["--from", str(source_db), "--to", f"sqlite:///{source_db}"], "the same database"),
        "source not a mirror": (["--from", str(junk), "--to", str(tmp_path / "o.db")], "not a mirror database"),
        "non-empty destination": (["--from", str(other), "--to", str(source_db)], "is not empty"),
        "destination with billing events only": (["--from", str(source_db), "--to", str(costly)],
                                                 "is not empty (it has rows in billing_events)"),
    }[case]  # fmt: skip
    r = mirror_cli("copy", *args)
    assert r.returncode == 2, f"{case}: exit {r.returncode}, expected 2: {r.stderr}"
    line = assert_one_line(r.stderr, "cannot copy", context=case)
    assert needle in line, f"{case}: the line does not say why: {line!r}"
    assert r.stdout == ""
    assert sqlite_dump(source_db) == before, f"{case}: the source (or refused destination) changed"
    assert not (tmp_path / "o.db").exists(), f"{case}: a destination file was created"


def test_non_empty_postgresql_destination_is_refused_untouched(tmp_path, source_db, pg_url) -> None:
    assert copy_mirror(str(source_db), pg_url).counts["requests"] > 0
    before = pg_dump_as_sqlite(pg_url)
    r = mirror_cli("copy", "--from", str(source_db), "--to", pg_url)
    assert r.returncode == 2, r.stderr
    assert "is not empty (it has rows in requests" in assert_one_line(r.stderr, "cannot copy")
    assert pg_dump_as_sqlite(pg_url) == before, "the refused destination changed"


def test_a_sync_writing_the_source_makes_copy_wait_its_turn(tmp_path, source_db) -> None:
    with lock.hold(source_db):  # as a running sync holds it
        r = mirror_cli("copy", "--from", str(source_db), "--to", str(tmp_path / "o.db"))
    assert r.returncode == 75, f"exit {r.returncode}: {r.stderr}"
    assert_one_line(r.stderr, "busy")
    assert not (tmp_path / "o.db").exists()
