"""`mirror demo`: the whole product in one command, with no key and no network.

Starts the simulated API and its media CDN on free loopback ports, syncs a few days of
both histories into a fresh file over real HTTP, as `mirror sync` does: the account's
apps (`TARGETS`) and the key's calls to two of fal's hosted models (`MODELS`), then what
they were billed, the prices quoted and fal's usage totals (``mirror.cost_sync``, the
sync's own cost step). It archives the files of the latest requests' outputs
(``mirror media``), and prints what a user can now ask offline, spend per day included.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from mirror import output
from mirror.api import FalClient, make_http_client
from mirror.cost import TABLE_COLUMNS, CostFilters, spend, spend_notes
from mirror.db import reader_engine
from mirror.errors import StoreError
from mirror.media import ArchiveOptions
from mirror.media_db import MediaFilters
from mirror.media_files import default_media_dir
from mirror.pacing import Pacer
from mirror.runs import media_mirror
from mirror.sqlitefile import connect_readonly
from mirror.store import Store
from mirror.sync import SyncOptions, sync
from mirror.timeparse import utcnow

#: the apps the demo syncs (the simulated world's endpoints, routes included)
TARGETS = ("acme/flux-lora", "acme/upscaler", "acme/whisper-v3")
#: the hosted models it syncs the key's calls to (``mirror.simulator.generate.DEMO_MODELS``)
MODELS = ("fal-ai/flux/dev", "fal-ai/flux/schnell")
#: the latest successful requests whose outputs get files on the simulated CDN
MEDIA_REQUESTS = 24
EXAMPLES = [
    (
        "Requests per history and endpoint",
        "SELECT history, endpoint_id, count(*) AS n, sum(status = 'success') AS success, "
        "sum(status = 'user_error') AS user_error, sum(status = 'error') AS error "
        "FROM requests GROUP BY history, endpoint_id ORDER BY history DESC, endpoint_id",
    ),
    (
        "The five slowest requests",
        "SELECT request_id, endpoint_id, round(duration, 1) AS seconds, ended_at FROM requests "
        "WHERE duration IS NOT NULL ORDER BY duration DESC LIMIT 5",
    ),
    (
        "Archived output files (mirror media)",
        "SELECT r.request_id, r.path, f.size, f.content_type, substr(r.sha256, 1, 12) AS file "
        "FROM media_refs r JOIN media_files f ON f.sha256 = r.sha256 "
        "ORDER BY r.request_id DESC LIMIT 5",
    ),
    (
        "Billable units per day",
        "SELECT substr(ended_at, 1, 10) AS day, round(sum(billable_units), 2) AS units, "
        "count(*) AS requests FROM requests WHERE ended_at IS NOT NULL GROUP BY day ORDER BY day",
    ),
]


def _fresh(path: Path) -> None:
    """Start from an empty file; replace an earlier demo's, never anything else."""
    if not path.exists():
        return
    try:
        con = connect_readonly(path)
        try:
            targets = [r[0] for r in con.execute("SELECT target FROM sync_targets")]
        finally:
            con.close()
    except sqlite3.Error:
        targets = ["?"]
    if any(t not in (*TARGETS, *MODELS) for t in targets):
        raise StoreError(f"{path} exists and is not a demo database; pass another --db")
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    media = default_media_dir(path)
    if media.is_dir() and not media.is_symlink():
        shutil.rmtree(media)


def spend_per_day(path: Path) -> list[str]:
    """`mirror cost --by day`'s table for the file, as lines, then its notes."""
    engine = reader_engine(str(path))
    try:
        with engine.connect() as conn:
            rows = spend(conn, CostFilters(), by=["day"])
    finally:
        engine.dispose()
    columns = ["day", *TABLE_COLUMNS]
    table = output.aligned(columns, ([r[c] for c in columns] for r in rows))
    return [*table, *(f"mirror: note: {n}" for n in spend_notes(rows))]


def run_demo(
    path: Path,
    *,
    echo: Callable[[str], None] = print,
    days: int = 3,
    frozen: datetime | None = None,
) -> None:
    """The demo into ``path``. ``frozen``: the simulated API's clock stands still at that
    instant (so its answers cannot move while a test compares them with the mirror)."""
    from mirror.simulator import (
        DEFAULT_KEY,
        ManualClock,
        SimulatedAPI,
        SimulatedCDN,
        WorldConfig,
        attach_media,
        demo_world,
    )

    _fresh(path)
    now = frozen or utcnow()
    world = demo_world(now, config=WorldConfig(clock=ManualClock(now)) if frozen else None)
    echo(
        f"Simulated fal API: {days} days of requests to {', '.join(TARGETS)} (your apps) "
        f"and {', '.join(MODELS)} (fal's hosted models, billed per request)"
    )
    with SimulatedCDN(clock=world.config.clock) as cdn, SimulatedAPI(world) as api:
        attached = attach_media(world, cdn, count=MEDIA_REQUESTS, now=now)
        echo(f"  serving on {api.base_url}, its files on {cdn.base_url} (loopback only)")
        store = Store.open(str(path))
        try:
            # its own server on loopback: no proxy of the environment stands in between
            with make_http_client(env={}) as http:
                client = FalClient(http, DEFAULT_KEY, base_url=api.base_url, pacer=Pacer(4))
                opts = SyncOptions(
                    targets=[*TARGETS, *MODELS],
                    histories=dict.fromkeys(MODELS, "model"),
                    since=now - timedelta(days=days),
                )
                report = sync(store, client, opts)
        finally:
            store.close()
        echo(f"  {report.summary()}")
        echo(f"  into {path}")
        billed = report.cost
        if billed is not None:  # None only when another process mirrors cost (PostgreSQL)
            usage = ""
            if billed.usage_checked:
                agree = "differ (table usage_checks)" if billed.differences else "agree"
                usage = f"; fal's usage totals {agree}"
            echo(
                f"  billing: {billed.events_new} billing events of the key's calls to "
                f"{', '.join(MODELS)}; {billed.prices_added} prices{usage}"
            )
        media = media_mirror(
            str(path),
            ArchiveOptions(filters=MediaFilters(since=attached.since)),
            base_url=api.base_url,
            env={},
        )
    echo(f"  {media.summary()}")
    echo(f"  into {default_media_dir(path)}/ (mirror media; expired and lying files on purpose)\n")
    con = connect_readonly(path)
    try:
        for title, sql in EXAMPLES:
            echo(f"{title}:\n  {sql}")
            cur = con.execute(sql)
            lines = output.aligned([d[0] for d in cur.description], cur.fetchall())
            for line in lines[:13]:  # the header and at most 12 rows
                echo("    " + line)
            echo("")
    finally:
        con.close()
    echo(f"Spend per day (mirror cost --db {path} --by day):")
    for line in spend_per_day(path):
        echo("    " + line)
    echo("")
    echo("Browse it yourself:")
    echo(f"  sqlite3 {path} 'SELECT endpoint_id, status, duration FROM requests LIMIT 10'")
    echo(f"  pip install datasette && datasette {path}")
    echo(f"  mirror media --db {path} --stats")
    echo("Mirror your own history: export FAL_KEY=...; mirror sync --endpoint owner/app --since 7d")
