"""Driving the real `mirror` command against the simulated API over loopback HTTP.

Expected values are computed independently of mirror's own parsing: timestamps compared as
datetimes, payloads as decoded JSON, so a bug in the client's normalisation cannot hide
behind the same bug in the test.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mirror.simulator import DEFAULT_KEY

FIELDS = ("request_id", "endpoint_id", "runner_id", "sent_at", "started_at", "ended_at",
          "status_code", "duration", "billable_units", "json_input", "json_output")  # fmt: skip
TS = ("sent_at", "started_at", "ended_at")
CANARY_KEY = "sim-key-id:sim-key-secret"  # the simulator's key doubles as the canary
assert CANARY_KEY == DEFAULT_KEY


def fast_env(api_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "MIRROR_"))}
    env.update(
        MIRROR_BASE_URL=api_url,
        FAL_KEY=DEFAULT_KEY,
        MIRROR_RETRY_BASE="0.01",
        MIRROR_RETRY_CAP="0.2",
        MIRROR_RETRY_ATTEMPTS="12",
        MIRROR_REQUEST_DEADLINE="5",
    )
    env.update(extra)
    return env


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def mirror(args: list[str], env: dict[str, str], *, timeout: float = 240) -> Run:
    p = subprocess.run(
        [sys.executable, "-m", "mirror", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "mirror", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


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


# ---- reading the mirror without mirror's code: sqlite3 for a file, psycopg for PostgreSQL


def is_server(db: Path | str) -> bool:
    return isinstance(db, str) and "://" in db


def libpq_url(db: str) -> str:
    """A SQLAlchemy URL as libpq (psql, pg_dump, psycopg) takes it."""
    return db.replace("postgresql+psycopg://", "postgresql://", 1)


def db_query(db: Path | str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one SELECT, straight from the driver (timestamps as text on SQLite and as
    datetimes on PostgreSQL; JSON as text on SQLite and decoded on PostgreSQL)."""
    if is_server(db):
        import psycopg

        with psycopg.connect(libpq_url(str(db))) as con:
            return [tuple(r) for r in con.execute(sql).fetchall()]
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(sql).fetchall()
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


def _json(v: Any) -> Any:
    return json.loads(v) if isinstance(v, str) else v


def mirror_rows(db: Path | str) -> dict[str, dict[str, Any]]:
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


def compare(
    mirror_db: Path | str,
    expected: dict[str, dict[str, Any]],
    *,
    allow_extra: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Every expected request present once with every field equal; no unknown extras."""
    got = mirror_rows(mirror_db)
    missing = sorted(set(expected) - set(got))
    assert not missing, f"{len(missing)} requests missing from the mirror, e.g. {missing[:3]}"
    wrong = []
    for rid, want in expected.items():
        have = got[rid]
        diffs = {f: (have[f], want[f]) for f in FIELDS if have[f] != want[f]}
        if diffs:
            wrong.append((rid, diffs))
    assert not wrong, f"{len(wrong)} requests differ from the server, e.g. {wrong[:2]}"
    extra = set(got) - set(expected) - set(allow_extra)
    assert not extra, (
        f"{len(extra)} requests in the mirror the server never listed, e.g. {sorted(extra)[:3]}"
    )


def _micro(x: float | None) -> int:
    """Millionths, rounded half away from zero as SQLite's round() does."""
    if x is None:
        return 0
    return int(x * 1_000_000 + 0.5) if x >= 0 else -int(-x * 1_000_000 + 0.5)


def integrity_ok(db: Path | str) -> None:
    """The file passes SQLite's integrity check, and on both backends the trigger-kept
    ``summary_hourly`` equals the same sums worked out here from the rows themselves."""
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


def completed_windows(db: Path | str) -> list[tuple[str, datetime, datetime]]:
    if not has_schema(db):
        return []
    return [
        (t, _ts(a), _ts(b))
        for t, a, b in db_query(db, "SELECT target, window_start, window_end FROM sync_windows")
    ]


def database_contains(db: Path | str, needle: str) -> bool:
    """Whether a PostgreSQL database's dump (every table's every value) holds ``needle``."""
    out = subprocess.run(
        ["pg_dump", "--data-only", "--dbname", libpq_url(str(db))],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return needle in out.stdout


def files_contain(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]
