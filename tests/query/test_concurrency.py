"""Reading while cron syncs: the `sqlite3` shell and `mirror query`/`stats` during a real sync.

Neither side may fail with "database is locked" while the sync runs (the shell, which waits
for nothing, may at the instant the sync closes the file: docs/querying.md), and once the
sync is done the summaries and the search index it maintained on the way are exact.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from datetime import UTC, datetime

import pytest
from support.cli import spawn
from support.compare import derived_tables_exact
from support.rows import read_all
from support.sim import ENDPOINTS, fast_env, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI, generate_world

SHELL_SQL = (
    "SELECT count(*) FROM requests; "
    "SELECT count(*) FROM request_log WHERE status = 'error'; "
    "SELECT sum(requests) FROM daily_usage; "
    "SELECT count(*) FROM requests_fts WHERE requests_fts MATCH 'Zürich';"
)


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 shell is not installed")
def test_the_shell_and_mirror_read_while_a_sync_writes(tmp_path, run_cli):
    db = tmp_path / "live.db"
    world = generate_world(seed=8, now=datetime.now(UTC), days=4.5, endpoints=list(ENDPOINTS),
                           requests_per_hour=500)  # fmt: skip
    # 20 ms per page keeps the (fast) sync going long enough for several rounds of reads
    with SimulatedAPI(world, faults=FaultConfig(latency=0.02)) as api:
        sync = spawn(sync_args(db, "--since", "4d", "-q"), fast_env(api.base_url))
        shell_runs, mirror_runs, during, counts = 0, 0, 0, []
        try:
            while not db.exists() or not _has_schema(db):
                assert sync.poll() is None, (
                    f"the sync ended before creating the schema: {sync.stderr.read() if sync.stderr else ''}"
                )
                time.sleep(0.05)
            while True:
                running = sync.poll() is None
                shell = subprocess.run(
                    ["sqlite3", str(db), SHELL_SQL], capture_output=True, text=True, timeout=60
                )
                if "database is locked" in shell.stderr and _run_ended(db):
                    # the one instant SQLite itself turns away a reader with no busy timeout:
                    # the sync's last connection closing the file (docs/querying.md)
                    continue
                assert shell.returncode == 0 and not shell.stderr, (
                    f"sqlite3 shell failed while the sync was running: {shell.stderr}"
                )
                counts.append(int(shell.stdout.split()[0]))
                shell_runs += 1
                for args in (["query", "-n", "5", "--format", "json", "-s", "error"],
                             ["stats", "--by", "endpoint", "--format", "json"]):  # fmt: skip
                    out = run_cli([*args, "--db", str(db)])
                    assert out.exit_code == 0, (
                        f"mirror {args[0]} failed during the sync: {out.output}"
                    )
                    json.loads(out.stdout)
                    mirror_runs += 1
                during += running and sync.poll() is None
                if not running:
                    break
        finally:
            _, err = sync.communicate(timeout=240)
    assert sync.returncode == 0, f"the sync failed while being read: {err}"
    assert "locked" not in err, err
    assert during >= 2, f"only {during} rounds of reads overlapped the sync; the test proved little"
    assert counts == sorted(counts), f"a reader saw rows disappear: {counts}"
    (final,) = read_all(db, "SELECT count(*) FROM requests")
    assert counts[-1] == final[0]
    derived_tables_exact(db)


def _run_ended(db) -> bool:
    """Whether the sync has recorded its end, which it does before it closes the file."""
    return bool(read_all(db, "SELECT 1 FROM sync_runs WHERE ended_at IS NOT NULL"))


def _has_schema(db) -> bool:
    try:
        return bool(read_all(db, "SELECT 1 FROM sqlite_master WHERE name = 'request_log'"))
    except Exception:
        return False
