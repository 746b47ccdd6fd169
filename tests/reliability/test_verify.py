"""`mirror verify` end to end: the real command in a subprocess, the simulated API over loopback.

Each scenario syncs a mirror of one simulated day, then changes the world behind its back
the ways the platform and accidents do: late arrivals backfilled into completed windows
(`World.backdate`), a request edited in place (`World.update`), a row deleted from the
mirror's file and a row the server never knew inserted into it. Verify must report exactly
those, repair what it may, and leave a mirror that verifies clean; the simulator's request
log shows which hours it walked. The world's clock is frozen (`ManualClock`) and placed 40
minutes before the last midnight (UTC), so every run sees the same history at the same
hours of the day.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from support.cli import Run
from support.compare import assert_mirror_equals as compare
from support.compare import server_record
from support.rows import add_targets
from support.sim import ENDPOINTS, READING_PARAMS, TARGETS, analytics_refusing, fast_env

from mirror import lock
from mirror.api import FalClient, make_http_client
from mirror.records import Row, differing_fields
from mirror.schema import requests as requests_table
from mirror.simulator import (
    DEFAULT_KEY,
    ManualClock,
    SimulatedAPI,
    World,
    WorldConfig,
    generate_world,
)
from mirror.simulator.faults import ANALYTICS_PATH
from mirror.store import Store
from mirror.sync import SyncOptions, sync
from mirror.timeparse import api_param, from_text, to_text

HOUR = timedelta(hours=1)
#: `mirror` with the verify command registered (the lead adds it to mirror.cli)
_MAIN = (
    "import sys; from mirror.cli import cli, main; "
    "from mirror.commands_verify import register; register(cli); main()"
)


@pytest.fixture
def cli() -> Iterator[Any]:
    """The `mirror` group with `verify` registered (idempotently) for in-process runs.

    Until ``mirror.cli`` registers it itself, the registration is undone afterwards, so
    the README test in the same session does not see a command it does not document yet.
    """
    from mirror.cli import cli as group
    from mirror.commands_verify import register

    added = "verify" not in group.commands
    register(group)
    yield group
    if added:
        group.commands.pop("verify", None)


def verify(db: Path, env: dict[str, str], *args: str) -> Run:
    p = subprocess.run(
        [sys.executable, "-c", _MAIN, "verify", "--db", str(db), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return Run(p.returncode, p.stdout, p.stderr)


def report_of(run: Run) -> dict[str, Any]:
    """The JSON report without the two values that depend on the real clock."""
    assert run.stdout.startswith("{"), f"no JSON report (exit {run.code}): {run.stderr}"
    rep = json.loads(run.stdout)
    for volatile in ("until", "seconds"):
        rep.pop(volatile)
    return rep


# --------------------------------------------------------------------------- the world


@dataclass
class Mirror:
    world: World
    api: SimulatedAPI
    db: Path
    env: dict[str, str]
    now: datetime  # the world's (frozen) time
    slots: dict[str, list[tuple[str, str]]]  # target -> (start, end) of each hour, API text


def hour_slots(db: Path, target: str) -> list[tuple[str, str]]:
    """The completed hours of a target as verify should cut them, worked out here."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        windows = con.execute(
            "SELECT window_start, window_end FROM sync_windows WHERE target = ? "
            "ORDER BY window_start",
            (target,),
        ).fetchall()
    finally:
        con.close()
    out = []
    for a_text, b_text in windows:
        a, b = from_text(a_text), from_text(b_text)
        cur = a
        while cur < b:
            nxt = min(b, cur.replace(minute=0, second=0, microsecond=0) + HOUR)
            out.append((api_param(cur), api_param(nxt)))
            cur = nxt
    return out


@contextmanager
def synced_mirror(
    tmp_path: Path, config: WorldConfig, api_cls: type[SimulatedAPI] = SimulatedAPI
) -> Iterator[Mirror]:
    """A quiet world of one day (nothing running, arriving or billed late), mirrored whole."""
    # The simulated traffic follows the UTC hour of day, so a `now` at a fixed time of day
    # (40 minutes before the last midnight) gives the same history in every run.
    real = datetime.now(UTC)
    now = real.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(minutes=40)
    world = generate_world(
        replace(config, clock=ManualClock(now)),
        seed=3,
        now=now,
        days=1,
        endpoints=list(ENDPOINTS),
        requests_per_hour=60,
        running=0,
        future_minutes=0,
        late_fraction=0,
    )
    world.finish_all()  # generated long requests may still run at `now`
    world.fill_billing()
    db = tmp_path / "m.db"
    with api_cls(world) as api:
        store = Store.open(str(db))
        try:
            with make_http_client() as http:
                client = FalClient(http, DEFAULT_KEY, base_url=api.base_url)
                opts = SyncOptions(
                    targets=TARGETS, since=now - 25 * HOUR, until=now + HOUR, cost=False
                )
                sync(store, client, opts)
        finally:
            store.close()
        api.clear_log()
        slots = {t: hour_slots(db, t) for t in TARGETS}
        assert all(len(s) >= 25 for s in slots.values()), f"the sync completed too little: {slots}"
        yield Mirror(world, api, db, fast_env(api.base_url), now, slots)


@dataclass
class Changes:
    backdated: list[str]  # acme/flux-lora, in hour A
    deleted: str  # acme/upscaler, deleted from the mirror, in hour B
    edited: str  # acme/upscaler, status_code and billable_units changed on the server, hour D
    extra: str  # acme/whisper-v3, inserted into the mirror only, in hour C
    hours: dict[str, datetime]


def _one_row_within(db: Path, endpoint_id: str, hour: datetime, extra_sql: str = "") -> str:
    """A mirror row of the endpoint whose three timestamps all lie in the hour."""
    con = sqlite3.connect(db)
    try:
        row = con.execute(
            "SELECT request_id FROM requests WHERE endpoint_id = ? AND sent_at >= ? "
            f"AND ended_at < ? {extra_sql} ORDER BY request_id LIMIT 1",
            (endpoint_id, to_text(hour), to_text(hour + HOUR)),
        ).fetchone()
    finally:
        con.close()
    assert row is not None, f"no {endpoint_id} row lies wholly in {hour}: pick another hour"
    return str(row[0])


def change_behind_its_back(m: Mirror) -> Changes:
    top = m.now.replace(minute=0, second=0, microsecond=0)
    hours = {"A": top - 10 * HOUR, "B": top - 14 * HOUR, "C": top - 6 * HOUR, "D": top - 18 * HOUR}
    # late arrivals around the middle of hour A, recorded now (fal's backfill)
    mid = hours["A"] + HOUR / 2
    back = m.world.backdate(
        3, hours_ago=(m.now - mid) / HOUR, endpoint_id="acme/flux-lora", spread_minutes=10, seed=1
    )
    assert all(hours["A"] <= r.sent_at and r.ended_at < hours["A"] + HOUR for r in back), (
        "a backdated request left hour A: the hour-by-hour expectations would not hold"
    )
    deleted = _one_row_within(m.db, "acme/upscaler", hours["B"])
    edited = _one_row_within(
        m.db, "acme/upscaler", hours["D"], "AND status_code = 200 AND billable_units IS NOT NULL"
    )
    old = m.world.get(edited)
    assert old is not None and old.billable_units is not None
    m.world.update(edited, status_code=503, billable_units=old.billable_units + 1.25)
    extra = str(uuid.UUID(int=random.Random(7).getrandbits(128), version=4))
    sent = hours["C"] + timedelta(minutes=20)
    con = sqlite3.connect(m.db)
    try:
        with con:
            con.execute("DELETE FROM requests WHERE request_id = ?", (deleted,))
            con.execute(
                "INSERT INTO requests (request_id, endpoint_id, runner_id, sent_at, started_at, "
                "ended_at, status_code, duration, billable_units, json_input, json_output, "
                "status, first_seen_at, last_changed_at) "
                "VALUES (?, 'acme/whisper-v3', NULL, ?, ?, ?, 200, 30.0, 1.0, "
                "'{\"audio_url\": \"x\"}', NULL, 'success', ?, ?)",
                (extra, to_text(sent), to_text(sent + timedelta(seconds=1)),
                 to_text(sent + timedelta(seconds=31)), to_text(m.now), to_text(m.now)),
            )  # fmt: skip
    finally:
        con.close()
    return Changes(sorted(r.request_id for r in back), deleted, edited, extra, hours)


# --------------------------------------------------------------------------- the log


def calls_for(api: SimulatedAPI, target: str) -> int:
    return sum(1 for e in api.log if e.params.get("endpoint_id") == [target])


def walked(api: SimulatedAPI) -> set[tuple[str, str, str]]:
    """(endpoint, start, end) of every list call that walked a window (not a by-id lookup)."""
    return {
        (e.params["endpoint_id"][0], e.params["start"][0], e.params["end"][0])
        for e in api.log
        if e.path.endswith("/requests/by-endpoint") and "request_id" not in e.params
    }


def looked_up(api: SimulatedAPI) -> list[str]:
    return [
        e.params["request_id"][0]
        for e in api.log
        if e.path.endswith("/requests/by-endpoint") and "request_id" in e.params
    ]


def all_walks(m: Mirror) -> set[tuple[str, str, str]]:
    return {(t, a, b) for t in TARGETS for a, b in m.slots[t]}


def walk_of(m: Mirror, target: str, hour: datetime) -> tuple[str, str, str]:
    start = api_param(hour)
    (slot,) = [(t, a, b) for t, a, b in all_walks(m) if t == target and a == start]
    return slot


# --------------------------------------------------------------------------- expectations


def target_report(
    m: Mirror,
    target: str,
    *,
    walked_hours: int | None = None,
    analytics: str = "off",
    missing: Sequence[str] = (),
    different: Sequence[tuple[str, list[str]]] = (),
    extra: Sequence[str] = (),
    bad_hours: Sequence[datetime] = (),
    inserted: int = 0,
    updated: int = 0,
    deleted: int = 0,
) -> dict[str, Any]:
    hours = len(m.slots[target])
    n_walked = hours if walked_hours is None else walked_hours
    return {
        "target": target,
        "hours": hours,
        "hours_walked": n_walked,
        "hours_agreed": hours - n_walked,
        "analytics": analytics,
        "api_calls": calls_for(m.api, target),
        "missing": {"count": len(missing), "examples": sorted(missing)[:5]},
        "different": {
            "count": len(different),
            "examples": [{"request_id": k, "fields": f} for k, f in sorted(different)[:5]],
        },
        "extra": {"count": len(extra), "examples": sorted(extra)[:5]},
        "hours_with_differences": [api_param(h) for h in sorted(bad_hours)],
        "unstable_hours": [],
        "repaired": {"inserted": inserted, "updated": updated, "deleted": deleted},
        "remaining": len(missing) + len(different) - inserted - updated + len(extra) - deleted,
    }


def run_report(
    m: Mirror,
    targets: list[dict[str, Any]],
    *,
    mode: str = "full",
    analytics_fields: list[str] | None = None,
    repair: bool = False,
    delete_extra: bool = False,
    sample: dict[str, int] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Any]:
    def total(name: str) -> int:
        return sum(t[name] if isinstance(t[name], int) else t[name]["count"] for t in targets)

    repaired = {
        k: sum(t["repaired"][k] for t in targets) for k in ("inserted", "updated", "deleted")
    }
    remaining = total("remaining")
    return {
        "ok": remaining == 0,
        "since": None,
        "mode": mode,
        "analytics_fields": analytics_fields,
        "sample": sample,
        "repair": repair,
        "delete_extra": delete_extra,
        "hours": total("hours"),
        "hours_walked": total("hours_walked"),
        "hours_agreed": total("hours_agreed"),
        "missing": total("missing"),
        "different": total("different"),
        "extra": total("extra"),
        "repaired": repaired,
        "remaining": remaining,
        "api_calls": len(m.api.log),
        "retries": 0,
        "notes": list(notes),
        "targets": targets,
    }


def findings(m: Mirror, c: Changes, **repaired: Mapping[str, int]) -> list[dict[str, Any]]:
    """The three targets' reports after a full verify of the changes (repairs as given)."""
    h = c.hours
    return [
        target_report(m, "acme/flux-lora", missing=c.backdated, bad_hours=[h["A"]],
                      **repaired.get("acme/flux-lora", {})),
        target_report(m, "acme/upscaler", missing=[c.deleted],
                      different=[(c.edited, ["status_code", "billable_units"])],
                      bad_hours=[h["D"], h["B"]], **repaired.get("acme/upscaler", {})),
        target_report(m, "acme/whisper-v3", extra=[c.extra], bad_hours=[h["C"]],
                      **repaired.get("acme/whisper-v3", {})),
    ]  # fmt: skip


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("config", READING_PARAMS)
def test_full_verify_reports_exactly_what_changed_and_repair_mends_it(
    tmp_path: Path, config: WorldConfig
) -> None:
    with synced_mirror(tmp_path, config) as m:
        c = change_behind_its_back(m)

        r = verify(m.db, m.env, "--full", "--format", "json")
        assert r.code == 1, f"differences were found, so exit 1, not {r.code}: {r.stderr}"
        assert report_of(r) == run_report(m, findings(m, c)), "the report is not what changed"
        assert walked(m.api) == all_walks(m), "--full must walk every completed hour once"
        assert looked_up(m.api) == [c.extra], "only the extra row needed a by-id lookup"
        assert r.stderr == "", f"a run without notes printed: {r.stderr}"

        m.api.clear_log()
        r = verify(m.db, m.env, "--full", "--repair", "--format", "json")
        assert r.code == 1, f"the extra row remains, so exit 1, not {r.code}: {r.stderr}"
        repaired = {
            "acme/flux-lora": {"inserted": 3},
            "acme/upscaler": {"inserted": 1, "updated": 1},
        }
        assert report_of(r) == run_report(m, findings(m, c, **repaired), repair=True), (
            "--repair did not report (or do) exactly the repairs of missing and different rows"
        )

        m.api.clear_log()
        r = verify(m.db, m.env, "--full", "--repair", "--delete-extra", "--format", "json")
        assert r.code == 0, f"everything found was repaired, so exit 0, not {r.code}: {r.stderr}"
        only_extra = [
            target_report(m, "acme/flux-lora"),
            target_report(m, "acme/upscaler"),
            target_report(
                m, "acme/whisper-v3", extra=[c.extra], bad_hours=[c.hours["C"]], deleted=1
            ),
        ]
        assert report_of(r) == run_report(m, only_extra, repair=True, delete_extra=True), (
            "after the repair only the extra row should be left, and --delete-extra delete it"
        )

        m.api.clear_log()
        r = verify(m.db, m.env, "--full", "--format", "json")
        assert r.code == 0, f"a repaired mirror must verify clean: {r.stdout} {r.stderr}"
        assert report_of(r) == run_report(m, [target_report(m, t) for t in TARGETS])
        expected = {rid: server_record(it) for rid, it in m.world.server_view().items()}
        compare(m.db, expected)


@pytest.mark.parametrize("config", READING_PARAMS)
def test_analytics_rewalks_only_the_hours_whose_counts_differ(
    tmp_path: Path, config: WorldConfig
) -> None:
    with synced_mirror(tmp_path, config) as m:
        c = change_behind_its_back(m)
        r = verify(m.db, m.env, "--format", "json")
        assert r.code == 1, f"differences were found, so exit 1, not {r.code}: {r.stderr}"
        h = c.hours
        want_walks = {
            walk_of(m, "acme/flux-lora", h["A"]),
            walk_of(m, "acme/upscaler", h["B"]),
            walk_of(m, "acme/whisper-v3", h["C"]),
        }
        assert walked(m.api) == want_walks, (
            "analytics should have sent verify to exactly the three hours whose counts changed"
        )
        analytics_calls = [e for e in m.api.log if e.path == ANALYTICS_PATH]
        assert sorted(e.params["endpoint_id"][0] for e in analytics_calls) == list(TARGETS), (
            "one analytics page per target covers a day of hours"
        )
        # a row looked up by id is the extra, or one that lives in an earlier hour on the server
        ff = config.filter_field
        for rid in looked_up(m.api):
            if rid == c.extra:
                continue
            req = m.world.get(rid)
            assert req is not None, f"verify looked up {rid}, which is not the extra row"
            assert getattr(req, ff).replace(minute=0, second=0, microsecond=0) < (
                req.ended_at.replace(minute=0, second=0, microsecond=0)
            ), f"{rid} was looked up by id although its hour ({ff}) was walked"
        assert c.extra in looked_up(m.api), "the extra row was never confirmed by id"

        rep = report_of(r)
        fields = rep.pop("analytics_fields")
        assert ff in fields, f"the buckets count by {ff}, but verify matched on {fields}"
        # The edited row keeps its hour's count, so analytics cannot see it: the documented
        # reason for --full.
        targets = [
            target_report(m, "acme/flux-lora", walked_hours=1, analytics="compared",
                          missing=c.backdated, bad_hours=[h["A"]]),
            target_report(m, "acme/upscaler", walked_hours=1, analytics="compared",
                          missing=[c.deleted], bad_hours=[h["B"]]),
            target_report(m, "acme/whisper-v3", walked_hours=1, analytics="compared",
                          extra=[c.extra], bad_hours=[h["C"]]),
        ]  # fmt: skip
        want = run_report(m, targets, mode="analytics")
        want.pop("analytics_fields")
        assert rep == want, "the analytics-guided report is not what changed"


@pytest.mark.parametrize("status", [403, 404, 200])
def test_analytics_refused_falls_back_to_walking_every_hour(tmp_path: Path, status: int) -> None:
    with synced_mirror(tmp_path, WorldConfig(), api_cls=analytics_refusing(status)) as m:
        back = m.world.backdate(2, hours_ago=9.5, endpoint_id="acme/flux-lora", seed=2)
        hour = back[0].ended_at.replace(minute=0, second=0, microsecond=0)
        r = verify(m.db, m.env)
        assert r.code == 1, f"two rows are missing, so exit 1, not {r.code}: {r.stderr}"
        assert walked(m.api) == all_walks(m), "without analytics every hour must be walked"
        asked = [e.params["endpoint_id"][0] for e in m.api.log if e.path == ANALYTICS_PATH]
        state = "unusable" if status == 200 else "refused"
        if status == 404:
            assert asked == list(TARGETS[:1]), f"after a 404 analytics was asked again: {asked}"
            note = (
                "mirror: note: the API has no /serverless/analytics (HTTP 404: Resource not "
                "found); re-walking every selected hour\n"
            )
        else:
            assert asked == list(TARGETS), f"analytics is refused per endpoint; asked: {asked}"
            why = (
                "HTTP 403: Access denied"
                if status == 403
                else "the analytics answer has no time_series list"
            )
            note = (
                "mirror: note: could not use /serverless/analytics for "
                + ", ".join(f"{t} ({why})" for t in TARGETS)
                + "; re-walking every selected hour of these targets\n"
            )
        assert r.stderr == note, f"the fallback must be said once, in one line: {r.stderr!r}"
        ids = sorted(b.request_id for b in back)
        n = {t: len(m.slots[t]) for t in TARGETS}
        calls = {t: calls_for(m.api, t) for t in TARGETS}
        total = sum(n.values())
        want = [
            f"acme/flux-lora: {n['acme/flux-lora']} hours, analytics {state}: "
            f"{n['acme/flux-lora']} re-walked ({calls['acme/flux-lora']} API calls):",
            f"  missing         2  e.g. {ids[0]}, {ids[1]}",
            f"  in hours {api_param(hour)}",
            f"acme/upscaler: {n['acme/upscaler']} hours, analytics {state}: "
            f"{n['acme/upscaler']} re-walked ({calls['acme/upscaler']} API calls): no differences",
            f"acme/whisper-v3: {n['acme/whisper-v3']} hours, analytics {state}: "
            f"{n['acme/whisper-v3']} re-walked ({calls['acme/whisper-v3']} API calls): "
            "no differences",
            f"verified {total} hours: {total} re-walked, 0 agreed with analytics; "
            f"2 differences in 1 hour, 2 remain; {len(m.api.log)} API calls in ",
        ]
        lines = r.stdout.splitlines()
        assert lines[:-1] == want[:-1], f"the text report is wrong:\n{r.stdout}"
        assert lines[-1].startswith(want[-1]) and lines[-1].endswith("s"), lines[-1]


def test_sample_is_reproducible(tmp_path: Path) -> None:
    with synced_mirror(tmp_path, WorldConfig(filter_field="sent_at")) as m:

        def sampled(*args: str) -> tuple[dict[str, Any], set[tuple[str, str, str]]]:
            m.api.clear_log()
            r = verify(m.db, m.env, "--full", "--format", "json", *args)
            assert r.code == 0, f"the untouched mirror must verify clean: {r.stderr}"
            return report_of(r), walked(m.api)

        first, hours = sampled("--sample", "5", "--seed", "7")
        again, hours_again = sampled("--sample", "5", "--seed", "7")
        assert len(hours) == 5, f"--sample 5 walked {len(hours)} hours"
        assert hours_again == hours, "the same seed walked other hours"
        assert again == first, "the same seed gave another report"
        assert first["sample"] == {"hours": 5, "seed": 7}
        assert first["hours"] == first["hours_walked"] == 5
        _, other = sampled("--sample", "5", "--seed", "8")
        assert other != hours, "another seed walked the very same hours"
        chosen, hours_random = sampled("--sample", "5")
        seed = chosen["sample"]["seed"]
        assert isinstance(seed, int), f"without --seed the report must show the seed: {chosen}"
        _, replay = sampled("--sample", "5", "--seed", str(seed))
        assert replay == hours_random, "replaying the reported seed walked other hours"


def test_repair_exits_75_while_another_process_holds_the_lock(tmp_path: Path) -> None:
    with synced_mirror(tmp_path, WorldConfig()) as m, lock.hold(m.db):
        r = verify(m.db, m.env, "--repair")
        assert r.code == 75, f"--repair must not run without the writer lock: {r}"
        assert r.stdout == "" and r.stderr.startswith("mirror: busy: "), r
        assert len(r.stderr.splitlines()) == 1, f"one line, not: {r.stderr}"
        assert m.api.log == [], "a locked-out repair still called the API"
        r = verify(m.db, m.env, "-q")
        assert r.code == 0, f"a read-only verify needs no lock: {r.stderr}"
        assert (r.stdout, r.stderr) == ("", ""), f"-q on a clean mirror printed: {r}"


def test_usage_errors_exit_2_and_touch_nothing(tmp_path: Path, cli: Any) -> None:
    db = tmp_path / "m.db"
    store = Store.open(str(db))
    with store.engine.begin() as conn:
        add_targets(conn, ["acme/flux-lora"], to_text(datetime.now(UTC)))
    store.close()
    env = {"FAL_KEY": DEFAULT_KEY, "MIRROR_BASE_URL": "http://127.0.0.1:9/v1"}
    cases = {
        "--delete-extra needs --repair": ["--delete-extra"],
        "--seed only applies with --sample N": ["--seed", "3"],
        "acme/nope is not a sync target": ["-e", "acme/nope"],
        "must be after --since": ["--since", "2d", "--until", "3d"],
        "does not exist": ["--db", str(tmp_path / "absent.db")],
        "Invalid value for '--sample'": ["--sample", "0"],
    }
    for message, args in cases.items():
        r = CliRunner().invoke(cli, ["verify", "--db", str(db), *args], env=env)
        assert r.exit_code == 2, f"{args}: exit {r.exit_code}, not 2: {r.output}"
        assert message in r.output, f"{args}: the error does not say {message!r}: {r.output}"
    assert not (tmp_path / "absent.db").exists(), "verify created a database"


def test_differing_fields_follow_the_upsert_rules() -> None:
    stored = Row("r", "acme/a", "run", "2026-11-28T10:00:00.000000Z", "2026-11-28T10:00:01.000000Z",
                 "2026-11-28T10:00:05.000000Z", 200, 4.0, 1.5, '{"prompt": "x"}', '{"ok": true}',
                 "success")  # fmt: skip
    same_json = stored._replace(json_input='{"prompt":"x"}', json_output='{"ok":true}')
    assert differing_fields(stored, same_json, payloads=True, billing=True) == [], (
        "equal JSON written differently is no difference"
    )
    expired = stored._replace(billable_units=None, json_input=None, json_output=None)
    assert differing_fields(stored, expired, payloads=True, billing=True) == [], (
        "payloads or billing the server no longer has are kept by the upsert: no difference"
    )
    changed = stored._replace(status_code=500, billable_units=2.0, json_input='{"prompt": "y"}',
                              json_output=None, status="error")  # fmt: skip
    assert differing_fields(stored, changed, payloads=True, billing=True) == [
        "status_code", "billable_units", "json_input",
    ]  # fmt: skip
    assert differing_fields(stored, changed, payloads=False, billing=False) == ["status_code"], (
        "fields not fetched (--no-payloads, --no-billing) are not compared"
    )


def test_verify_on_postgresql_reports_and_repairs_like_on_sqlite(
    tmp_path: Path, pg_url: str
) -> None:
    """The same world mirrored into SQLite and PostgreSQL, the same rows deleted and edited
    in both: verify reports the same findings on both, and --repair mends PostgreSQL."""
    real = datetime.now(UTC)
    now = real.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(minutes=40)
    world = generate_world(
        WorldConfig(clock=ManualClock(now)), seed=3, now=now, days=1, endpoints=list(ENDPOINTS),
        requests_per_hour=60, running=0, future_minutes=0, late_fraction=0,
    )  # fmt: skip
    world.finish_all()
    world.fill_billing()
    dbs = {"sqlite": str(tmp_path / "m.db"), "postgresql": pg_url}
    with SimulatedAPI(world) as api:
        for db in dbs.values():
            store = Store.open(db)
            try:
                with make_http_client() as http:
                    client = FalClient(http, DEFAULT_KEY, base_url=api.base_url)
                    sync(
                        store,
                        client,
                        SyncOptions(
                            targets=TARGETS, since=now - 25 * HOUR, until=now + HOUR, cost=False
                        ),
                    )
            finally:
                store.close()
        env = fast_env(api.base_url)
        top = now.replace(minute=0, second=0, microsecond=0)
        reports = {}
        for name, db in dbs.items():
            store = Store.open(db)
            try:
                with store.engine.begin() as conn:
                    ids = [r[0] for r in conn.exec_driver_sql(
                        "SELECT request_id FROM requests WHERE endpoint_id = 'acme/upscaler' "
                        "AND ended_at >= %s AND ended_at < %s ORDER BY request_id LIMIT 2"
                        if name == "postgresql" else
                        "SELECT request_id FROM requests WHERE endpoint_id = 'acme/upscaler' "
                        "AND ended_at >= ? AND ended_at < ? ORDER BY request_id LIMIT 2",
                        (to_text(top - 10 * HOUR), to_text(top - 9 * HOUR)),
                    )]  # fmt: skip
                    assert len(ids) == 2, f"{name}: too few rows in the hour to change"
                    conn.execute(
                        requests_table.delete().where(requests_table.c.request_id == ids[0])
                    )
                    conn.execute(
                        requests_table.update()
                        .where(requests_table.c.request_id == ids[1])
                        .values(duration=requests_table.c.duration + 1)
                    )
            finally:
                store.close()
            r = verify(Path(db) if name == "sqlite" else db, env, "--full", "--format", "json")  # type: ignore[arg-type]
            assert r.code == 1, (
                f"{name}: differences were found, so exit 1, not {r.code}: {r.stderr}"
            )
            rep = report_of(r)
            reports[name] = ({k: rep[k] for k in ("hours", "hours_walked", "missing", "different", "extra", "remaining")},
                             [(t["target"], t["missing"], t["different"]) for t in rep["targets"]])  # fmt: skip
        assert reports["postgresql"] == reports["sqlite"], (
            "verify found different things on PostgreSQL"
        )
        assert (
            reports["postgresql"][0]["missing"] == 1 and reports["postgresql"][0]["different"] == 1
        )

        r = verify(pg_url, env, "--repair", "--format", "json")  # type: ignore[arg-type]
        assert r.code == 0, f"everything found was repairable: {r.stdout} {r.stderr}"
        assert report_of(r)["repaired"] == {"inserted": 1, "updated": 1, "deleted": 0}
        r = verify(pg_url, env, "--full", "--format", "json")  # type: ignore[arg-type]
        assert r.code == 0 and report_of(r)["remaining"] == 0, f"not clean after repair: {r.stdout}"
