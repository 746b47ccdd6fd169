"""A first backfill killed at random moments, then left to cron: how many requests are missing?

    python bench/first_backfill_bench.py                 # 10 trials
    python bench/first_backfill_bench.py --trials 30 --kills 6

Each trial: a static simulated world of three endpoints with ~73 hours of history
(~13,000 requests); `mirror sync -e … --since 73h` is started and SIGKILLed at a seeded
random moment ``--kills`` times (a reboot, an OOM kill, a deploy), then two bare
`mirror sync` runs follow, as cron would run them. The figure is the number of requests
the server lists that the mirror does not hold at the end (the target: 0 in every trial),
and how many trials ended with `mirror status` reporting a gap it should (none left).
Timings are printed, never judged.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' shared helpers: the support package

from support.cli import run_cli  # noqa: E402
from support.compare import stored_ids  # noqa: E402
from support.sim import TARGETS, env_for, listable, static_world, sync_args  # noqa: E402

from mirror.simulator import FaultConfig, SimulatedAPI  # noqa: E402


def trial(work: Path, seed: int, kills: int) -> tuple[int, int, int, int]:
    """(requests the server lists, missing at the end, kills that landed, gaps reported)."""
    rng = random.Random(seed)
    world = static_world(seed=seed, hours=73, per_hour=180, big_tie_group=0)
    db = work / "m.db"
    landed = 0
    with SimulatedAPI(world, faults=FaultConfig(seed=seed, latency=0.002)) as api:
        env = env_for(api.base_url)
        for _ in range(kills):
            r = run_cli(sync_args(db, "--since", "73h"), env, work,
                        kill_after=rng.uniform(0.05, 2.0), sig=signal.SIGKILL)  # fmt: skip
            landed += r.killed
        for _ in range(2):
            r = run_cli(["sync", "--db", str(db), "-q"], env, work, no_second_wait=True)
            if r.code != 0:
                raise SystemExit(f"a bare run failed: {r.stderr}")
        st = run_cli(["status", "--db", str(db), "--format", "json"], env, work)
        gaps = sum(len(t["gaps"]) for t in json.loads(st.stdout)) if st.code == 0 else -1
    want = {rid for rid, rec in listable(world).items()
            if any(rec["endpoint_id"].startswith(t) for t in TARGETS)}  # fmt: skip
    return len(want), len(want - stored_ids(db)), landed, gaps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kills", type=int, default=6, help="kills of the first backfill per trial")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    missing: list[int] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mirror-first-backfill-") as tmp:
        for i in range(args.trials):
            work = Path(tmp) / f"t{i}"
            work.mkdir()
            listed, lost, landed, gaps = trial(work, args.seed + i, args.kills)
            missing.append(lost)
            print(f"trial {i + 1}: {listed} listed, {landed}/{args.kills} kills landed mid-run, "
                  f"{lost} missing after two bare runs, {gaps} gaps reported", flush=True)  # fmt: skip
    print(
        f"{args.trials} trials in {time.monotonic() - t0:.0f}s: missing requests per trial "
        f"median {statistics.median(missing)}, max {max(missing)}, "
        f"trials with any missing {sum(1 for m in missing if m)}"
    )
    return 1 if any(missing) else 0


if __name__ == "__main__":
    raise SystemExit(main())
