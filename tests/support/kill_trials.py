"""Seeded kill trials, shared by the CI test (`tests/reliability/test_kill_random.py`) and
`bench/kill_bench.py`.

A *chain* is one mirror file and one static simulated world with light faults and latency.
Each trial starts the real CLI (forked, see `support.cli.run_cli`) on that file and kills
it at a seeded random moment within the time a full sync takes there; after every trial
the file must pass the consistency checks (integrity, no duplicate, every row equal to the
server's, no window marked complete without its rows). A chain runs trials until ``kills``
signals have landed while the sync was running (runs that end before their signal are
checked too, and counted as trials). Trials alternate between re-walking
everything (``--lookback 1d``) and a plain incremental run, so kills land in migrations,
first pages, gap filling and re-walks alike. After the last trial a clean run must leave
the mirror equal to the server: that is the "rows lost" figure.
"""

from __future__ import annotations

import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mirror.simulator import FaultConfig, SimulatedAPI
from support.cli import run_cli
from support.compare import assert_mirror_equals, check_consistent, has_schema, query
from support.sim import READINGS, env_for, listable, static_world, sync_args

READING_NAMES = list(READINGS)
INTERRUPTED = "mirror: interrupted; everything committed so far is kept"


@dataclass
class ChainResult:
    trials: int = 0
    landed: int = 0  # the signal arrived while the sync was running
    finished: int = 0  # the run was over before its signal was due
    faults: int = 0  # faults the simulator injected (429, 5xx, resets, truncations)
    rows_expected: int = 0
    rows_lost: int = 0
    phases: Counter[str] = field(default_factory=Counter)

    def add(self, other: ChainResult) -> None:
        self.trials += other.trials
        self.landed += other.landed
        self.finished += other.finished
        self.faults += other.faults
        self.rows_expected += other.rows_expected
        self.rows_lost += other.rows_lost
        self.phases.update(other.phases)


def _phase(db: Path, calls: int) -> str:
    """Where a kill landed, as far as can be seen from outside."""
    if not db.exists() or db.stat().st_size == 0 or not has_schema(db):
        return "before the schema existed"
    if calls == 0:
        return "before the run's first API call"
    return "while paging and writing"


def kill_chain(
    workdir: Path,
    *,
    chain: int,
    kills: int,
    sig: int = signal.SIGKILL,
    hours: float = 14,
    per_hour: float = 40,
    latency: float = 0.03,
    reading: str | None = None,
) -> ChainResult:
    rng = random.Random(f"kill-chain:{chain}")
    reading = reading or READING_NAMES[chain % len(READING_NAMES)]
    world = static_world(READINGS[reading], seed=1000 + chain, hours=hours, per_hour=per_hour)
    expected = listable(world)
    ff = world.config.filter_field
    faults = FaultConfig(
        seed=chain, latency=latency, p_429=0.03, retry_after=0.01, p_retry_after=0.5,
        p_5xx=0.03, p_reset=0.02, p_truncate=0.02,
    )  # fmt: skip
    res = ChainResult(rows_expected=len(expected))
    out = workdir / "out"
    db = workdir / "m.db"
    with SimulatedAPI(world, faults=faults) as api:
        env = env_for(api.base_url)
        base = sync_args(db, "-q", "--since", f"{int(hours) + 1}h", "--max-concurrency", "2")
        # Two kinds of trial. From the start (every third): the real CLI as cron runs it, killed
        # at a uniform moment of a full run, which includes its wait for the next whole
        # second. Mid-data (the others): the start-up wait skipped, the kill placed at a
        # uniform moment after the run's first API call, within the time its paging takes.
        # A trial whose run ends before its signal is due proves less: trials go on until
        # `kills` signals have landed mid-run (at most three times as many trials).
        span, data_span = 1.3, 0.25
        while res.landed < kills and res.trials < 3 * kills:
            k = res.trials
            args = base + (["--lookback", "1d"] if k % 3 != 1 else [])
            seen = len(api.log)
            if k % 3 == 2:
                at = rng.uniform(0.0, span)
                o = run_cli(args, env, out, kill_after=at, sig=sig)
            else:
                at = rng.uniform(0.0, data_span)
                o = run_cli(args, env, out, kill_after=at, sig=sig, no_second_wait=True,
                            after=lambda seen=seen: len(api.log) > seen)  # fmt: skip
            log = api.log[seen:]
            if not o.signalled and len(log) > 1:  # learn how long paging takes here
                data_span = 1.2 * (log[-1].time - log[0].time).total_seconds() + 0.02
            res.trials += 1
            where = f"chain {chain} ({reading}) trial {k}: signal {sig} at {at:.3f}s"
            if o.signalled and o.code != 0:
                res.landed += 1
                if sig == signal.SIGKILL:
                    assert o.code == -signal.SIGKILL, (
                        f"{where}: ended with {o.code}: {o.stderr[-1500:]}"
                    )
                elif o.code == 130:
                    assert o.stderr.strip() == INTERRUPTED, f"{where}: {o.stderr[-1500:]}"
                else:  # the signal came before the handler was set, or after the run
                    assert o.code in (0, -sig), f"{where}: ended with {o.code}: {o.stderr[-1500:]}"
                res.phases[_phase(db, len(log))] += 1
            else:
                res.finished += 1
                assert o.code == 0, f"{where}: the run failed before its signal: {o.stderr[-1500:]}"
            check_consistent(db, expected, ff, context=where)
        res.faults += sum(1 for e in api.log if e.fault)
        api.faults = None
        final = run_cli(base, env, out, no_second_wait=True)
        assert final.code == 0, (
            f"chain {chain}: the clean run after the kills failed: {final.stderr}"
        )
    stored = set(query(db, "SELECT request_id FROM requests"))
    res.rows_lost = len(set(expected) - {r[0] for r in stored})
    assert_mirror_equals(db, expected, context=f"chain {chain} ({reading}) after a clean run")
    check_consistent(db, expected, ff, context=f"chain {chain} final")
    return res
