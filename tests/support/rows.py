"""Made-up rows for the query-side tests, written through the real write path.

Databases are filled through the real write path (`Store.open` migrates, `Store.upsert`
writes), so the triggers, the FTS index and the summaries are exercised exactly as a sync
exercises them. `make_rows` makes rows with the awkward cases on purpose: ties in time and
duration, unfinished rows, null payloads and billing, app ids with routes, ids with ``_``,
non-ASCII prompts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy.engine import Connection

from mirror.records import Row, derive_status
from mirror.schema import sync_targets
from mirror.store import Store
from mirror.timeparse import to_text
from support.compare import db_query
from support.sim import NOW

ENDPOINTS = (
    "acme/flux-lora",
    "acme/flux-lora/edit",
    "acme/flux-lora-xl",  # shares a prefix with the app id, but is not one of its routes
    "acme/upscaler",
    "beta/sd_xl",  # '_' is a LIKE wildcard: must not match beta/sdaxl
    "beta/sdaxl",
)
WORDS = ("lighthouse", "harbor", "dusk", "neon", "forest", "castle", "dragon", "ocean")
NON_ASCII = ("Leuchtturm über Kiel", "phare à Saint-Malo", "маяк на рассвете", "Ålesund fyrtårn")


def make_rows(n: int, *, seed: int = 1, start: datetime | None = None) -> list[Row]:
    """Rows for `Store.upsert`."""
    rnd = random.Random(seed)
    t0 = start or NOW - timedelta(days=3)
    rows = []
    for i in range(n):
        ep = rnd.choice(ENDPOINTS)
        # coarse times and durations, so ties in ended_at and duration are common
        sent = t0 + timedelta(minutes=rnd.randrange(3 * 24 * 60 // 5) * 5)
        started = sent + timedelta(seconds=rnd.choice((0, 1, 2)))
        duration: float | None = rnd.choice((0.5, 1.25, 2.0, 3.5, 7.0, 12.25, 30.0))
        ended: datetime | None = started + timedelta(seconds=duration or 0)
        code: int | None = rnd.choice((200, 200, 200, 200, 201, 302, 400, 404, 422, 500, 503))
        if rnd.random() < 0.08:
            ended, code, duration = None, None, None
        elif rnd.random() < 0.03:
            code = None  # ended without a code: unfinished by derive_status
        if rnd.random() < 0.15:
            prompt = NON_ASCII[rnd.randrange(len(NON_ASCII))]
        else:
            prompt = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 4)))
        payload = rnd.random()
        json_input = orjson.dumps({"prompt": prompt, "seed": i}).decode() if payload > 0.1 else None
        json_output = (
            orjson.dumps(
                {"images": [{"url": f"https://fal.media/{i}.png"}], "text": prompt}
            ).decode()
            if payload > 0.3 and code == 200
            else None
        )
        billable = rnd.choice((None, 0.5, 1.0, 0.1, 2.25)) if ended else None
        row = (
            f"req-{seed}-{i:05d}", ep, f"runner-{rnd.randrange(4)}", to_text(sent),
            to_text(started), to_text(ended) if ended else None, code, duration, billable,
            json_input, json_output,
        )  # fmt: skip
        rows.append(Row(*row, derive_status(row[5], row[6])))
    return rows


def fill(path: Path, rows: Sequence[Row], *, now: datetime = NOW) -> None:
    store = Store.open(str(path))
    try:
        for i in range(0, len(rows), 500):
            with store.engine.begin() as conn:
                store.upsert(conn, rows[i : i + 500], payloads=True, billing=True, now=to_text(now))
    finally:
        store.close()


def read_all(path: Path, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Rows of a read-only query, leaving the folder as it was (no stray -wal file)."""
    from mirror.db import tidy_wal

    try:
        return db_query(path, sql, params)
    finally:
        tidy_wal(path)


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes (the -shm index of a WAL file excluded)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith("-shm")}


def add_targets(conn: Connection, targets: Iterable[str], now: str) -> None:
    """Sync targets with no stored start (``requested_from`` NULL), as a mirror synced before
    targets stored one holds them; the start a sync stores: ``Store.request_range``."""
    conn.execute(sync_targets.insert(), [{"target": t, "added_at": now} for t in targets])
