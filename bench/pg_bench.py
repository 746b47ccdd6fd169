"""Backfill throughput: SQLite vs PostgreSQL, and PostgreSQL with 1, 2 and 3 sync processes.

    python bench/pg_bench.py            # 30,000 requests over 2 days, six apps, 3 runs each
    python bench/pg_bench.py --quick    # 8,000 requests

The simulated API (its own process, 127.0.0.1) serves one world of six apps and answers every
call after ``--latency`` (default 50 ms; no rate limit). Each run backfills the whole world
into a new database with ``mirror sync`` as a user runs it (default ``--max-concurrency``):

- ``sqlite x1``: one process into a new SQLite file (the baseline);
- ``pg xN``: N processes started at once into one new PostgreSQL database, sharing the six
  targets through their advisory locks (N = 1, 2, 3).

Throughput is rows stored / wall time from the first process's start to the last one's end
(process start and imports included: on 2 cores three processes starting at once compete
for the CPU), and also rows / the longest sync time the processes report themselves ("sync
only": from the run's start to its end, imports and interpreter start excluded); medians of
``--runs``. Every run is
checked: the mirror holds every row the API lists, each process exited 0; the API calls of
all processes together are printed next to one process's.

PostgreSQL: ``--pg-admin`` (or MIRROR_TEST_PG), default the local server on
/var/run/postgresql as the current user; a database is created per run and dropped after.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import common as c

TARGETS6 = [f"acme/app-{x}" for x in "abcdef"]
SYNC_SECONDS = re.compile(r"calls\) in ([0-9.]+)s")


def pg_admin_url(given: str | None) -> str:
    user = os.environ.get("USER", "root")
    return (
        given
        or os.environ.get("MIRROR_TEST_PG")
        or f"postgresql+psycopg://{user}@/postgres?host=/var/run/postgresql"
    )


class PgDatabases:
    """Fresh databases on one server, dropped at the end."""

    def __init__(self, admin: str) -> None:
        import sqlalchemy as sa

        self.sa = sa
        self.admin = sa.engine.make_url(admin.replace("postgresql://", "postgresql+psycopg://", 1))
        self.engine = sa.create_engine(self.admin, isolation_level="AUTOCOMMIT")
        self.names: list[str] = []

    def fresh(self) -> str:
        name = f"mirror_bench_{uuid.uuid4().hex[:10]}"
        with self.engine.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self.names.append(name)
        return self.admin.set(database=name).render_as_string(hide_password=False)

    def count(self, url: str) -> int:
        e = self.sa.create_engine(url, poolclass=self.sa.pool.NullPool)
        try:
            with e.connect() as conn:
                return int(conn.exec_driver_sql("SELECT count(*) FROM requests").scalar() or 0)
        finally:
            e.dispose()

    def drop_all(self) -> None:
        with self.engine.connect() as conn:
            for name in self.names:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.engine.dispose()


def sync_cmd(server: c.SimServer, db: str) -> list[str]:
    cmd = [c.PY, "-m", "mirror", "sync", "--db", db, "--since", server.since]
    cmd += ["--until", server.until, "--no-recheck"]
    for t in TARGETS6:
        cmd += ["-e", t]
    return cmd


def run_wave(server: c.SimServer, db: str, n: int) -> tuple[float, list[str]]:
    """n sync processes started at once on one database; wall time, their summaries."""
    env = c.sim_env(server.base_url)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            sync_cmd(server, db),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=c.REPO,
        )
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    seconds = time.perf_counter() - t0
    for p, (_out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            sys.exit(f"mirror sync failed ({p.returncode}): {err.strip()[-2000:]}")
    return seconds, [out.strip() for out, _ in outs]


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--latency", type=float, default=0.05)
    p.add_argument("--pg-admin", default=None)
    a = p.parse_args()
    runs = a.runs or 3
    spec = c.WorldSpec(
        requests=8_000 if a.quick else 30_000,
        days=2.0,
        latency=a.latency,
        endpoints=dict.fromkeys(TARGETS6, 1.0),
    )
    admin = pg_admin_url(a.pg_admin)
    c.header(
        "Backfill throughput: SQLite vs PostgreSQL, 1-3 sync processes",
        [
            f"world: {spec.requests:,} requests over {spec.days:g} days, six apps "
            f"({', '.join(TARGETS6)}); API latency {spec.latency * 1000:g} ms per call, no "
            f"rate limit; default --max-concurrency (4) per process; {runs} runs each",
            f"PostgreSQL server: {admin}",
        ],
    )
    tmp = c.workdir(a.tmp, "mirror-pgbench-")
    pg = PgDatabases(admin)
    configs = [("sqlite", 1), ("pg", 1), ("pg", 2), ("pg", 3)]
    seconds: dict[tuple[str, int], list[float]] = {k: [] for k in configs}
    calls: dict[tuple[str, int], list[int]] = {k: [] for k in configs}
    inner: dict[tuple[str, int], list[float]] = {k: [] for k in configs}
    rows: int | None = None
    try:
        with c.SimServer(spec) as server:
            for i in range(runs):
                for backend, n in configs:  # interleaved: drift on the box hits all alike
                    server.clear()
                    if backend == "sqlite":
                        path = tmp / "bench.db"
                        c.remove_db(path)
                        db = str(path)
                    else:
                        db = pg.fresh()
                    s, outs = run_wave(server, db, n)
                    stored = c.last_run(Path(db))["rows"] if backend == "sqlite" else pg.count(db)
                    if rows is None:
                        rows = stored
                    if stored != rows:
                        sys.exit(f"{backend} x{n}: {stored} rows stored, expected {rows}")
                    made = server.log()["calls"]
                    seconds[(backend, n)].append(s)
                    inner[(backend, n)].append(
                        max(float(m.group(1)) for o in outs for m in [SYNC_SECONDS.search(o)] if m)
                    )
                    calls[(backend, n)].append(made)
                    print(
                        f"  run {i + 1}/{runs} {backend} x{n}: {s:.2f}s, {stored / s:,.0f} rows/s, "
                        f"{made} calls | " + " | ".join(outs),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        pg.drop_all()
    assert rows is not None
    base = rows / c.median(seconds[("sqlite", 1)])
    pg1 = rows / c.median(seconds[("pg", 1)])
    inner_base = rows / c.median(inner[("sqlite", 1)])
    table = []
    for backend, n in configs:
        rate = rows / c.median(seconds[(backend, n)])
        sync_rate = rows / c.median(inner[(backend, n)])
        table.append(
            [
                f"{backend} x{n}",
                c.median(seconds[(backend, n)]),
                rate,
                f"{rate / base:.2f}x",
                f"{rate / pg1:.2f}x",
                sync_rate,
                f"{sync_rate / inner_base:.2f}x",
                f"{c.median(calls[(backend, n)]):.0f}",
            ]
        )
    targets = " ".join(f"-e {t}" for t in TARGETS6)
    print(
        f"rows: {rows:,}; each process: `mirror sync --db DB --since SINCE --until UNTIL "
        f"--no-recheck {targets}`\n"
    )
    print(
        c.table(
            [
                "config",
                "wall s",
                "rows/s",
                "vs sqlite x1",
                "vs pg x1",
                "rows/s sync only",
                "vs sqlite x1",
                "API calls",
            ],
            table,
        )
    )


if __name__ == "__main__":
    main()
