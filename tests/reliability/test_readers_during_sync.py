"""Real readers next to a real sync: Datasette serving the file, and an idle reader.

- ``mirror browse`` (a real Datasette process, launched exactly as users launch it) serves
  the file while ``mirror sync`` writes to it; a thread asks Datasette's JSON API for pages
  of ``requests`` and for a count all through the sync. Every answer must be a 200 whose
  rows exist on the server and whose counts never go down nor beyond what the server has.
- A reader holds a read transaction open, idle, through a sync that writes many MB of WAL:
  the sync succeeds, the reader's view does not change, and once the reader is gone the WAL
  is cut back under the ``journal_size_limit`` that ``mirror.db`` sets.

The syncs run as real ``python -m mirror`` subprocesses, not forked: this process keeps a
polling thread (and in the second test an SQLite connection) open, which a fork would copy.
"""

from __future__ import annotations

import importlib.util
import itertools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.cli import mirror as mirror_subprocess
from support.cli import serve_browse, terminate, wait_for
from support.compare import assert_mirror_equals, check_consistent
from support.figures import count
from support.sim import env_for, listable, static_world, sync_args

import mirror.db
from mirror.simulator import FaultConfig, SimulatedAPI

# --------------------------------------------------------------------------- Datasette


@pytest.fixture(scope="module")
def rd_world():
    return static_world(seed=131, hours=14, per_hour=60)


@pytest.mark.skipif(importlib.util.find_spec("datasette") is None, reason="needs datasette")
def test_datasette_serving_the_file_answers_consistently_all_through_a_sync(
    tmp_path, rd_world
) -> None:
    db = tmp_path / "m.db"
    expected = listable(rd_world)
    known = set(expected)
    with SimulatedAPI(rd_world, faults=FaultConfig(latency=0.03)) as api:
        env = env_for(api.base_url)
        # the first two hours, so that the file has its schema and Datasette something to show
        first = mirror_subprocess(sync_args(db, "--since", "2h"), env)
        assert first.code == 0, f"the first sync failed: {first.stderr[-1500:]}"
        proc, base = serve_browse(db, env=env)
        # (time, what was asked, status, count, request ids); appended by the poller only
        answers: list[tuple[float, str, int, int | None, list[str]]] = []
        problems: list[str] = []
        stop = threading.Event()

        def ask(client: httpx.Client, what: str, path: str, params: dict[str, Any]) -> None:
            try:
                r = client.get(path, params=params)
            except httpx.HTTPError as e:
                problems.append(f"{what}: {type(e).__name__}: {e}")
                return
            at = time.monotonic()
            if r.status_code != 200:
                answers.append((at, what, r.status_code, None, []))
                problems.append(f"{what}: HTTP {r.status_code}: {r.text[:300]}")
                return
            data = r.json()
            if what == "page":
                n = data.get("filtered_table_rows_count")
                ids = [row["request_id"] for row in data["rows"]]
            else:
                n, ids = data[0]["n"], []
            answers.append((at, what, 200, n, ids))

        def poll() -> None:
            with httpx.Client(base_url=base, timeout=30) as client:
                while not stop.is_set():
                    ask(client, "page", "/m/requests.json", {"_size": "50", "_shape": "objects"})
                    ask(client, "count", "/m.json",
                        {"sql": "SELECT count(*) AS n FROM requests", "_shape": "array"})  # fmt: skip

        poller = threading.Thread(target=poll, daemon=True)
        try:
            poller.start()
            wait_for(lambda: len(answers) >= 2, 60, "Datasette's first answers")
            o = mirror_subprocess(sync_args(db, "--since", "15h", "--max-concurrency", "2"), env)
            sync_ended = time.monotonic()
            # two more rounds after the sync: Datasette must then show the whole mirror
            n_then = len(answers)
            wait_for(lambda: len(answers) >= n_then + 4 or bool(problems), 60, "answers after")
        finally:
            stop.set()
            poller.join(60)
            terminate(proc)
    assert o.code == 0, f"the sync failed while Datasette served the file: {o.stderr[-1500:]}"
    assert not poller.is_alive(), "the poller never stopped"
    assert not problems, f"Datasette failed {len(problems)} times during the sync: {problems[:3]}"
    counts = [(what, n) for _, what, _, n, _ in answers]
    assert all(n is not None for _, n in counts), f"an answer had no count: {counts[:5]}"
    for i, ((w0, a), (w1, b)) in enumerate(itertools.pairwise(counts)):
        assert b >= a, (
            f"Datasette's count went down from {a} ({w0}) to {b} ({w1}), answers {i} and "
            f"{i + 1} of {len(counts)}: {counts[max(0, i - 3) : i + 5]}"
        )
    too_many = [n for _, n in counts if n > len(expected)]
    assert not too_many, f"Datasette counted {too_many[0]} rows; the server has {len(expected)}"
    unknown = sorted({i for *_, ids in answers for i in ids} - known)
    assert not unknown, f"Datasette showed requests the server never listed: {unknown[:3]}"
    pages = [(n, ids) for _, what, _, n, ids in answers if what == "page"]
    short = [(n, len(ids)) for n, ids in pages if len(ids) != min(50, n or 0)]
    assert not short, f"pages whose length disagrees with their count (count, rows): {short[:3]}"
    during = {n for at, _, _, n, _ in answers if at < sync_ended}
    assert len(during) >= 2, (
        f"Datasette saw only the counts {sorted(during)} while the sync ran: it never saw the "
        "sync's progress, so the scenario proves nothing"
    )
    assert counts[-1][1] == len(expected), (
        f"after the sync Datasette counts {counts[-1][1]} rows, the server has {len(expected)}"
    )
    count("Datasette answers during a sync", len(answers))
    assert_mirror_equals(db, expected, context="after a sync under Datasette")
    check_consistent(db, expected, rd_world.config.filter_field)


# --------------------------------------------------------------------------- WAL and an idle reader


def _journal_size_limit(probe: Path) -> int:
    """The ``journal_size_limit`` mirror.db sets on its connections, read back from one."""
    engine = mirror.db.make_engine(str(probe))
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql("PRAGMA journal_size_limit").scalar_one())
    finally:
        engine.dispose()


def test_wal_pinned_by_an_idle_reader_is_cut_back_once_the_reader_is_gone(tmp_path) -> None:
    """An idle reader in a transaction pins the WAL: SQLite may not fold frames back into the
    file under a reader's snapshot, so a big sync grows the WAL past the limit. The sync
    must still succeed and the reader keep its view; once the reader is gone, the next sync
    must leave the WAL within ``journal_size_limit``."""
    limit = _journal_size_limit(tmp_path / "probe.db")
    assert limit > 0, f"mirror.db sets no journal_size_limit ({limit})"
    # ~38,000 requests with payloads: about 90 MiB of WAL frames, well past the limit
    world = static_world(seed=137, hours=24, per_hour=1600, running=0)
    expected = listable(world)
    db = tmp_path / "m.db"
    wal = db.with_name(db.name + "-wal")
    with SimulatedAPI(world) as api:
        env = env_for(api.base_url)
        first = mirror_subprocess(sync_args(db, "--since", "1h"), env)
        assert first.code == 0, f"the first sync failed: {first.stderr[-1500:]}"
        # read-only, as readers are (Datasette, mirror query): closing it cannot checkpoint
        reader = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
        try:
            reader.execute("BEGIN")
            view = reader.execute("SELECT request_id, ended_at FROM requests ORDER BY 1").fetchall()
            # ... and now the reader sits idle in its snapshot through the big sync
            big = mirror_subprocess(sync_args(db, "--since", "25h"), env)
            held = wal.stat().st_size
            again = reader.execute(
                "SELECT request_id, ended_at FROM requests ORDER BY 1"
            ).fetchall()
            reader.execute("COMMIT")
        finally:
            reader.close()
        assert big.code == 0, f"the sync failed with an idle reader: {big.stderr[-1500:]}"
        assert big.stderr == "", f"the sync complained about the idle reader: {big.stderr!r}"
        assert again == view, (
            f"the idle reader's view changed under it: {len(view)} rows, then {len(again)}"
        )
        assert held > limit, (
            f"the WAL reached only {held} bytes while the reader held it, not past the "
            f"{limit}-byte limit: the scenario proves nothing (make the world bigger)"
        )
        left = wal.stat().st_size if wal.exists() else 0
        assert left == held, (
            f"closing the read-only reader changed the WAL ({held} -> {left} bytes): the "
            "next sync would have nothing to prove"
        )
        nxt = mirror_subprocess(sync_args(db, "--since", "25h"), env)
        assert nxt.code == 0, f"the sync after the reader left failed: {nxt.stderr[-1500:]}"
        after = wal.stat().st_size if wal.exists() else 0
    assert after <= limit, (
        f"with the reader gone, the next sync left a {after}-byte WAL (it was {held} bytes "
        f"while the reader held it); journal_size_limit is {limit} bytes"
    )
    count("MiB of WAL pinned by an idle reader, then cut back", held // 2**20)
    assert_mirror_equals(db, expected, context="after a sync past an idle reader")
    check_consistent(db, expected, world.config.filter_field)
