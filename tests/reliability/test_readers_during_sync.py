"""Real readers next to a real sync: Datasette serving the file.

- ``mirror browse`` (a real Datasette process, launched exactly as users launch it) serves
  the file while ``mirror sync`` writes to it; a thread asks Datasette's JSON API for pages
  of ``requests`` and for a count all through the sync. Every answer must be a 200 whose
  rows exist on the server and whose counts never go down nor beyond what the server has.

The syncs run as real ``python -m mirror`` subprocesses, not forked: this process keeps a
polling thread open, which a fork would copy.
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from e2e.harness import mirror as mirror_subprocess
from query.helpers import free_port, terminate

from mirror.simulator import FaultConfig, SimulatedAPI

from .rel_helpers import (
    assert_mirror_equals,
    check_consistent,
    count,
    env_for,
    listable,
    static_world,
    sync_args,
    wait_for,
)

# --------------------------------------------------------------------------- Datasette


@pytest.fixture(scope="module")
def rd_world():
    return static_world(seed=131, hours=14, per_hour=60)


def _start_browse(db: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`mirror browse` on a free loopback port; returns it and its base URL once it answers."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mirror", "browse", "--db", str(db), "--port", str(port)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{base}/-/versions.json", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            terminate(proc)
            out = proc.stdout.read() if proc.stdout else ""
            pytest.fail(f"`mirror browse` did not start serving {db}: {out[-2000:]}")
        time.sleep(0.1)


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
        proc, base = _start_browse(db, env)
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
