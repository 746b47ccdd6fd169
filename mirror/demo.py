"""`mirror demo`: the whole product in one command, with no key and no network.

Starts the simulated API on a free loopback port, syncs a few days of several endpoints
into a fresh file over real HTTP, and prints what a user can now ask offline.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from mirror import output
from mirror.api import FalClient, make_http_client
from mirror.errors import StoreError
from mirror.pacing import Pacer
from mirror.sqlitefile import connect_readonly
from mirror.store import Store
from mirror.sync import SyncOptions, sync
from mirror.timeparse import utcnow

#: the apps the demo syncs (the simulated world's endpoints, routes included)
TARGETS = ("acme/flux-lora", "acme/upscaler", "acme/whisper-v3")
EXAMPLES = [
    (
        "Requests per endpoint and status",
        "SELECT endpoint_id, status, count(*) AS n FROM requests "
        "GROUP BY endpoint_id, status ORDER BY endpoint_id, n DESC",
    ),
    (
        "The five slowest requests",
        "SELECT request_id, endpoint_id, round(duration, 1) AS seconds, ended_at FROM requests "
        "WHERE duration IS NOT NULL ORDER BY duration DESC LIMIT 5",
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
    if any(not t.startswith("acme/") for t in targets):
        raise StoreError(f"{path} exists and is not a demo database; pass another --db")
    for suffix in ("", "-wal", "-shm", ".lock"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def run_demo(path: Path, *, echo: Callable[[str], None] = print, days: int = 3) -> None:
    from mirror.simulator import DEFAULT_KEY, SimulatedAPI, demo_world

    _fresh(path)
    now = utcnow()
    world = demo_world(now)
    echo(f"Simulated fal API: {days} days of requests to {', '.join(TARGETS)}")
    with SimulatedAPI(world) as api:
        echo(f"  serving on {api.base_url} (loopback only)")
        store = Store.open(str(path))
        try:
            # its own server on loopback: no proxy of the environment stands in between
            with make_http_client(env={}) as http:
                client = FalClient(http, DEFAULT_KEY, base_url=api.base_url, pacer=Pacer(4))
                opts = SyncOptions(targets=TARGETS, since=now - timedelta(days=days))
                report = sync(store, client, opts)
        finally:
            store.close()
    echo(f"  {report.summary()}")
    echo(f"  into {path}\n")
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
    echo("Browse it yourself:")
    echo(f"  sqlite3 {path} 'SELECT endpoint_id, status, duration FROM requests LIMIT 10'")
    echo(f"  pip install datasette && datasette {path}")
    echo("Mirror your own history: export FAL_KEY=...; mirror sync --endpoint owner/app --since 7d")
