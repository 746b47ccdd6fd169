"""How often a `sqlite3` shell is turned away ("database is locked") while syncs write.

    python bench/shell_bench.py                 # 12 syncs
    python bench/shell_bench.py --runs 30
    python bench/shell_bench.py --before DIR    # also another source tree's mirror (e.g.
                                                # `git archive` of an older commit), same run

Each run starts a fresh `mirror sync` (4 days at 500 requests per hour over three apps, 20 ms
per call) and, from the moment its file holds the schema until after the process has
exited, runs the `sqlite3` shell back to back, with no busy timeout, as people run it.
A refusal is counted as "while writing" if the sync had not yet recorded its end in
`sync_runs`, else as "at the close": the instant SQLite holds the file exclusively to
fold in and delete the WAL of its last connection. The first kind should never happen.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ENDPOINTS,
    PY,
    REPO,
    TARGETS,
    base_parser,
    header,
    remove_db,
    sim_env,
    table,
    verdict,
    workdir,
)

from mirror.simulator import FaultConfig, SimulatedAPI, generate_world

#: what the suite's shell test reads: counts, a rollup and a full-text search
SHELL_SQL = (
    "SELECT count(*) FROM requests; "
    "SELECT count(*) FROM request_log WHERE status = 'error'; "
    "SELECT sum(requests) FROM daily_usage; "
    "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'Zürich';"
)


def _holds(db: Path, sql: str) -> bool:
    """Whether ``sql`` finds a row in ``db`` (False while the file has no such table)."""
    if not db.exists() or db.stat().st_size == 0:
        return False
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return bool(con.execute(sql).fetchone())
    except sqlite3.Error:
        return False
    finally:
        con.close()


def one_sync(base_url: str, db: Path, code: Path) -> dict[str, int]:
    """One sync read by shells from start to exit: shells run, refusals of each kind."""
    remove_db(db)
    env = sim_env(base_url)
    env["PYTHONPATH"] = str(code)
    cmd = [PY, "-m", "mirror", "sync", "--db", str(db), "--since", "4d", "-q"]
    for t in TARGETS:
        cmd += ["-e", t]
    sync = subprocess.Popen(cmd, env=env, cwd=code, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = {"shells": 0, "while writing": 0, "at the close": 0}
    while not _holds(db, "SELECT 1 FROM sqlite_master WHERE name = 'sync_runs'"):
        if sync.poll() is not None:
            raise RuntimeError(f"the sync ended early: {sync.stderr.read().decode()[-1500:]}")
        time.sleep(0.01)
    exited_at = None
    while exited_at is None or time.monotonic() < exited_at + 0.3:
        r = subprocess.run(["sqlite3", str(db), SHELL_SQL], capture_output=True, text=True)
        out["shells"] += 1
        if "locked" in r.stderr:
            ended = _holds(db, "SELECT 1 FROM sync_runs WHERE ended_at IS NOT NULL")
            out["at the close" if ended else "while writing"] += 1
        elif r.returncode:
            raise RuntimeError(f"the shell failed otherwise: {r.stderr}")
        if exited_at is None and sync.poll() is not None:
            exited_at = time.monotonic()
    if sync.wait() != 0:
        raise RuntimeError(f"the sync failed: {sync.stderr.read().decode()[-1500:]}")
    return out


def main() -> None:
    p = base_parser(__doc__)
    p.add_argument("--before", type=Path, default=None, help="another source tree, run too")
    a = p.parse_args()
    runs = a.runs or (4 if a.quick else 12)
    tmp = workdir(a.tmp, "shell-bench-")
    header("The sqlite3 shell beside a sync: refusals", [f"{runs} syncs per side"])
    sides: dict[str, Path] = {"mirror": REPO}
    if a.before:
        sides["before"] = a.before.resolve()
    world = generate_world(seed=8, now=datetime.now(UTC), days=4.5, endpoints=list(ENDPOINTS),
                           requests_per_hour=500)  # fmt: skip
    totals: dict[str, dict[str, Any]] = {
        s: {"shells": 0, "while writing": 0, "at the close": 0, "syncs refused": 0} for s in sides
    }
    with SimulatedAPI(world, faults=FaultConfig(latency=0.02)) as api:
        for i in range(runs):
            for side, code in sides.items():  # alternated, so load falls on both alike
                got = one_sync(api.base_url, tmp / f"{side}.db", code)
                for k, v in got.items():
                    totals[side][k] += v
                totals[side]["syncs refused"] += bool(got["at the close"] + got["while writing"])
                print(f"run {i + 1} {side}: {got}", flush=True)
    rows = [
        [side, t["shells"], t["while writing"], t["at the close"], f"{t['syncs refused']}/{runs}"]
        for side, t in totals.items()
    ]
    print()
    print(table(["code", "shells run", "refused while writing", "refused at the close",
                 "syncs with a refusal"], rows))  # fmt: skip
    clean = all(t["while writing"] == 0 for t in totals.values())
    print(f"\ntarget: no refusal while the sync writes: {verdict(clean)}")


if __name__ == "__main__":
    main()
