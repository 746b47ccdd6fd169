"""Helpers of the query-side tests: rows, databases, subprocesses.

Databases are filled through the real write path (`Store.open` migrates, `Store.upsert`
writes), so the triggers, the FTS index and the summaries are exercised exactly as a sync
exercises them. `make_rows` makes rows with the awkward cases on purpose: ties in time and
duration, unfinished rows, null payloads and billing, app ids with routes, ids with ``_``,
non-ASCII prompts.
"""

from __future__ import annotations

import random
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from mirror.schema import derive_status
from mirror.store import Store
from mirror.timeparse import to_text

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
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


def cli_main(args: Sequence[str]) -> list[str]:
    """argv for running `mirror` with the offline commands in a subprocess."""
    code = (
        "import sys; from mirror.cli import cli; from mirror.commands_query import register; "
        "register(cli); cli(sys.argv[1:], prog_name='mirror')"
    )
    return [sys.executable, "-c", code, *args]


def make_rows(n: int, *, seed: int = 1, start: datetime | None = None) -> list[tuple[Any, ...]]:
    """Rows for `Store.upsert`: API_FIELDS order plus status."""
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
        rows.append((*row, derive_status(row[5], row[6])))
    return rows


def fill(path: Path, rows: Sequence[tuple[Any, ...]], *, now: datetime = NOW) -> None:
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

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()
        tidy_wal(path)


def folder_state(folder: Path) -> dict[str, bytes]:
    """Every file of a folder and its bytes (the -shm index of a WAL file excluded)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if not p.name.endswith("-shm")}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


SIM_ENDPOINTS = ["acme/flux-lora", "acme/flux-lora/turbo", "acme/upscaler", "acme/whisper-v3"]
SIM_TARGETS = ["acme/flux-lora", "acme/upscaler", "acme/whisper-v3"]


def sim_env(base_url: str) -> dict[str, str]:
    import os

    from mirror.simulator import DEFAULT_KEY

    env = {k: v for k, v in os.environ.items() if not k.startswith(("FAL_", "MIRROR_"))}
    env.update(MIRROR_BASE_URL=base_url, FAL_KEY=DEFAULT_KEY, MIRROR_RETRY_BASE="0.01",
               MIRROR_RETRY_CAP="0.2")  # fmt: skip
    return env


def sync_args(path: Path, *, days: int) -> list[str]:
    args = ["sync", "--db", str(path), "--since", f"{days}d", "-q"]
    for t in SIM_TARGETS:
        args += ["--endpoint", t]
    return args


def sync_from_simulator(path: Path, *, seed: int, days: int, requests_per_hour: float) -> None:
    """Serve a generated world on 127.0.0.1 and run `mirror sync` against it, for real."""
    from mirror.simulator import SimulatedAPI, generate_world

    world = generate_world(seed=seed, now=datetime.now(UTC), days=days + 0.5,
                           endpoints=SIM_ENDPOINTS, requests_per_hour=requests_per_hour)  # fmt: skip
    with SimulatedAPI(world) as api:
        p = subprocess.run(
            [sys.executable, "-m", "mirror", *sync_args(path, days=days)],
            env=sim_env(api.base_url), capture_output=True, text=True, timeout=240,
        )  # fmt: skip
    assert p.returncode == 0, f"mirror sync failed: {p.stderr}"
