"""Monitoring: `mirror status --check` for cron, systemd, Nagios and CI, and the Prometheus
metrics `mirror sync` and `mirror status` write with --metrics-file.

Each story is a mirror whose run log, windows and rows say what happened (syncs every five
minutes, cron stopped, a key revoked, a backfill cut short, requests stuck unfinished), at
times relative to the real clock, as `mirror status` reads them. The metrics file is read
back with the Prometheus client's own parser, and a real sync against the simulated API
(with 429s, 5xx and resets) must count its calls exactly as the server logged them.
"""

from __future__ import annotations

import os
import re
import stat
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from support.cli import mirror
from support.sim import fast_env, static_world, sync_args

from mirror.cli import cli
from mirror.records import Row, derive_status
from mirror.simulator import FaultConfig, SimulatedAPI
from mirror.store import Store
from mirror.timeparse import to_text, utcnow

TARGET = "acme/app"


def run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def lines(text: str) -> list[str]:
    """Output lines with ages to the minute (`40m 2s` -> `40m`): the check ran a moment later."""
    return [re.sub(r"\b(\d+[dhm]) \d+[hms]\b", r"\1", ln) for ln in text.splitlines()]


def minute(t: datetime) -> str:
    return to_text(t)[:16] + "Z"


def make_mirror(
    db: Path | str,
    now: datetime,
    *,
    runs: list[tuple[int, str]],
    covered: tuple[int, int] | None = (24 * 60, 0),
    requested: int = 24 * 60,
    stuck_sent: int | None = None,
    error: str = "key rejected: HTTP 401 (/v1/serverless/requests/by-endpoint)",
) -> None:
    """A mirror of one target: ``runs`` as (minutes ago, outcome), oldest first, each a
    second long; ``covered`` the completed window as minutes ago (from, to); ``requested``
    the start of the requested range, minutes ago; ``stuck_sent``: an unfinished request
    sent that many minutes ago."""
    store = Store.open(str(db))
    try:
        ago = lambda m: now - timedelta(minutes=m)  # noqa: E731
        with store.engine.begin() as conn:
            store.request_range(conn, [TARGET], to_text(ago(requested)), since=None,
                                default_from=to_text(ago(requested)))  # fmt: skip
            if covered is not None:
                store.mark_complete(conn, TARGET, to_text(ago(covered[0])),
                                    to_text(ago(covered[1])), to_text(now))  # fmt: skip
            if stuck_sent is not None:
                row = ("req-stuck", TARGET, None, to_text(ago(stuck_sent)), None, None, None,
                       None, None, None, None)  # fmt: skip
                store.upsert(conn, [Row(*row, derive_status(None, None))], payloads=True,
                             billing=True, now=to_text(now))  # fmt: skip
        for minutes, outcome in runs:
            run_id = store.start_run([TARGET], ago(minutes))
            counts = {"pages": 3, "api_calls": 4, "rows_inserted": 7, "rows_updated": 2}
            store.finish_run(run_id, ago(minutes) + timedelta(seconds=1), outcome, counts,
                             None if outcome == "ok" else error)  # fmt: skip
    finally:
        store.close()


def every_five_minutes(last: int, n: int, outcome: str = "ok") -> list[tuple[int, str]]:
    return [(last + 5 * i, outcome) for i in reversed(range(n))]


def minutes_since(now: datetime, minutes: int) -> int:
    """Whole minutes since a run `make_mirror` ended ``minutes`` before ``now`` (one second
    after), as status counts them now: one more on a machine slow enough that a minute
    boundary passed since ``now``."""
    return (utcnow() - now + timedelta(minutes=minutes, seconds=-1)) // timedelta(minutes=1)


# --------------------------------------------------------------------------- --check


def test_a_mirror_synced_every_five_minutes_is_healthy(tmp_path: Path) -> None:
    make_mirror(tmp_path / "m.db", utcnow(), runs=every_five_minutes(2, 12), covered=(24 * 60, 2))
    r = run("status", "--db", "m.db", "--check")
    assert r.exit_code == 0, r.output
    assert re.fullmatch(r"ok: 1 target; last successful sync ended (1m 5\ds|2m( \ds)?) ago\n",
                        r.stdout), r.stdout  # fmt: skip
    quiet = run("status", "--db", "m.db", "--check", "-q")
    assert (quiet.exit_code, quiet.stdout, quiet.stderr) == (0, "", "")


def test_cron_that_stopped_is_noticed_after_three_intervals(db_url: str) -> None:
    now = utcnow()
    make_mirror(db_url, now, runs=every_five_minutes(40, 12), covered=(24 * 60, 40))
    r = run("status", "--db", db_url, "--check")
    ago = minutes_since(now, 40)
    assert r.exit_code == 1
    ended = minute(now - timedelta(minutes=40) + timedelta(seconds=1))
    assert lines(r.stdout) == [
        f"last successful sync ended {ago}m ago ({ended}), over the default --max-age, "
        "3x the usual interval (15m)",
        f"{TARGET}: covered only up to {minute(now - timedelta(minutes=40))}, 40m behind, "
        "over the default --max-age, 3x the usual interval (15m)",
    ]
    assert r.stderr == ""
    assert run("status", "--db", db_url, "--check", "--max-age", "1h").exit_code == 0


def test_a_revoked_key_shows_as_runs_failing_in_a_row(tmp_path: Path) -> None:
    now = utcnow()
    runs = every_five_minutes(20, 3) + every_five_minutes(1, 3, "failed")
    make_mirror(tmp_path / "m.db", now, runs=runs, covered=(24 * 60, 20))
    r = run("status", "--db", "m.db", "--check", "--max-age", "1h")
    assert r.exit_code == 1
    assert lines(r.stdout) == [
        "the last 3 runs did not succeed (the latest failed: key rejected: HTTP 401 "
        "(/v1/serverless/requests/by-endpoint))"
    ]
    r = run("status", "--db", "m.db", "--check", "--max-age", "1h", "--max-failures", "4")
    assert (r.exit_code, lines(r.stdout)) == (
        0,
        [f"ok: 1 target; last successful sync ended {minutes_since(now, 20)}m ago"],
    )


def test_a_backfill_cut_short_is_a_gap(tmp_path: Path) -> None:
    now = utcnow()
    make_mirror(tmp_path / "m.db", now, runs=every_five_minutes(1, 4), covered=(24 * 60, 1),
                requested=3 * 24 * 60)  # fmt: skip
    r = run("status", "--db", "m.db", "--check")
    assert r.exit_code == 1
    assert lines(r.stdout) == [
        f"{TARGET}: gap in coverage {minute(now - timedelta(days=3))} … "
        f"{minute(now - timedelta(days=1))}"
    ]


def test_requests_stuck_unfinished_are_a_problem_past_the_threshold(tmp_path: Path) -> None:
    now = utcnow()
    make_mirror(tmp_path / "m.db", now, runs=every_five_minutes(1, 4), covered=(24 * 60, 1),
                stuck_sent=8 * 60)  # fmt: skip
    r = run("status", "--db", "m.db", "--check")
    assert r.exit_code == 1
    assert lines(r.stdout) == [
        f"{TARGET}: 1 request unfinished for over 6h (the oldest sent "
        f"{minute(now - timedelta(hours=8))})"
    ]
    assert run("status", "--db", "m.db", "--check", "--max-unfinished-age", "12h").exit_code == 0


def test_a_mirror_that_mirrors_nothing_fails_the_check(tmp_path: Path) -> None:
    Store.open(str(tmp_path / "m.db")).close()
    r = run("status", "--db", "m.db", "--check")
    assert (r.exit_code, r.stdout) == (
        1,
        "no sync targets: nothing is mirrored yet (mirror sync --endpoint ID)\n",
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-age", "1h"], "--max-age is a threshold of --check: give --check too"),
        (["--check", "-f", "json"], "--check prints one line per problem: leave out --format"),
        (["--check", "--max-age", "soon"], "not a duration"),
        (["--check", "--max-failures", "0"], "--max-failures"),
        (["--metrics-file", "no/such/dir/m.prom"], "the directory no/such/dir does not exist"),
        (["--metrics-file", "."], "is a directory"),
    ],
)
def test_bad_flags_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    make_mirror(tmp_path / "m.db", utcnow(), runs=every_five_minutes(1, 2))
    r = run("status", "--db", "m.db", *args)
    assert r.exit_code == 2, r.output
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and needle in err[0], r.stderr
    assert r.stdout == ""


def test_a_missing_database_is_one_line(tmp_path: Path) -> None:
    r = run("status", "--db", "none.db", "--check")
    assert r.exit_code == 2
    assert r.stderr == "mirror: usage: none.db does not exist; run mirror sync --db none.db first\n"


# --------------------------------------------------------------------------- metrics


def read_metrics(path: Path) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample of a textfile, by family and labels, through Prometheus's own parser."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        assert family.type == "gauge", f"{family.name} is a {family.type}"
        for s in family.samples:
            out.setdefault(family.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def test_status_writes_the_metrics_node_exporter_reads(tmp_path: Path, db_url: str) -> None:
    now = utcnow()
    runs = every_five_minutes(10, 4) + every_five_minutes(0, 2, "failed")
    make_mirror(db_url, now, runs=runs, covered=(24 * 60, 10), stuck_sent=8 * 60)
    r = run("status", "--db", db_url, "--metrics-file", "mirror.prom", "-q")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "", "")
    m = read_metrics(tmp_path / "mirror.prom")
    last_ok = (now - timedelta(minutes=10) + timedelta(seconds=1)).timestamp()
    last = (now + timedelta(seconds=1)).timestamp()
    lag = m["mirror_target_lag_seconds"][(("target", TARGET),)]
    assert 600 <= lag < 660, lag
    assert {k: v for k, v in m.items() if k not in (
        "mirror_metrics_written_timestamp_seconds", "mirror_target_lag_seconds",
        "mirror_database_size_bytes")} == {
        "mirror_last_success_timestamp_seconds": {(): pytest.approx(last_ok, abs=1e-3)},
        "mirror_last_run_timestamp_seconds": {(): pytest.approx(last, abs=1e-3)},
        "mirror_last_run_success": {(): 0.0},
        "mirror_last_run_duration_seconds": {(): 1.0},
        "mirror_last_run_rows_inserted": {(): 7.0},
        "mirror_last_run_rows_updated": {(): 2.0},
        "mirror_last_run_pages": {(): 3.0},
        "mirror_failing_runs": {(): 2.0},
        "mirror_check_problems": {(): 1.0},  # the stuck request
        "mirror_target_rows": {(("target", TARGET),): 1.0},
        "mirror_target_unfinished_rows": {(("target", TARGET),): 1.0},
        "mirror_target_stuck_rows": {(("target", TARGET),): 1.0},
        "mirror_target_gaps": {(("target", TARGET),): 0.0},
    }  # fmt: skip
    if db_url.endswith("m.db"):  # SQLite: the file and its WAL
        files = (tmp_path / "m.db", tmp_path / "m.db-wal")
        size = sum(p.stat().st_size for p in files if p.exists())
        assert m["mirror_database_size_bytes"] == {(): float(size)}
    else:  # PostgreSQL: pg_database_size, some megabytes
        assert m["mirror_database_size_bytes"][()] > 1e6
    # node-exporter runs as a user of its own: it must be able to read the file
    assert stat.S_IMODE((tmp_path / "mirror.prom").stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir() if "prom" in p.name) == ["mirror.prom"]


def test_status_keeps_the_last_syncs_call_counts(tmp_path: Path) -> None:
    make_mirror(tmp_path / "m.db", utcnow(), runs=every_five_minutes(1, 2))
    prom = tmp_path / "mirror.prom"
    prom.write_text(
        "# TYPE mirror_last_run_api_calls gauge\n"
        'mirror_last_run_api_calls{code="200"} 12.0\nmirror_last_run_api_calls{code="429"} 2.0\n'
        "# TYPE mirror_last_run_retries gauge\nmirror_last_run_retries 2.0\n"
        "# TYPE mirror_last_success_timestamp_seconds gauge\n"
        "mirror_last_success_timestamp_seconds 1.0\n"
    )
    assert run("status", "--db", "m.db", "--metrics-file", str(prom), "-q").exit_code == 0
    m = read_metrics(prom)
    assert m["mirror_last_run_api_calls"] == {(("code", "200"),): 12.0, (("code", "429"),): 2.0}
    assert m["mirror_last_run_retries"] == {(): 2.0}
    assert m["mirror_last_success_timestamp_seconds"][()] > 1.0, "a stale figure was kept"


FAULTS = FaultConfig(seed=5, p_429=0.08, p_5xx=0.05, p_reset=0.04)


def test_a_sync_counts_its_calls_as_the_server_saw_them(tmp_path: Path) -> None:
    world = static_world(hours=6, per_hour=40)
    prom = tmp_path / "sync.prom"
    with SimulatedAPI(world, faults=FAULTS) as api:
        r = mirror(sync_args(tmp_path / "m.db", "--since", "6h", "--metrics-file", str(prom)),
                   fast_env(api.base_url))  # fmt: skip
        log = api.log
    assert r.code == 0, r.stderr
    served = Counter("none" if c.status is None else str(c.status) for c in log)
    assert served["429"] and served["none"] and sum(served.values()) > served["200"], served
    m = read_metrics(prom)
    assert m["mirror_last_run_api_calls"] == {(("code", k),): float(n) for k, n in served.items()}
    assert m["mirror_last_run_throttled_calls"] == {(): float(served["429"])}
    assert m["mirror_last_run_retries"] == {(): float(sum(served.values()) - served["200"])}
    assert m["mirror_last_run_success"] == {(): 1.0}
    assert m["mirror_failing_runs"] == {(): 0.0}
    inserted = int(r.stdout.split("synced 3 targets: ")[1].split(" new")[0])
    assert m["mirror_last_run_rows_inserted"] == {(): float(inserted)}


def test_a_failed_sync_still_writes_its_metrics(tmp_path: Path) -> None:
    world = static_world(hours=2, per_hour=10)
    prom = tmp_path / "sync.prom"
    with SimulatedAPI(world, faults=FaultConfig(outage=True)) as api:
        env = fast_env(api.base_url, MIRROR_RETRY_ATTEMPTS="2")
        r = mirror(sync_args(tmp_path / "m.db", "--since", "2h", "--metrics-file", str(prom)), env)
        calls = len(api.log)
    assert r.code == 1
    assert len([ln for ln in r.stderr.splitlines() if ln.strip()]) == 1, r.stderr
    m = read_metrics(prom)
    assert m["mirror_last_run_success"] == {(): 0.0}
    assert m["mirror_failing_runs"] == {(): 1.0}
    assert m["mirror_last_success_timestamp_seconds"] == {(): 0.0}
    assert m["mirror_last_run_api_calls"] == {(("code", "503"),): float(calls)}
    assert os.access(prom, os.R_OK)
