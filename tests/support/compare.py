"""Reading a mirror without mirror's code, and checking it against the server.

A mirror is read with the drivers alone: ``sqlite3`` for a file, ``psycopg`` for a
PostgreSQL URL. Expected values are computed independently of mirror's own parsing:
timestamps compared as datetimes, payloads as decoded JSON, so a bug in the client's
normalisation cannot hide behind the same bug in the test.

``assert_mirror_equals`` is the one check that the mirror holds what the server lists; the
other checks (``integrity_ok``, ``fts_ok``, ``check_consistent``, ``derived_tables_exact``)
are what must hold after any run, finished or killed.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import sqlite3
import subprocess
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

FIELDS = ("request_id", "endpoint_id", "runner_id", "sent_at", "started_at", "ended_at",
          "status_code", "duration", "billable_units", "json_input", "json_output")  # fmt: skip
TS = ("sent_at", "started_at", "ended_at")


def _ts(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, datetime):  # PostgreSQL hands timestamptz back as datetimes
        return v.astimezone(UTC)
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def server_record(item: dict[str, Any]) -> dict[str, Any]:
    """What the mirror must hold for an API item, in comparable form."""
    out = {f: item.get(f) for f in FIELDS}
    for f in TS:
        out[f] = _ts(out[f])
    return out


def covers(target: str, endpoint_id: str) -> bool:
    """Whether syncing ``target`` (an app id) fetches the requests of ``endpoint_id``."""
    return endpoint_id == target or endpoint_id.startswith(target + "/")


# --------------------------------------------------------------------------- reading


def is_server(db: Path | str) -> bool:
    return isinstance(db, str) and "://" in db


def libpq_url(db: str) -> str:
    """A SQLAlchemy URL as libpq (psql, pg_dump, psycopg) takes it."""
    return db.replace("postgresql+psycopg://", "postgresql://", 1)


def db_query(db: Path | str, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of one SELECT, straight from the driver (timestamps as text on SQLite and as
    datetimes on PostgreSQL; JSON as text on SQLite and decoded on PostgreSQL). A SQLite
    file is opened read-only."""
    if is_server(db):
        import psycopg

        with psycopg.connect(libpq_url(str(db))) as con:
            return [tuple(r) for r in con.execute(sql, params or None).fetchall()]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def db_execute(db: Path | str, sql: str) -> None:
    """One write, committed (for tests that age the sync state)."""
    if is_server(db):
        import psycopg

        with psycopg.connect(libpq_url(str(db))) as con:
            con.execute(sql)
        return
    con = sqlite3.connect(db)
    try:
        con.execute(sql)
        con.commit()
    finally:
        con.close()


def has_schema(db: Path | str) -> bool:
    """False if a kill came before the first migration committed (the file is then empty)."""
    if is_server(db):
        return db_query(db, "SELECT to_regclass('requests') IS NOT NULL") == [(True,)]
    return db_query(db, "SELECT count(*) FROM sqlite_master WHERE name = 'requests'") == [(1,)]


def query(db: Path, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of a SELECT on a mirror file; none while the file is absent, empty or has no
    schema yet (a kill came first)."""
    if not db.exists() or db.stat().st_size == 0 or not has_schema(db):
        return []
    return db_query(db, sql, params)


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def mirror_rows(db: Path | str) -> dict[str, dict[str, Any]]:
    """Every stored request in comparable form (as ``server_record`` gives the server's),
    by id; asserts that no request_id is stored twice."""
    if not has_schema(db):
        return {}
    rows = db_query(db, f"SELECT {', '.join(FIELDS)} FROM requests")
    (n_distinct,) = db_query(db, "SELECT count(DISTINCT request_id) FROM requests")[0]
    assert n_distinct == len(rows), "a request_id is stored twice"
    out = {}
    for r in rows:
        d = dict(zip(FIELDS, r, strict=True))
        for f in TS:
            d[f] = _ts(d[f])
        for f in ("json_input", "json_output"):
            d[f] = _json(d[f])
        out[d["request_id"]] = d
    return out


def stored_ids(db: Path) -> set[str]:
    return {r[0] for r in query(db, "SELECT request_id FROM requests")}


def runs(db: Path) -> list[tuple[str, str | None]]:
    return [(r[0], r[1]) for r in query(db, "SELECT outcome, error FROM sync_runs ORDER BY id")]


def revision(db: Path) -> str | None:
    """The Alembic revision a mirror file is at (None before the first migration)."""
    if not db_query(db, "SELECT 1 FROM sqlite_master WHERE name = 'alembic_version'"):
        return None
    rows = db_query(db, "SELECT version_num FROM alembic_version")
    return rows[0][0] if rows else None


def completed_windows(db: Path | str) -> list[tuple[str, datetime, datetime]]:
    if not has_schema(db):
        return []
    return [
        (t, _ts(a), _ts(b))
        for t, a, b in db_query(db, "SELECT target, window_start, window_end FROM sync_windows")
    ]


def intervals(db: Path) -> dict[str, list[tuple[datetime, datetime]]]:
    """The windows the state calls complete, by target, in order."""
    out: dict[str, list[tuple[datetime, datetime]]] = {}
    if not db.exists() or db.stat().st_size == 0:
        return out
    for t, a, b in completed_windows(db):
        out.setdefault(t, []).append((a, b))
    for v in out.values():
        v.sort()
    return out


def inside(iv: Sequence[tuple[datetime, datetime]], a: datetime, b: datetime) -> bool:
    """Whether [a, b) lies inside the union of the (coalesced) intervals ``iv``."""
    return any(x <= a and b <= y for x, y in iv)


def overlaps(iv: Sequence[tuple[datetime, datetime]], a: datetime, b: datetime) -> bool:
    return any(x < b and a < y for x, y in iv)


def content_dump(db: Path) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The mirror's content without the bookkeeping stamps of when it was written."""
    rows = query(
        db,
        "SELECT request_id, endpoint_id, runner_id, sent_at, started_at, ended_at, status_code,"
        " duration, billable_units, json_input, json_output, status FROM requests"
        " ORDER BY request_id",
    )
    windows = query(db, "SELECT target, window_start, window_end FROM sync_windows ORDER BY 1, 2")
    return rows, windows


def digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes() if p.exists() else b"<absent>")
    return h.hexdigest()


def database_contains(db: Path | str, needle: str) -> bool:
    """Whether a PostgreSQL database's dump (every table's every value) holds ``needle``."""
    out = subprocess.run(
        ["pg_dump", "--data-only", "--dbname", libpq_url(str(db))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return needle in out.stdout


def files_contain(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]


# --------------------------------------------------------------------------- the mirror equals the server


def assert_mirror_equals(
    db: Path | str,
    expected: dict[str, dict[str, Any]],
    *,
    allow_extra: Collection[str] = frozenset(),
    allow_missing: bool = False,
    context: str = "",
) -> dict[str, dict[str, Any]]:
    """The mirror holds every expected request once, every field equal to the server's, and
    nothing else. Returns the mirror's rows.

    ``allow_extra``: requests it may hold besides (listed by the server after the expected
    snapshot was taken). ``allow_missing``: only what it holds is checked (after a killed
    run: nothing invented, nothing half-written).
    """
    got = mirror_rows(db)
    where = f" ({context})" if context else ""
    if not allow_missing:
        missing = sorted(set(expected) - set(got))
        assert not missing, (
            f"{len(missing)} requests missing from the mirror{where}, e.g. {missing[:3]}"
        )
    extra = sorted(set(got) - set(expected) - set(allow_extra))
    assert not extra, (
        f"{len(extra)} requests in the mirror the server never listed{where}, e.g. {extra[:3]}"
    )
    wrong = []
    for rid in sorted(set(expected) & set(got)):
        have, want = got[rid], expected[rid]
        diffs = {f: (have[f], want[f]) for f in FIELDS if have[f] != want[f]}
        if diffs:
            wrong.append((rid, diffs))
    assert not wrong, f"{len(wrong)} requests differ from the server{where}, e.g. {wrong[:2]}"
    return got


# --------------------------------------------------------------------------- consistency


def _micro(x: float | None) -> int:
    """Millionths, rounded half away from zero as SQLite's round() does."""
    if x is None:
        return 0
    return int(x * 1_000_000 + 0.5) if x >= 0 else -int(-x * 1_000_000 + 0.5)


def integrity_ok(db: Path | str) -> None:
    """The file passes SQLite's integrity check, and on both backends the trigger-kept
    ``summary_hourly`` and ``duration_histogram`` equal the same sums worked out here from
    the rows themselves."""
    if not is_server(db):
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (
                "integrity_check failed"
            )
        finally:
            con.close()
    summary = (
        "SELECT to_regclass('summary_hourly') IS NOT NULL"
        if is_server(db)
        else "SELECT count(*) = 1 FROM sqlite_master WHERE name = 'summary_hourly'"
    )
    if not has_schema(db) or not db_query(db, summary)[0][0]:
        return  # no schema yet, or one from before migration 0002
    histogram_ok(db)
    want: dict[tuple[Any, ...], list[int]] = {}
    for ended, ep, status, duration, units in db_query(
        db,
        "SELECT ended_at, endpoint_id, status, duration, billable_units FROM requests "
        "WHERE ended_at IS NOT NULL",
    ):
        hour = _ts(ended).replace(minute=0, second=0, microsecond=0)
        acc = want.setdefault((hour, ep, status), [0, 0, 0, 0, 0])
        acc[0] += 1
        acc[1] += duration is not None
        acc[2] += _micro(duration)
        acc[3] += units is not None
        acc[4] += _micro(units)
    have = {
        (_ts(h), ep, st): [int(v) for v in vals]
        for h, ep, st, *vals in db_query(
            db,
            "SELECT hour, endpoint_id, status, requests, durations, duration_us, billed, "
            "billable_micro FROM summary_hourly",
        )
    }
    if have != want:
        diff = {
            k: (have.get(k), want.get(k))
            for k in set(have) | set(want)
            if have.get(k) != want.get(k)
        }
        raise AssertionError(
            f"summary_hourly disagrees with the rows in {len(diff)} groups, e.g. "
            f"{sorted(diff.items(), key=str)[:2]}"
        )


def histogram_ok(db: Path | str) -> None:
    """If the mirror has ``duration_histogram`` (migration 0011), it counts every finished
    request with a duration in its hour, endpoint, status and bucket: the bucket with the
    largest lower bound not above the duration (``duration_buckets``), worked out here."""
    exists = (
        "SELECT to_regclass('duration_histogram') IS NOT NULL"
        if is_server(db)
        else "SELECT count(*) = 1 FROM sqlite_master WHERE name = 'duration_histogram'"
    )
    if not has_schema(db) or not db_query(db, exists)[0][0]:
        return
    lowers = [lo for (lo,) in db_query(db, "SELECT lower FROM duration_buckets ORDER BY lower")]
    buckets = [b for (b,) in db_query(db, "SELECT bucket FROM duration_buckets ORDER BY lower")]
    want: dict[tuple[Any, ...], int] = {}
    for ended, ep, status, duration in db_query(
        db,
        "SELECT ended_at, endpoint_id, status, duration FROM requests "
        "WHERE ended_at IS NOT NULL AND duration IS NOT NULL",
    ):
        hour = _ts(ended).replace(minute=0, second=0, microsecond=0)
        i = bisect.bisect_right(lowers, duration) - 1
        key = (hour, buckets[i] if i >= 0 else 0, ep, status)
        want[key] = want.get(key, 0) + 1
    have = {
        (_ts(h), b, ep, st): int(n)
        for h, b, ep, st, n in db_query(
            db, "SELECT hour, bucket, endpoint_id, status, requests FROM duration_histogram"
        )
    }
    if have != want:
        diff = sorted(
            (
                (k, have.get(k), want.get(k))
                for k in set(have) | set(want)
                if have.get(k) != want.get(k)
            ),
            key=str,
        )
        raise AssertionError(
            f"duration_histogram disagrees with the rows in {len(diff)} cells, e.g. {diff[:2]}"
        )


def fts_ok(db: Path) -> None:
    """If the file has the full-text index (migration 0002), it agrees with its table."""
    con = sqlite3.connect(db)
    try:
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'requests_fts'").fetchone():
            try:
                con.execute("INSERT INTO requests_fts(requests_fts) VALUES('integrity-check')")
            except sqlite3.DatabaseError as e:
                raise AssertionError(f"the full-text index disagrees with requests: {e}") from None
    finally:
        con.close()


#: ``summary_hourly`` recomputed from ``requests`` by SQLite itself, in its own text forms
SUMMARY_SQL = """
    SELECT substr(ended_at, 1, 13) || ':00:00Z' AS h, endpoint_id, status, count(*),
           count(duration), COALESCE(sum(CAST(round(duration * 1000000) AS INTEGER)), 0),
           count(billable_units), COALESCE(sum(CAST(round(billable_units * 1000000) AS INTEGER)), 0)
    FROM requests WHERE ended_at IS NOT NULL GROUP BY h, endpoint_id, status ORDER BY 1, 2, 3
"""


#: ``duration_histogram`` recomputed from ``requests`` by SQLite itself
HISTOGRAM_SQL = """
    SELECT substr(ended_at, 1, 13) || ':00:00Z' AS h,
           coalesce((SELECT b.bucket FROM duration_buckets b WHERE b.lower <= duration
                     ORDER BY b.lower DESC LIMIT 1), 0) AS k,
           endpoint_id, status, count(*)
    FROM requests WHERE ended_at IS NOT NULL AND duration IS NOT NULL
    GROUP BY h, k, endpoint_id, status ORDER BY 1, 2, 3, 4
"""


#: ``unbilled_hourly`` recomputed from ``requests`` and ``billing_events`` by SQLite itself
UNBILLED_SQL = """
    SELECT r.endpoint_id, substr(r.ended_at, 1, 13) || ':00:00.000000Z' AS h, r.history,
           count(*), sum(CAST(round(coalesce(r.billable_units, 1.0) * 1000000) AS INTEGER))
    FROM requests r LEFT JOIN billing_events e ON e.request_id = r.request_id
    WHERE r.status = 'success' AND r.ended_at IS NOT NULL AND e.request_id IS NULL
    GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""


def derived_tables_exact(path: Path) -> None:
    """On a SQLite mirror, what the triggers keep is exact: ``summary_hourly``,
    ``duration_histogram`` and ``unbilled_hourly`` equal a recomputation row for row, and the
    search index matches the table entry for entry (with a rank, FTS5's integrity check
    compares every indexed entry with the content table: a row indexed twice, or not at all,
    fails)."""
    con = sqlite3.connect(path)
    try:
        kept = con.execute("SELECT * FROM summary_hourly ORDER BY 1, 2, 3").fetchall()
        recomputed = con.execute(SUMMARY_SQL).fetchall()
        assert kept == recomputed, "summary_hourly drifted from a recomputation over requests"
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'duration_histogram'").fetchone():
            kept = con.execute("SELECT * FROM duration_histogram ORDER BY 1, 2, 3, 4").fetchall()
            recomputed = con.execute(HISTOGRAM_SQL).fetchall()
            assert kept == recomputed, (
                "duration_histogram drifted from a recomputation over requests"
            )
        if con.execute("SELECT 1 FROM sqlite_master WHERE name = 'unbilled_hourly'").fetchone():
            kept = con.execute("SELECT * FROM unbilled_hourly ORDER BY 1, 2, 3").fetchall()
            recomputed = con.execute(UNBILLED_SQL).fetchall()
            assert kept == recomputed, (
                "unbilled_hourly drifted from a recomputation over requests and billing events"
            )
        try:
            con.execute(
                "INSERT INTO requests_fts (requests_fts, rank) VALUES ('integrity-check', 1)"
            )
        except sqlite3.DatabaseError as e:
            pytest.fail(f"requests_fts does not match requests: {e}")
    finally:
        con.close()


def check_consistent(
    db: Path,
    expected: dict[str, dict[str, Any]],
    filter_field: str,
    *,
    context: str = "",
) -> dict[str, dict[str, Any]]:
    """After any run, finished or killed, against a world that did not change meanwhile:

    - the file passes ``PRAGMA integrity_check`` and holds no request twice;
    - every stored row equals the server's (nothing invented, nothing half-written);
    - *state never ahead of data*: every request in a window the state calls complete is
      stored.

    Returns the mirror's rows.
    """
    where = f" ({context})" if context else ""
    if not db.exists() or db.stat().st_size == 0:
        return {}
    integrity_ok(db)
    fts_ok(db)
    rows = assert_mirror_equals(db, expected, allow_missing=True, context=context)
    for target, a, b in completed_windows(db):
        lacking = [
            rid
            for rid, rec in expected.items()
            if covers(target, rec["endpoint_id"])
            and rec[filter_field] is not None
            and a <= rec[filter_field] < b
            and rid not in rows
        ]
        assert not lacking, (
            f"state is ahead of the data{where}: window {target} [{a}, {b}) is marked complete "
            f"but {len(lacking)} of its requests are not stored, e.g. {lacking[:3]}"
        )
    return rows
