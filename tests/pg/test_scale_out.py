"""Scale-out on PostgreSQL: several `mirror sync` processes share one database's targets.

Three real `mirror sync` processes (released together by a gate after their imports) sync
six targets of one simulated world into one PostgreSQL database, over loopback HTTP with
enough latency that they overlap. Each uses its own API key, which the simulator sees on
every call: that is the evidence, outside the code under test, of which process walked
which target when.
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict

from support.cli import gated_syncs
from support.cli import mirror as mirror_subprocess
from support.compare import assert_mirror_equals, db_query
from support.sim import Call, IdentifyingAPI, env_for, listable, static_world

from mirror.simulator import FaultConfig

TARGETS = tuple(f"acme/app-{c}" for c in "abcdef")
KEYS = tuple(f"proc-{i}:secret-{i}" for i in range(3))
BASELINE_KEY = "single:secret"
LIST = "/v1/serverless/requests/by-endpoint"
SUMMARY = re.compile(
    r"^synced (\d+) targets?: .*?(?:; (\d+) targets? left to other mirror sync processes .*)?$"
)


def _args(db: str) -> list[str]:
    args = ["sync", "--db", db, "--since", "26h", "--max-concurrency", "2", "--no-recheck"]
    return args + list(itertools.chain(*(("-e", t) for t in TARGETS)))


def _walk_spans(calls: list[Call]) -> dict[str, dict[str, tuple[float, float]]]:
    """target -> key -> (first call began, last call ended), list calls only."""
    spans: dict[str, dict[str, tuple[float, float]]] = defaultdict(dict)
    for c in calls:
        if c.path != LIST:
            continue
        (target,) = c.endpoint_ids
        a, b = spans[target].get(c.key, (c.began, c.ended))
        spans[target][c.key] = (min(a, c.began), max(b, c.ended))
    return spans


def test_three_processes_share_six_targets_once(tmp_path, pg_url) -> None:
    world = static_world(seed=7, hours=24, per_hour=250, endpoints=TARGETS, running=0,
                         big_tie_group=0, late_fraction=0.0)  # fmt: skip
    expected = listable(world)
    keys = frozenset({*KEYS, BASELINE_KEY})
    with IdentifyingAPI(world, faults=FaultConfig(latency=0.15), keys=keys) as api:
        envs = [env_for(api.base_url, FAL_KEY=k) for k in KEYS]
        procs = gated_syncs(
            len(envs), lambda _i: _args(pg_url), envs.__getitem__, tmp_path / "gate"
        )
        outs = [p.communicate(timeout=240) for p in procs]
        calls = list(api.calls)
        # the same sync by one process, into a file: the work there is to do, once
        single = mirror_subprocess(_args(str(tmp_path / "single.db")),
                                   env_for(api.base_url, FAL_KEY=BASELINE_KEY))  # fmt: skip
        baseline_calls = sum(c.key == BASELINE_KEY for c in api.calls)

    for i, (p, (_out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}: {err[-2000:]}"
    assert single.code == 0, f"the single-process sync failed: {single.stderr[-2000:]}"

    # every listed request stored once, equal to the server's
    assert_mirror_equals(pg_url, expected)

    # no target walked by two processes at the same time (the server's own record)
    spans = _walk_spans(calls)
    assert set(spans) == set(TARGETS), f"targets never walked: {set(TARGETS) - set(spans)}"
    for target, by_key in spans.items():
        for (k1, (a1, b1)), (k2, (a2, b2)) in itertools.combinations(sorted(by_key.items()), 2):
            assert b1 <= a2 or b2 <= a1, (
                f"{target} was walked by two processes at once: {k1} from {a1:.3f} to "
                f"{b1:.3f}, {k2} from {a2:.3f} to {b2:.3f} (monotonic seconds)"
            )
    walkers = {k for by_key in spans.values() for k in by_key}
    assert len(walkers) >= 2, (
        f"only {sorted(walkers)} walked any target: the processes did not share the work "
        f"(calls per key: {_per_key(calls)})"
    )

    # together they did the work once: about the calls one process needs
    total = sum(c.key in KEYS for c in calls)
    allowed = int(baseline_calls * 1.1) + 2 * len(TARGETS)
    assert total <= allowed, (
        f"three processes made {total} calls ({_per_key(calls)}), one alone needs "
        f"{baseline_calls}: work was repeated (allowed {allowed})"
    )

    # each says what it synced and how many targets it left to the others
    for i, (out, _err) in enumerate(outs):
        m = SUMMARY.match(out.strip())
        assert m, f"process {i}: unexpected summary {out!r}"
        synced, left = int(m.group(1)), int(m.group(2) or 0)
        assert synced + left == len(TARGETS), f"process {i}: {out!r}"
        walked = {t for t, by_key in spans.items() if KEYS[i] in by_key}
        assert synced >= len(walked), f"process {i} walked {sorted(walked)} but says {out!r}"
    print("calls per key:", _per_key(calls), "single process:", baseline_calls)
    print("\n".join(f"{t}: {sorted(by_key)}" for t, by_key in sorted(spans.items())))
    print("".join(out for out, _ in outs))

    runs = db_query(pg_url, "SELECT outcome FROM sync_runs ORDER BY id")
    assert runs == [("ok",)] * 3, f"run log: {runs}"
    lost_locks = db_query(
        pg_url,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
        "(SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    assert lost_locks == [(0,)], (
        f"advisory locks left behind after every process ended: {lost_locks}"
    )


def _per_key(calls: list[Call]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in calls:
        out[c.key] += 1
    return dict(out)
