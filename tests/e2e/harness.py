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
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def server_record(item: dict[str, Any]) -> dict[str, Any]:
    """What the mirror must hold for an API item, in comparable form."""
    out = {f: item.get(f) for f in FIELDS}
    for f in TS:
        out[f] = _ts(out[f])
    return out


def has_schema(db: Path) -> bool:
    """False if a kill came before the first migration committed (the file is then empty)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute(
            "SELECT count(*) FROM sqlite_master WHERE name = 'requests'"
        ).fetchone() == (1,)
    finally:
        con.close()


def mirror_rows(db: Path) -> dict[str, dict[str, Any]]:
    if not has_schema(db):
        return {}
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        cur = con.execute(f"SELECT {', '.join(FIELDS)} FROM requests")
        rows = cur.fetchall()
        n_distinct = con.execute("SELECT count(DISTINCT request_id) FROM requests").fetchone()[0]
    finally:
        con.close()
    assert n_distinct == len(rows), "a request_id is stored twice"
    out = {}
    for r in rows:
        d = dict(zip(FIELDS, r, strict=True))
        for f in TS:
            d[f] = _ts(d[f])
        for f in ("json_input", "json_output"):
            d[f] = json.loads(d[f]) if d[f] is not None else None
        out[d["request_id"]] = d
    return out


def compare(
    mirror_db: Path,
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


def integrity_ok(db: Path) -> None:
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)], (
            "integrity_check failed"
        )
    finally:
        con.close()


def completed_windows(db: Path) -> list[tuple[str, datetime, datetime]]:
    if not has_schema(db):
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [
            (t, _ts(a), _ts(b))
            for t, a, b in con.execute("SELECT target, window_start, window_end FROM sync_windows")
        ]
    finally:
        con.close()


def files_contain(folder: Path, needle: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes()]
