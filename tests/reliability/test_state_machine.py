"""A hypothesis state machine that mixes the world's changes with faulty, killed and hostile
syncs over hundreds of seeded sequences.

Each sequence is a tiny simulated world (two targets, one with a route, under one of the
four readings of the API) whose clock the machine moves by hand; the mirror's sync runs
in-process on the same clock, through a real ``FalClient`` on a real ``httpx.Client`` to the
simulator over loopback. Kills are real: a forked child runs the sync and is SIGKILLed.

Rules: time passes (requests arrive, end, get billed), everything running ends, billing
lands, late requests are back-dated into the past (inside and beyond the lookback), a batch
ending on one microsecond (a tie across a page boundary) appears; syncs run clean, with
transient faults, during an outage, against hostile pages, while rows move under their
pages, or get killed at a random moment; the first backfill is killed or hits an outage;
a sync runs with this machine's clock hours fast or minutes slow.

Invariants after every sync: the file passes ``integrity_check``; no request is stored
twice; every stored row is a version of it the server actually served; nothing once stored
or once complete is lost; and the *state is never ahead of the data*: a window completed by
the run holds every request the server listed in it when the run started. At the end of
each sequence, a *bare* run (what cron runs) must hold every request of the range ever
asked for that lies outside what was already complete (an interrupted first backfill is
finished, not forgotten), and a clean run re-walking everything must leave the mirror equal
to the server.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support.cli import no_open_sqlite_files
from support.compare import (
    FIELDS,
    assert_mirror_equals,
    covers,
    fts_ok,
    integrity_ok,
    mirror_rows,
    query,
    server_record,
)
from support.figures import count
from support.sim import READINGS, listable

from mirror.api import FalClient, RetryPolicy
from mirror.db import make_engine
from mirror.errors import ApiUnavailable, BadDataError
from mirror.pacing import Pacer
from mirror.simulator import DEFAULT_KEY, FaultConfig, ManualClock, SimulatedAPI, generate_world
from mirror.store import Store
from mirror.sync import Syncer, SyncOptions
from mirror.timeparse import from_text

LIST = "/v1/serverless/requests/by-endpoint"
ENDPOINTS = ["acme/flux-lora", "acme/flux-lora/turbo", "acme/upscaler"]
TARGETS = ["acme/flux-lora", "acme/upscaler"]
T0 = datetime(2026, 6, 15, 12, 0, tzinfo=UTC)
RETRY = RetryPolicy(attempts=6, base=0.001, cap=0.01, deadline=0.25, connect_timeout=2,
                    read_timeout=0.25)  # fmt: skip
FAULTS = {
    "429": lambda s: FaultConfig(seed=s, p_429=0.3),
    "429-retry-after": lambda s: FaultConfig(seed=s, p_429=0.3, retry_after=0.01),
    "rate-limit": lambda s: FaultConfig(seed=s, rate_limit=200, burst=2),
    "5xx-burst": lambda s: FaultConfig(seed=s, p_5xx=1.0, p_json_500=1.0, max_faults=4),
    "resets": lambda s: FaultConfig(seed=s, p_reset=0.25),
    "truncated": lambda s: FaultConfig(seed=s, p_truncate=0.25),
    "stalled": lambda s: FaultConfig(seed=s, p_stall=1.0, stall_byte_delay=0.05, max_faults=1),
    "mixed": lambda s: FaultConfig(seed=s, p_429=0.1, retry_after=0.005, p_5xx=0.1, p_reset=0.1,
                                   p_truncate=0.1),
}  # fmt: skip
BAD_MODES = ["wrong_types", "missing_request_id", "has_more_no_cursor", "repeat_cursor",
             "items_not_list", "deep_nesting", "not_json"]  # fmt: skip

STATS: dict[str, int] = {}
#: the first failure seen, with the steps that led to it: kills and threads make a replay
#: differ, so hypothesis's own report of a shrunk sequence can come out garbled ("Flaky",
#: "inconsistent data generation"); this one is always the sequence that actually failed
FIRST_FAILURE: list[str] = []


def traced(fn):  # type: ignore[no-untyped-def]
    """Record each step; keep the first assertion failure with the steps that led to it."""

    @functools.wraps(fn)
    def step(self, **kw):  # type: ignore[no-untyped-def]
        self.trace.append(f"{fn.__name__}({', '.join(f'{k}={v!r}' for k, v in kw.items())})")
        try:
            return fn(self, **kw)
        except AssertionError as e:
            if not FIRST_FAILURE:
                FIRST_FAILURE.append(f"{e}\n  after steps:\n    " + "\n    ".join(self.trace))
            raise

    return step


def _stat(name: str, n: int = 1) -> None:
    STATS[name] = STATS.get(name, 0) + n


def _key(rec: dict[str, Any]) -> tuple[Any, ...]:
    """A record (as `server_record`/`mirror_rows` give it) in a hashable, comparable form."""
    return tuple(orjson.dumps(rec[f], option=orjson.OPT_SORT_KEYS) if f in ("json_input", "json_output")
                 else rec[f] for f in FIELDS)  # fmt: skip


def _version(item: dict[str, Any]) -> tuple[Any, ...]:
    return _key(server_record(item))


def _subtract(pieces: list[tuple[datetime, datetime]], cut: list[tuple[datetime, datetime]]):  # type: ignore[no-untyped-def]
    out = []
    for a, b in pieces:
        cur = [(a, b)]
        for x, y in cut:
            nxt = []
            for p, q in cur:
                if y <= p or x >= q:
                    nxt.append((p, q))
                    continue
                if p < x:
                    nxt.append((p, x))
                if y < q:
                    nxt.append((y, q))
            cur = nxt
        out.extend(cur)
    return out


def _intersect(a: tuple[datetime, datetime], ivs: list[tuple[datetime, datetime]]):  # type: ignore[no-untyped-def]
    return [(max(a[0], x), min(a[1], y)) for x, y in ivs if max(a[0], x) < min(a[1], y)]


class MirrorMachine(RuleBasedStateMachine):
    api: SimulatedAPI  # one server for every sequence; each sequence swaps in its world

    def __init__(self) -> None:
        super().__init__()
        self.ready = False
        self.trace: list[str] = []

    # -- set-up -----------------------------------------------------------------------

    @initialize(reading=st.sampled_from(list(READINGS)), seed=st.integers(0, 2**20),
                ties=st.sampled_from([0, 110]))  # fmt: skip
    @traced
    def make_world(self, reading: str, seed: int, ties: int) -> None:
        self.clock = ManualClock(T0)
        cfg = replace(READINGS[reading], clock=self.clock)
        self.world = generate_world(
            cfg, seed=seed, now=T0, days=4 / 24, requests_per_hour=25, endpoints=ENDPOINTS,
            running=3, big_tie_group=ties, future_minutes=240, late_fraction=0.05,
        )  # fmt: skip
        self.ff = cfg.filter_field
        self.api.world = self.world
        self.api.faults = None
        self.api.clear_log()
        self.dir = Path(tempfile.mkdtemp(prefix="mirror-sm-", dir=_scratch()))
        self.db = self.dir / "m.db"
        self.versions: dict[str, set[tuple[Any, ...]]] = {}
        self.ids: set[str] = set()
        self.completed: dict[str, list[tuple[datetime, datetime]]] = {}
        #: the earliest start any sync of the sequence asked for (None: no sync yet)
        self.requested: datetime | None = None
        self.step = 0
        self.ready = True

    def teardown(self) -> None:
        if not getattr(self, "ready", False):
            return
        self._final_check()

    @traced
    def _final_check(self) -> None:
        try:
            self.api.faults = None
            self.api.respond = SimulatedAPI.respond.__get__(self.api)  # type: ignore[method-assign]
            self.clock.advance(1)  # time passes: whatever ended "now" ended before the run
            if self.requested is not None:
                self._bare_run_finishes_the_requested_range()
            # all of history: generated (4 h), back-dated (up to 5.5 h, +-10 min) and since
            # since: before the 24 h a first sync covers by default, so windows that never
            # completed (rows kept moving) are inside the range walked
            outcome, err, _ = self._sync(
                lookback=timedelta(days=30), since_at=T0 - timedelta(hours=36)
            )
            assert outcome == "ok", f"the clean final run failed: {err!r}"
            self._check_versions()
            want = listable(self.world)
            assert_mirror_equals(self.db, want, context="after a clean run")
            _stat("rows compared at the end", len(want))
            _stat("sequences ended by a clean run equal to the server")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _bare_run_finishes_the_requested_range(self) -> None:
        """What cron runs next: a bare sync. Everything listed in the range ever asked for
        must be stored, except inside what was complete before it (requests back-dated
        there, beyond the lookback, are the scheduled re-checks' job)."""
        before = self._intervals()
        outcome, err, _ = self._sync()
        assert outcome == "ok", f"the bare run failed: {err!r}"
        rows = mirror_rows(self.db)
        now = self.clock()
        assert self.requested is not None
        left = []
        for rid, it in self.world.server_view().items():
            target = next((t for t in TARGETS if covers(t, it["endpoint_id"])), None)
            v = it.get(self.ff)
            if target is None or v is None or rid in rows:
                continue
            ts = from_text(v)
            if self.requested <= ts < now and not any(a <= ts < b for a, b in before[target]):
                left.append((rid, target, v))
        assert not left, (
            f"a bare run left {len(left)} requests of the range asked for (from "
            f"{self.requested}) unstored, e.g. {left[:2]}: an interrupted backfill forgotten"
        )
        _stat("bare runs that finished the requested range")

    # -- the world changes ------------------------------------------------------------

    @precondition(lambda self: self.ready)
    @rule(minutes=st.integers(1, 150))
    @traced
    def time_passes(self, minutes: int) -> None:
        self.clock.advance(minutes * 60)

    @precondition(lambda self: self.ready)
    @rule()
    @traced
    def everything_running_ends(self) -> None:
        self.world.finish_all()

    @precondition(lambda self: self.ready)
    @rule()
    @traced
    def billing_lands(self) -> None:
        self.world.fill_billing()

    @precondition(lambda self: self.ready)
    @rule(n=st.integers(1, 6), hours_ago=st.floats(0.05, 5.5), ep=st.sampled_from(ENDPOINTS))
    @traced
    def late_requests_are_backdated(self, n: int, hours_ago: float, ep: str) -> None:
        self.step += 1
        self.world.backdate(n, hours_ago, endpoint_id=ep, spread_minutes=20, seed=self.step)

    @precondition(lambda self: self.ready)
    @rule(n=st.integers(2, 130), minutes_ago=st.integers(2, 200))
    @traced
    def a_batch_ends_on_one_microsecond(self, n: int, minutes_ago: int) -> None:
        self.step += 1
        reqs = self.world.backdate(n, minutes_ago / 60, endpoint_id="acme/upscaler",
                                   spread_minutes=1, seed=self.step)  # fmt: skip
        end = max(r.ended_at for r in reqs)
        for r in reqs:
            self.world.update(r.request_id, ended_at=end,
                              duration=(end - r.started_at).total_seconds())  # fmt: skip

    # -- syncs --------------------------------------------------------------------------

    @precondition(lambda self: self.ready)
    @rule(concurrency=st.integers(1, 4), lookback_min=st.sampled_from([0, 30, 120, 600]),
          since=st.booleans())  # fmt: skip
    @traced
    def sync_clean(self, concurrency: int, lookback_min: int, since: bool) -> None:
        outcome, err, _report = self._sync(concurrency=concurrency, since=since,
                                          lookback=timedelta(minutes=lookback_min))  # fmt: skip
        assert outcome == "ok", f"a clean sync failed: {err!r}"
        _stat("syncs: clean")

    @precondition(lambda self: self.ready)
    @rule(kind=st.sampled_from(list(FAULTS)), seed=st.integers(0, 1000),
          concurrency=st.integers(1, 4))  # fmt: skip
    @traced
    def sync_with_faults(self, kind: str, seed: int, concurrency: int) -> None:
        outcome, err, _ = self._sync(faults=FAULTS[kind](seed), concurrency=concurrency)
        assert outcome == "ok" or isinstance(err, ApiUnavailable), f"{kind}: {err!r}"
        _stat(f"syncs: with {kind} faults")

    @precondition(lambda self: self.ready)
    @rule()
    @traced
    def sync_during_an_outage(self) -> None:
        outcome, err, _ = self._sync(faults=FaultConfig(outage=True))
        assert isinstance(err, ApiUnavailable), f"an outage did not fail the run: {outcome} {err!r}"
        _stat("syncs: during an outage")

    @precondition(lambda self: self.ready)
    @rule(mode=st.sampled_from(BAD_MODES), p=st.sampled_from([1.0, 0.3]), seed=st.integers(0, 99))
    @traced
    def sync_against_hostile_pages(self, mode: str, p: float, seed: int) -> None:
        faults = FaultConfig(seed=seed, bad_data=mode, p_bad_data=p)  # type: ignore[arg-type]
        outcome, err, _ = self._sync(faults=faults)
        # a hostile list page fails the run; garbled analytics only plan or narrow less (the
        # steady state then walks the whole lookback, by design)
        served = any(
            (e.fault or "").startswith("bad:") and e.path.endswith("/requests/by-endpoint")
            for e in self._last_log
        )
        if mode == "not_json":  # a 200 that is not JSON is retried like a proxy's error page
            assert outcome == "ok" or isinstance(err, ApiUnavailable), f"{mode}: {err!r}"
        elif mode == "repeat_cursor" and p < 1:  # a forged cursor may lead to the real next page
            assert outcome == "ok" or isinstance(err, BadDataError), f"{mode}: {err!r}"
        elif served:
            assert isinstance(err, BadDataError), (
                f"hostile {mode} pages: the run ended {outcome} {err!r}"
            )
        _stat("syncs: against hostile pages")

    @precondition(lambda self: self.ready)
    @rule(moves=st.integers(1, 3), finish=st.booleans())
    @traced
    def sync_while_rows_move(self, moves: int, finish: bool) -> None:
        """After the first page of up to ``moves`` windows, rows land inside that window (and
        maybe every running request ends): offset pages shift under the walk."""
        api, world = self.api, self.world
        left = [moves]
        orig = SimulatedAPI.respond.__get__(api)

        def respond(method: str, path: str, params: Any, auth: Any, *, now: Any = None) -> Any:
            answer = orig(method, path, params, auth, now=now)
            if (path == LIST and left[0] > 0 and "cursor" not in params and "request_id" not in params
                    and answer.page is not None and answer.page.get("has_more")):  # fmt: skip
                left[0] -= 1
                a, b = from_text(params["start"][0]), from_text(params["end"][0])
                mid = a + (b - a) / 2
                hours = max(0.01, (world.now() - mid).total_seconds() / 3600)
                ep = params["endpoint_id"][0]
                self.step += 1
                world.backdate(3, hours, endpoint_id=ep if ep in ENDPOINTS else ENDPOINTS[0],
                               spread_minutes=1, seed=self.step)  # fmt: skip
                if finish:
                    world.finish_all()
            return answer

        api.respond = respond  # type: ignore[method-assign]
        try:
            outcome, err, _ = self._sync(concurrency=2, moving=True)
        finally:
            api.respond = orig  # type: ignore[method-assign]
        assert outcome == "ok", f"a sync with moving rows failed: {err!r}"
        _stat("syncs: with rows moving under the pages")

    @precondition(lambda self: self.ready and self.requested is None)
    @rule(how=st.sampled_from(["killed", "outage"]), delay=st.floats(0.0, 0.12),
          hours=st.floats(1.0, 3.9))  # fmt: skip
    @traced
    def first_backfill_interrupted(self, how: str, delay: float, hours: float) -> None:
        """The very first sync asks for ``hours`` of history and ends early."""
        since = self.clock() - timedelta(hours=hours)
        if how == "killed":
            self._sync(kill_after=delay, since_at=since, faults=FaultConfig(latency=0.01))
        else:
            outcome, err, _ = self._sync(faults=FaultConfig(outage=True), since_at=since)
            assert isinstance(err, ApiUnavailable), f"an outage did not fail: {outcome} {err!r}"
        _stat(f"first backfills interrupted: {how}")

    @precondition(lambda self: self.ready)
    @rule(seconds=st.sampled_from([3 * 3600, 20 * 60, 30, -30, -10 * 60, -3 * 3600]))
    @traced
    def sync_with_the_clock_off(self, seconds: int) -> None:
        """This machine's clock is off by ``seconds`` (positive: ahead of the API's)."""
        outcome, err, report = self._sync(skew=seconds)
        assert outcome == "ok", f"a sync with the clock {seconds:+d}s off failed: {err!r}"
        assert report is not None and report.clock_skew is not None
        assert abs(report.clock_skew - seconds) <= 1, (
            f"clock {seconds:+d}s off measured as {report.clock_skew}"
        )
        _stat("syncs: with the clock off")

    @precondition(lambda self: self.ready)
    @rule(delay=st.floats(0.0, 0.12), concurrency=st.integers(1, 4))
    @traced
    def sync_killed(self, delay: float, concurrency: int) -> None:
        self._sync(kill_after=delay, concurrency=concurrency, faults=FaultConfig(latency=0.01))
        _stat("syncs: SIGKILLed")

    @invariant()
    def count_steps(self) -> None:
        _stat("steps")

    # -- the machinery ----------------------------------------------------------------

    def _snapshot(self) -> dict[str, dict[str, Any]]:
        view = self.world.server_view()
        for rid, it in view.items():
            self.versions.setdefault(rid, set()).add(_version(it))
        return view

    def _intervals(self) -> dict[str, list[tuple[datetime, datetime]]]:
        out: dict[str, list[tuple[datetime, datetime]]] = {t: [] for t in TARGETS}
        for t, a, b in query(self.db, "SELECT target, window_start, window_end FROM sync_windows"
                             " ORDER BY 1, 2"):  # fmt: skip
            out.setdefault(t, []).append((from_text(a), from_text(b)))
        return out

    def _sync(self, *, faults: FaultConfig | None = None, concurrency: int = 2,
              lookback: timedelta = timedelta(hours=2), since: bool = False,
              kill_after: float | None = None, moving: bool = False,
              since_at: datetime | None = None, skew: float = 0):  # type: ignore[no-untyped-def]  # fmt: skip
        self.api.faults = faults
        log_start = len(self.api.log)
        before = self._intervals() if self.db.exists() else {}
        start_view = self._snapshot()
        if since and since_at is None:
            since_at = T0 - timedelta(hours=5)
        opts = SyncOptions(targets=TARGETS, lookback=lookback, max_concurrency=concurrency,
                           since=since_at, cost=False)  # fmt: skip
        # what the run records as asked for (a first run without --since: the last day, by
        # its own clock; a minute of slack for where exactly it counts from)
        asked = since_at or (
            self.clock() + timedelta(seconds=skew) - opts.first_since + timedelta(minutes=1)
            if self.requested is None
            else None
        )
        if asked is not None:
            self.requested = min(self.requested or asked, asked)
        outcome, err, report = "failed", None, None
        if kill_after is None:
            try:
                report = self._run(opts, skew)
                outcome = "ok"
            except (ApiUnavailable, BadDataError) as e:
                err = e
        else:
            no_open_sqlite_files()
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    self._run(opts)
                    code = 0
                finally:
                    os._exit(code)
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            outcome = "ok" if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else "killed"
            _stat("kills that landed mid-run" if outcome == "killed" else "kills after the end")
        self.api.faults = None
        self._last_log = self.api.log[log_start:]
        _stat("faults injected", sum(1 for e in self._last_log if e.fault))
        if moving:  # the world changed during the run: what it served later counts too
            self._snapshot()
        self._check(
            before, start_view, clean=outcome == "ok" and not (report and report.windows.unstable)
        )
        return outcome, err, report

    def _run(self, opts: SyncOptions, skew: float = 0):  # type: ignore[no-untyped-def]
        # migrated by the first run of the sequence; later runs skip the (no-op) upgrade check
        db = str(self.db)
        store = (
            Store(make_engine(db), db)
            if query(self.db, "SELECT 1 FROM sync_runs LIMIT 1")
            else Store.open(db)
        )
        try:
            with httpx.Client(trust_env=False, verify=False) as http:
                client = FalClient(http, DEFAULT_KEY, base_url=self.api.base_url, retry=RETRY,
                                   pacer=Pacer(opts.max_concurrency), seed=1)  # fmt: skip
                off = timedelta(seconds=skew)
                clock = (lambda: self.clock() + off) if skew else self.clock
                return Syncer(store, client, opts, clock=clock, wait=lambda s: None).run()
        finally:
            store.close()

    def _check_versions(self) -> dict[str, dict[str, Any]]:
        integrity_ok(self.db)
        fts_ok(self.db)
        rows = mirror_rows(self.db)  # no request_id twice
        for rid, row in rows.items():
            assert _key(row) in self.versions.get(rid, ()), (
                f"stored row {rid} is no version the server ever served: {row}"
            )
        lost = self.ids - set(rows)
        assert not lost, f"{len(lost)} stored requests disappeared: {sorted(lost)[:3]}"
        self.ids = set(rows)
        return rows

    def _check(self, before, start_view, *, clean: bool) -> None:  # type: ignore[no-untyped-def]
        if not self.db.exists():
            return
        rows = self._check_versions()
        after = self._intervals()
        for t, ivs in self.completed.items():
            for a, b in ivs:
                assert any(x <= a and b <= y for x, y in after.get(t, [])), (
                    f"completed interval {t} [{a}, {b}) is no longer complete"
                )
        self.completed = after
        walked = {(e.params["endpoint_id"][0], e.params["start"][0], e.params["end"][0])
                  for e in self._last_log if e.path == LIST and "start" in e.params
                  and "cursor" not in e.params and "request_id" not in e.params}  # fmt: skip
        for target, a_text, b_text in walked:
            if target not in after:
                continue
            rng = (from_text(a_text), from_text(b_text))
            done_now = _intersect(rng, after[target])
            if clean:
                if not any(x <= rng[0] and rng[1] <= y for x, y in after[target]):
                    continue
                pieces = done_now
            else:  # only what this run newly recorded complete is its claim
                pieces = _subtract(done_now, before.get(target, []))
            for rid, it in start_view.items():
                if not covers(target, it["endpoint_id"]):
                    continue
                v = it.get(self.ff)
                if v is None:
                    continue
                ts = from_text(v)
                if any(p <= ts < q for p, q in pieces):
                    assert rid in rows, (
                        f"state is ahead of the data: {target} [{rng[0]}, {rng[1]}) was walked and "
                        f"is recorded complete, but {rid} ({self.ff} {v}), listed when the run "
                        f"started, is not stored"
                    )


def _scratch() -> str:
    return (
        "/dev/shm"
        if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
        else tempfile.gettempdir()
    )


EXAMPLES = int(os.environ.get("MIRROR_SM_EXAMPLES", "200"))
STEPS = int(os.environ.get("MIRROR_SM_STEPS", "8"))


@pytest.mark.timeout(1200)  # hundreds of sequences: longer than the suite's per-test limit
def test_state_machine_mixing_faults_kills_and_changes() -> None:
    with SimulatedAPI(generate_world(seed=0, now=T0, days=0.01)) as api:
        MirrorMachine.api = api
        STATS.clear()
        # No shrinking: kills and threads make replays differ, and the first failure is
        # reported with the steps that led to it (FIRST_FAILURE) anyway.
        cfg = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                       derandomize=True, database=None, print_blob=True,
                       phases=[Phase.explicit, Phase.reuse, Phase.generate],
                       suppress_health_check=list(HealthCheck))  # fmt: skip
        FIRST_FAILURE.clear()
        try:
            run_state_machine_as_test(MirrorMachine, settings=cfg)
        except BaseException as e:
            if FIRST_FAILURE:
                raise AssertionError(f"first failure: {FIRST_FAILURE[0]}") from e
            raise
        finally:
            for name, n in sorted(STATS.items()):
                count(f"state machine: {name}", n)
            print("state machine:", STATS)
    done = STATS.get("sequences ended by a clean run equal to the server", 0)
    assert done >= EXAMPLES, f"only {done} sequences ran to the end: {STATS}"
