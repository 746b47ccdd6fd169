"""SIGKILL at seeded random moments: 56 kills landing mid-run (more trials, counting runs that
finished first), over 8 mirror files and the four API readings.

Every trial is checked on its own (integrity, no duplicate, rows equal to the server's, no
window marked complete without its rows); each chain ends with a clean run that must leave
the mirror equal to the server. `bench/kill_bench.py` runs the same trials by the thousand.
"""

from __future__ import annotations

import pytest
from support.figures import count
from support.kill_trials import ChainResult, kill_chain

CHAINS = 8
KILLS_PER_CHAIN = 7


@pytest.mark.parametrize("chain", range(CHAINS))
def test_sigkill_at_random_moments_loses_nothing(tmp_path, chain: int) -> None:
    # 60 ms per page: syncs got faster, and a kill must land while one is still running
    res: ChainResult = kill_chain(tmp_path, chain=chain, kills=KILLS_PER_CHAIN, latency=0.06)
    count("random SIGKILL trials", res.trials)
    count("random SIGKILL trials that landed mid-run", res.landed)
    count("faults injected during kill trials", res.faults)
    count("rows lost after kills", res.rows_lost)
    for phase, n in res.phases.items():
        count(f"random SIGKILL landed: {phase}", n)
    assert res.rows_lost == 0
    # the scenario must prove something: the kills have to land while the sync runs
    assert res.landed >= KILLS_PER_CHAIN, (
        f"only {res.landed} of {res.trials} kills landed while the sync was running; "
        f"the runs kept finishing first ({dict(res.phases)})"
    )
