"""The model-API history end to end: `mirror sync --model`, `--all-models`, a bare sync from
cron keeping both histories, a kill mid-sync, `mirror verify` of a model target, and the
bad input (an app id where a model belongs, one id as both). The real CLI in a subprocess,
the simulated API over loopback, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support.cli import assert_one_line, forked, gated_syncs, mirror, spawn
from support.compare import (
    assert_mirror_equals,
    covers,
    db_execute,
    db_query,
    has_schema,
    integrity_ok,
    is_server,
    mirror_rows,
)
from support.sim import (
    ENDPOINTS,
    PG_READINGS,
    READINGS,
    TARGETS,
    IdentifyingAPI,
    fast_env,
    listable,
    on_backends,
    static_world,
)

from mirror.simulator import FaultConfig, SimulatedAPI, World, WorldConfig

#: two hosted models the key calls (fal-ai/flux covers neither: a model id is exact here)
MODELS = ("fal-ai/flux/dev", "fal-ai/flux/schnell")
MODEL_ARGS = [arg for m in MODELS for arg in ("-m", m)]
EP_ARGS = [arg for t in TARGETS for arg in ("-e", t)]
FAULTS = FaultConfig(
    seed=7, p_429=0.05, retry_after=0.02, p_5xx=0.04, p_reset=0.03, p_truncate=0.03
)


def two_histories(config: WorldConfig | None = None, **kw: Any) -> World:
    """A world of the account's apps and the key's calls to two hosted models."""
    kw.setdefault("hours", 8)
    kw.setdefault("per_hour", 90)
    kw.setdefault("big_tie_group", 60)
    kw.setdefault("late_fraction", 0)  # fal's own late records are the re-check's (tests/e2e)
    return static_world(config, endpoints=(*ENDPOINTS, *MODELS), **kw)


def expected(world: World, *, apps=TARGETS, models=MODELS) -> dict[str, dict[str, Any]]:
    """What a mirror of ``apps`` and ``models`` must hold: every request the server lists
    for them; a model's calls without runner_id and billable_units (its list has neither)."""
    out = {}
    for rid, rec in listable(world).items():
        ep = rec["endpoint_id"]
        if any(covers(m, ep) for m in models):
            out[rid] = {**rec, "runner_id": None, "billable_units": None}
        elif any(covers(a, ep) for a in apps):
            out[rid] = rec
    return out


def assert_histories(db: Path | str, models=MODELS) -> None:
    """Every stored request says the history it came from."""
    wrong = [
        (rid, ep, history)
        for rid, ep, history in db_query(
            db, "SELECT request_id, endpoint_id, history FROM requests"
        )
        if history != ("model" if any(covers(m, ep) for m in models) else "serverless")
    ]
    assert not wrong, f"{len(wrong)} requests stored with the wrong history, e.g. {wrong[:3]}"


def stored_ids(db: Path | str) -> set[str]:
    """The ids stored so far (none before the file and its schema are there)."""
    if not is_server(db) and (not Path(db).exists() or Path(db).stat().st_size == 0):
        return set()
    try:
        if not has_schema(db):
            return set()
        return {r[0] for r in db_query(db, "SELECT request_id FROM requests")}
    except sqlite3.OperationalError:  # the first migration is being written
        return set()


def targets_of(db: Path | str) -> dict[str, str]:
    return dict(db_query(db, "SELECT target, history FROM sync_targets"))


@pytest.mark.parametrize(
    ("db_url", "config"), on_backends(READINGS, PG_READINGS), indirect=["db_url"]
)
def test_both_histories_equal_the_servers_and_a_bare_sync_keeps_both(
    db_url: str, config: WorldConfig
) -> None:
    world = two_histories(config)
    with SimulatedAPI(world, faults=FAULTS) as api:
        env = fast_env(api.base_url)
        apps = mirror(["sync", "--db", db_url, "--since", "9h", *EP_ARGS], env)
        assert apps.code == 0, f"the apps' sync failed: {apps.stderr}"
        models = mirror(["sync", "--db", db_url, "--since", "9h", *MODEL_ARGS], env)
        assert models.code == 0, f"the models' sync failed: {models.stderr}"
        assert models.stdout.startswith("synced 2 targets: "), models.stdout
        model_calls = [e for e in api.log if e.path.endswith("/models/requests/by-endpoint")]
        assert model_calls, "no call to the model-API history"
        asked = {v for e in model_calls for v in e.params.get("expand", [])}
        assert asked <= {"payloads"}, f"a model list was asked for {asked}: only payloads exists"
        want = expected(world)
        # (the simulated day is quieter at night: a guard that the models' history is more
        # than one page, not a count of the world)
        n = sum(1 for r in want.values() if r["endpoint_id"] in MODELS)
        assert n > 100, f"only {n} model calls: one page, the scenario proves little"
        assert_mirror_equals(db_url, want, context="after the two first syncs")
        assert_histories(db_url)
        assert targets_of(db_url) == {
            **dict.fromkeys(TARGETS, "serverless"),
            **dict.fromkeys(MODELS, "model"),
        }, "each target is stored with its history"

        # later, from cron: late records of both histories; a bare sync walks both
        # the API's clock catches up with this one (never ahead of it: a run's windows end
        # at its own clock, and one behind the API's is the next run's to correct)
        clock = world.config.clock
        clock.set(datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1))  # type: ignore[attr-defined]
        late = [
            *world.backdate(6, hours_ago=0.5, endpoint_id="fal-ai/flux/dev", seed=3),
            *world.backdate(4, hours_ago=0.5, endpoint_id="acme/upscaler", seed=4),
        ]
        api.clear_log()
        bare = mirror(["sync", "--db", db_url], env)
        assert bare.code == 0, f"the bare sync failed: {bare.stderr}"
        assert bare.stdout.startswith("synced 5 targets: "), bare.stdout
        paths = {e.path for e in api.log}
        assert {"/v1/models/requests/by-endpoint", "/v1/serverless/requests/by-endpoint"} <= paths
        got = assert_mirror_equals(db_url, expected(world), context="after the bare sync")
        assert {r.request_id for r in late} <= set(got), "late records of a history were missed"
        assert_histories(db_url)
        integrity_ok(db_url)


def test_a_kill_mid_sync_of_a_model_then_a_rerun_loses_nothing(db_url: str) -> None:
    world = two_histories(hours=24, per_hour=160)
    rng = random.Random(13)
    slow = FaultConfig(seed=5, latency=0.03, p_429=0.03, retry_after=0.02, p_reset=0.01)
    args = ["sync", "--db", db_url, "--since", "25h", "--max-concurrency", "2", *MODEL_ARGS]
    with SimulatedAPI(world, faults=slow) as api:
        env = fast_env(api.base_url)
        kills = 0
        for _ in range(4):
            p = spawn(args, env)
            # killed once it has written something (the start of a process varies a lot)
            before = len(stored_ids(db_url))
            deadline = time.monotonic() + 30
            while p.poll() is None and time.monotonic() < deadline:
                if len(stored_ids(db_url)) > before:
                    break
                time.sleep(0.05)
            time.sleep(rng.uniform(0, 0.4))
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                kills += 1
            p.wait(timeout=60)
            integrity_ok(db_url)
            mirror_rows(db_url)  # asserts no request_id twice
        assert kills >= 2, f"only {kills} runs were still going when killed: slow it down"
        # the next run from cron names nothing: the stored model targets are walked
        final = mirror(["sync", "--db", db_url], env)
        assert final.code == 0, f"the run after the kills failed: {final.stderr}"
    assert_mirror_equals(db_url, expected(world, apps=()), context="after kills and a rerun")
    assert_histories(db_url)
    assert targets_of(db_url) == dict.fromkeys(MODELS, "model")


def test_verify_of_a_model_target_uses_its_counts_and_repairs_it(tmp_path: Path) -> None:
    world = two_histories(hours=6)
    db = str(tmp_path / "m.db")
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        r = mirror(["sync", "--db", db, "--since", "7h", "-m", "fal-ai/flux/dev"], env)
        assert r.code == 0, r.stderr
        stored = db_query(
            db, "SELECT request_id FROM requests WHERE ended_at IS NOT NULL ORDER BY ended_at"
        )
        gone = stored[len(stored) // 2][0]
        db_execute(db, f"DELETE FROM requests WHERE request_id = '{gone}'")
        api.clear_log()
        check = mirror(["verify", "--db", db, "--since", "7h", "--format", "json"], env)
        assert check.code == 1, f"a missing request is a difference (exit 1): {check.stderr}"
        assert gone in check.stdout, f"the missing request is not reported: {check.stdout[:500]}"
        paths = {e.path for e in api.log}
        assert "/v1/models/analytics" in paths, f"verify did not count by the model's: {paths}"
        assert not any(p.startswith("/v1/serverless") for p in paths), paths
        fix = mirror(["verify", "--db", db, "--since", "7h", "--repair"], env)
        assert fix.code == 0, f"repair failed: {fix.stdout} {fix.stderr}"
    assert_mirror_equals(db, expected(world, apps=(), models=("fal-ai/flux/dev",)))
    assert db_query(db, "SELECT history FROM requests WHERE request_id = ?", (gone,)) == [
        ("model",)
    ], "the repaired request is not of the model history"


@pytest.mark.parametrize(
    ("status", "says"),
    [(400, "Not a model endpoint"), (404, "Not a model endpoint"), (403, "Access denied")],
)
def test_an_app_id_given_as_a_model_is_one_line_and_not_kept(
    tmp_path: Path, status: int, says: str
) -> None:
    """Whichever status the model API refuses an app's id with (a 403 says no more than
    "Access denied"), the one line says the id is not a model the key can list and to use
    --endpoint, not that the key lacks access."""
    world = two_histories(WorldConfig(models_refuse_owned=status), hours=2)
    db = str(tmp_path / "m.db")
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        r = mirror(["sync", "--db", db, "-m", "acme/flux-lora"], env)
        assert r.code == 1, f"a refused model id must fail the run (exit 1): {r.code} {r.stderr}"
        line = assert_one_line(r.stderr, "not a model", context=f"an app id as a model, {status}")
        assert says in line, f"fal's own words are missing: {line}"
        assert "not kept as a sync target: acme/flux-lora" in line, line
        assert line.endswith(
            "acme/flux-lora is not a model this key can list: --model takes one of fal's hosted "
            "models (fal-ai/flux/dev); for an app of your own account use --endpoint"
        ), f"the hint does not say what is wrong: {line}"
        assert "owns" not in line and "scope" not in line, f"a hint about the key: {line}"
        assert db_query(db, "SELECT count(*) FROM requests") == [(0,)], "rows were stored"
        assert targets_of(db) == {}, "the refused id was remembered as a target"
        # the same id as an app is fine
        ok = mirror(["sync", "--db", db, "-e", "acme/flux-lora"], env)
        assert ok.code == 0, ok.stderr
    assert targets_of(db) == {"acme/flux-lora": "serverless"}


def test_one_id_as_both_or_as_the_other_history_is_refused_up_front(tmp_path: Path) -> None:
    world = two_histories(hours=2)
    db = str(tmp_path / "m.db")
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        both = mirror(["sync", "--db", db, "-e", "fal-ai/flux/dev", "-m", "fal-ai/flux/dev"], env)
        assert both.code == 2, f"an id as both must be a usage error: {both.code} {both.stderr}"
        assert "both as --endpoint and as --model" in both.stderr, both.stderr
        assert api.log == [], "the API was called for a refused command"
        assert not Path(db).exists(), "a refused command created the mirror"
        first = mirror(["sync", "--db", db, "-m", "fal-ai/flux/dev"], env)
        assert first.code == 0, first.stderr
        api.clear_log()
        other = mirror(["sync", "--db", db, "-e", "fal-ai/flux/dev"], env)
        assert other.code == 2, f"{other.code} {other.stderr}"
        assert "is a sync target of the model history" in other.stderr, other.stderr
        assert api.log == [], "the API was called for a refused command"
    assert targets_of(db) == {"fal-ai/flux/dev": "model"}


def test_all_models_adds_what_usage_lists_and_a_key_without_admin_gets_a_note(
    tmp_path: Path,
) -> None:
    world = two_histories(hours=4)
    db = str(tmp_path / "m.db")
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        r = mirror(["sync", "--db", db, "--since", "5h", "--all-models", *EP_ARGS], env)
        assert r.code == 0, r.stderr
    found = targets_of(db)
    assert found == {**dict.fromkeys(TARGETS, "serverless"), **dict.fromkeys(MODELS, "model")}, (
        f"--all-models should add exactly the models the key used: {found}"
    )
    assert_mirror_equals(db, expected(world))

    db2 = str(tmp_path / "plain.db")
    key = "plain-key:secret"
    with SimulatedAPI(world, keys=frozenset({key}), admin_keys=frozenset()) as api:
        env = {**fast_env(api.base_url), "FAL_KEY": key}
        r = mirror(
            ["sync", "--db", db2, "--since", "5h", "--all-models", "-e", "acme/upscaler"], env
        )
        assert r.code == 0, f"a key without ADMIN must not fail --all-models: {r.stderr}"
        notes = [line for line in r.stderr.splitlines() if "--all-models" in line]
        assert len(notes) == 1 and "ADMIN" in notes[0], r.stderr
    assert targets_of(db2) == {"acme/upscaler": "serverless"}


def test_query_and_stats_answer_each_history_or_both_and_stats_by_history(tmp_path: Path) -> None:
    world = two_histories(hours=3)
    db = str(tmp_path / "m.db")
    with SimulatedAPI(world) as api:
        env = fast_env(api.base_url)
        r = forked(["sync", "--db", db, "--since", "4h", *EP_ARGS, *MODEL_ARGS], env)
        assert r.code == 0, r.stderr
    want = expected(world)
    n_model = sum(1 for r in want.values() if r["endpoint_id"] in MODELS)
    counts = {}
    for history in ("model", "serverless", None):
        args = ["stats", "--db", db, "--format", "json"]
        args += ["--history", history] if history else []
        s = forked(args, env)
        assert s.code == 0, s.stderr
        counts[history] = json.loads(s.stdout)[0]["requests"]
    assert counts == {
        "model": n_model,
        "serverless": len(want) - n_model,
        None: len(want),
    }, "stats per history"
    q = forked(["query", "--db", db, "--history", "model", "--columns", "endpoint_id,history",
                "--format", "csv", "--limit", "100000"], env)  # fmt: skip
    assert q.code == 0, q.stderr
    lines = q.stdout.strip().splitlines()[1:]
    assert len(lines) == n_model and all(line.endswith(",model") for line in lines), lines[:3]
    bad = forked(["stats", "--db", db, "--history", "other"], env)
    assert bad.code == 2 and "other" in bad.stderr, bad.stderr
    _stats_by_history(db, env, world)


def _stats_by_history(db: str, env: dict[str, str], world: World) -> None:
    """`stats --by history` (alone and with other keys) gives each history's rows; each
    row equals what `--history` filtering to that history answers; json, jsonl, csv and
    the table agree."""

    def stats(*args: str) -> list[dict[str, Any]]:
        out = forked(["stats", "--db", db, "-f", "json", *args], env)
        assert out.code == 0, out.stderr
        return json.loads(out.stdout)

    want: dict[tuple[str, str], int] = {}
    for rec in expected(world).values():
        history = "model" if rec["endpoint_id"] in MODELS else "serverless"
        want[(history, rec["endpoint_id"])] = want.get((history, rec["endpoint_id"]), 0) + 1
    both = stats("--by", "history,endpoint")
    got = {(row["history"], row["endpoint"]): row["requests"] for row in both}
    assert got == want, f"stats --by history,endpoint: {got} != {want}"
    for history in ("model", "serverless"):
        alone = [
            {"history": history, **row} for row in stats("--history", history, "--by", "endpoint")
        ]
        mine = [row for row in both if row["history"] == history]
        assert mine == alone, f"--by history's {history} rows differ from --history {history}'s"
    per_history = {row["history"]: row["requests"] for row in stats("--by", "history")}
    assert per_history == {
        h: sum(n for (hh, _), n in want.items() if hh == h) for h in ("model", "serverless")
    }, f"stats --by history: {per_history}"
    summed: dict[str, int] = {}
    for row in stats("--by", "day,history"):
        summed[row["history"]] = summed.get(row["history"], 0) + row["requests"]
    assert summed == per_history, f"--by day,history does not add up per history: {summed}"

    as_json = [(row["history"], row["endpoint"], row["requests"]) for row in both]
    jsonl = forked(["stats", "--db", db, "-f", "jsonl", "--by", "history,endpoint"], env)
    as_jsonl = [(r["history"], r["endpoint"], r["requests"])
                for r in map(json.loads, jsonl.stdout.splitlines())]  # fmt: skip
    csv = forked(["stats", "--db", db, "-f", "csv", "--by", "history,endpoint"], env)
    lines = csv.stdout.splitlines()
    assert lines[0].startswith("history,endpoint,requests,"), lines[0]
    as_csv = [(c[0], c[1], int(c[2])) for c in (line.split(",") for line in lines[1:])]
    wide = {**env, "COLUMNS": "400"}
    table = forked(["stats", "--db", db, "--by", "history,endpoint"], wide).stdout.splitlines()
    assert table[0].split()[:3] == ["history", "endpoint", "requests"], table[0]
    as_table = [(c[0], c[1], int(c[2])) for c in (line.split() for line in table[2:])]
    assert as_json == as_jsonl == as_csv == as_table, (as_json, as_jsonl, as_csv, as_table)
    for args in (["--by", "history"], ["--history", "model"]):  # billing events have neither
        refused = forked(["stats", "--db", db, "--cost", *args], env)
        assert refused.code == 2 and "history" in refused.stderr, (args, refused.stderr)


def test_two_processes_share_model_targets_on_postgresql(tmp_path: Path, pg_url: str) -> None:
    models = ("fal-ai/flux/dev", "fal-ai/flux/schnell", "fal-ai/recraft-v3", "fal-ai/veo3")
    world = static_world(seed=9, hours=12, per_hour=200, endpoints=models, running=0,
                         big_tie_group=0, late_fraction=0.0)  # fmt: skip
    keys = ("proc-0:secret-0", "proc-1:secret-1")
    args = ["sync", "--db", pg_url, "--since", "13h", "--max-concurrency", "2", "--no-recheck"]
    args += [a for m in models for a in ("-m", m)]
    with IdentifyingAPI(world, faults=FaultConfig(latency=0.1), keys=frozenset(keys)) as api:
        envs = [{**fast_env(api.base_url), "FAL_KEY": k} for k in keys]
        procs = gated_syncs(2, lambda _i: args, envs.__getitem__, tmp_path / "gate")
        outs = [p.communicate(timeout=240) for p in procs]
        calls = [c for c in api.calls if c.path == "/v1/models/requests/by-endpoint"]
    for i, (p, (_out, err)) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i} exited {p.returncode}: {err[-2000:]}"
    assert_mirror_equals(pg_url, expected(world, apps=(), models=models))
    assert_histories(pg_url, models)
    spans: dict[str, dict[str, tuple[float, float]]] = {}
    for c in calls:
        (target,) = c.endpoint_ids
        a, b = spans.setdefault(target, {}).get(c.key, (c.began, c.ended))
        spans[target][c.key] = (min(a, c.began), max(b, c.ended))
    assert set(spans) == set(models), f"model targets never walked: {set(models) - set(spans)}"
    for target, by_key in spans.items():
        if len(by_key) == 2:
            (k1, (a1, b1)), (k2, (a2, b2)) = sorted(by_key.items())
            assert b1 <= a2 or b2 <= a1, f"{target} was walked by {k1} and {k2} at once"
