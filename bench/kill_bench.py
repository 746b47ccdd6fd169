"""Kill trials by the hundred or thousand: the CI suite's random SIGKILL test, scaled up.

    python bench/kill_bench.py                      # 500 kills (50 mirror files x 10)
    python bench/kill_bench.py --trials 5000        # more
    python bench/kill_bench.py --signal term        # SIGTERM instead (systemd's stop)

Each chain is one mirror file and one static simulated world (light faults and latency,
rotating through the four readings of the API); each trial runs the real CLI (forked) on it
and kills it at a seeded random moment (trials go on until the requested number of kills
have landed while a sync was running), then checks the file: integrity, no duplicate, every
row equal to the server's, no window marked complete without its rows. A chain ends with a
clean run that must leave the mirror equal to the server. Prints trials, kills that landed
mid-run, where they landed, faults injected, and rows lost (the README's figures).
Any failed check stops the bench with its message. Timings are printed, never judged.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the tests' support package: its kill trials

from support.kill_trials import ChainResult, kill_chain  # noqa: E402

SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM, "int": signal.SIGINT}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=500,
                    help="kills landing mid-run, in total (default 500); runs that finish "
                    "before their signal are extra trials")  # fmt: skip
    ap.add_argument("--per-chain", type=int, default=10, help="kills per mirror file")
    ap.add_argument("--signal", choices=sorted(SIGNALS), default="kill")
    ap.add_argument("--first-chain", type=int, default=100,
                    help="seed of the first chain (CI uses 0-7; the bench starts elsewhere)")  # fmt: skip
    ap.add_argument("--keep-going", action="store_true",
                    help="on a failed check, report it and go on with the next chain")  # fmt: skip
    args = ap.parse_args()
    failures: list[str] = []
    sig = SIGNALS[args.signal]
    chains = max(1, -(-args.trials // args.per_chain))
    total = ChainResult()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="mirror-kill-bench-") as tmp:
        for c in range(chains):
            chain = args.first_chain + c
            n = min(args.per_chain, args.trials - c * args.per_chain)
            work = Path(tmp) / f"chain{chain}"
            work.mkdir()
            try:
                res = kill_chain(work, chain=chain, kills=n, sig=sig)
            except AssertionError as e:
                if not args.keep_going:
                    raise
                failures.append(f"chain {chain}: {e}")
                print(f"chain {chain}: FAILED: {str(e).splitlines()[0][:200]}", flush=True)
                continue
            total.add(res)
            print(
                f"chain {chain}: {res.trials} trials, {res.landed} landed, "
                f"{res.faults} faults, {res.rows_lost} rows lost",
                flush=True,
            )
    elapsed = time.monotonic() - t0
    print()
    print(f"signal:                 SIG{args.signal.upper()}")
    print(f"trials:                 {total.trials} over {chains} mirror files")
    print(f"kills landed mid-run:   {total.landed}")
    print(f"runs done before kill:  {total.finished}")
    for phase, n in sorted(total.phases.items()):
        print(f"  landed {phase}: {n}")
    print(f"faults injected:        {total.faults}")
    print(f"rows checked per chain: {total.rows_expected // max(1, chains)} (avg)")
    print(f"rows lost:              {total.rows_lost}")
    print(f"elapsed:                {elapsed:.0f}s")
    if failures:
        print(
            f"\nchains that failed a check ({len(failures)}; their trials are not counted above):"
        )
        for f in failures:
            print("  " + f.replace("\n", "\n    "))
    return 1 if total.rows_lost or failures else 0


if __name__ == "__main__":
    sys.exit(main())
