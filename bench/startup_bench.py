"""What a command costs before and after its own work: a cron run that finds little to do.

    python bench/startup_bench.py                  # 15 runs of each command
    python bench/startup_bench.py --before DIR     # also another source tree's mirror (e.g.
                                                   # `git archive` of an older commit), same runs

Three commands as a user runs them, each a new process, on a mirror that already holds a
day of three apps (backfilled once, at the start):

- ``mirror --version``: the imports, and the interpreter's teardown at exit;
- ``mirror stats --db DB``: the same, plus opening the mirror (its schema checked) and one
  query over the rollups;
- ``mirror sync --db DB``: a cron run with nothing new, against the simulated API (its own
  process, 127.0.0.1, no latency): a few calls, a short transaction.

The floor, measured in the same runs: an interpreter that imports what every command needs
(sqlalchemy, httpx, click) and exits at once (``os._exit``), doing nothing else. Printed:
the median wall time and CPU time (user + system) of each, and their ratio to the floor.
Runs of the sides alternate, so load on a shared machine falls on all alike.
"""

from __future__ import annotations

import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c

FLOOR = "import sqlalchemy, httpx, click, os; os._exit(0)"
DEFAULT_RUNS = 15


def timed(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one child process run to its end."""
    res = c.run_measured(cmd, env, cwd=cwd)
    if res.code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.code}): {res.stderr[-500:]}")
    return res.seconds, res.cpu_seconds


def main() -> None:
    p = c.base_parser(__doc__)
    p.add_argument("--before", default=None, help="a source tree of mirror to measure beside")
    a = p.parse_args()
    runs = a.runs or (5 if a.quick else DEFAULT_RUNS)
    tmp = c.workdir(a.tmp, "mirror-startup-")
    trees = {"mirror": c.REPO}
    if a.before:
        trees["before"] = Path(a.before).resolve()
    spec = c.WorldSpec(requests=6_000, days=1.0)
    c.header(
        "Startup: what a command costs around its own work",
        [f"a mirror of {spec.requests:,} requests over a day; {runs} runs of each, alternated"],
    )
    with c.SimServer(spec) as server:
        first = tmp / "first.db"
        c.mirror_sync(server, first)
        dbs = {}
        for side in trees:
            dbs[side] = tmp / f"{side}.db"
            shutil.copy(first, dbs[side])
        env = c.sim_env(server.base_url)
        envs = {side: {**env, "PYTHONPATH": str(tree)} for side, tree in trees.items()}
        cases: dict[str, list[tuple[float, float]]] = {}
        for i in range(runs):
            cases.setdefault("floor", []).append(timed([c.PY, "-c", FLOOR], env, c.REPO))
            for side, tree in trees.items():
                for name, args in (
                    ("--version", ["--version"]),
                    ("stats", ["stats", "--db", str(dbs[side])]),
                    ("sync, nothing new", ["sync", "--db", str(dbs[side])]),
                ):
                    cases.setdefault(f"{side}: mirror {name}", []).append(
                        timed([c.PY, "-m", "mirror", *args], envs[side], tree)
                    )
            print(f"  run {i + 1}/{runs}", file=sys.stderr, flush=True)
    floor_wall = statistics.median(w for w, _ in cases["floor"])
    rows = []
    for name, xs in cases.items():
        wall = statistics.median(w for w, _ in xs)
        cpu = statistics.median(u for _, u in xs)
        rows.append([name, wall, cpu, f"{wall / floor_wall:.2f}x"])
    print(c.table(["command", "wall (s, median)", "CPU (s, median)", "wall ÷ the floor"], rows))


if __name__ == "__main__":
    main()
