"""SIGTERM (systemd, cron's kill) and SIGINT (Ctrl-C) from outside, at seeded random moments
and while the process is waiting on something slow.

Expected every time: exit 130 with the one line ``mirror: interrupted; everything committed
so far is kept`` (or exit 0 if the run had finished), the transaction in flight rolled back,
the run recorded as interrupted, the file consistent; and the process must not linger on a
stalled transfer or a long ``Retry-After`` (the test waits 60 s, half the default deadline).
"""

from __future__ import annotations

import random
import signal
from pathlib import Path
from typing import Any

import pytest
from support.cli import die, note, run_cli
from support.compare import assert_mirror_equals, check_consistent, runs
from support.figures import count
from support.sim import env_for, listable, static_world, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI

INTERRUPTED = "mirror: interrupted; everything committed so far is kept"


@pytest.fixture(scope="module")
def sig_world():
    return static_world(seed=71, hours=20, per_hour=50)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_at_random_moments(tmp_path, sig_world, sig: int) -> None:
    rng = random.Random(f"signals:{sig}")
    expected = listable(sig_world)
    ff = sig_world.config.filter_field
    db = tmp_path / "m.db"
    trials = 8
    with SimulatedAPI(sig_world, faults=FaultConfig(seed=3, latency=0.03, p_429=0.05,
                                                    retry_after=0.02, p_reset=0.03)) as api:  # fmt: skip
        env = env_for(api.base_url)
        args = sync_args(db, "--since", "21h", "--lookback", "1d", "--max-concurrency", "2")
        landed = 0
        for k in range(trials):
            seen = len(api.log)
            at = rng.uniform(0.0, 0.4)
            n_runs = len(runs(db))
            o = run_cli(args, env, tmp_path / "out", kill_after=at, sig=sig, no_second_wait=True,
                        after=lambda seen=seen: len(api.log) > seen)  # fmt: skip
            where = f"{signal.Signals(sig).name} trial {k} at {at:.3f}s after the first call"
            count(f"random {signal.Signals(sig).name} trials")
            if o.code == 0:
                assert o.stderr == "", f"{where}: {o.stderr[-1500:]}"
            else:
                landed += 1
                assert o.code == 130, f"{where}: exit {o.code}: {o.stderr[-1500:]}"
                assert o.stderr.strip() == INTERRUPTED, f"{where}: stderr {o.stderr[-1500:]!r}"
                outcome = [r[0] for r in runs(db)[n_runs:]]
                if outcome == ["ok"]:  # the signal came after the run had recorded its success
                    assert_mirror_equals(db, expected, context=f"{where}: recorded ok")
                else:
                    assert outcome == ["interrupted"], f"{where}: the run is recorded as {outcome}"
            check_consistent(db, expected, ff, context=where)
        api.faults = None
        final = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert final.code == 0, final.stderr
    assert_mirror_equals(db, expected)
    assert landed >= trials // 2, f"only {landed} of {trials} signals landed mid-run"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize(
    "waiting_on",
    ["stalled-body", "retry-after-100s", "silent-server", "start-of-run"],
)
def test_signal_while_waiting_on_something_slow(tmp_path, sig_world, waiting_on: str, sig) -> None:
    faults = {
        "stalled-body": FaultConfig(p_stall=1.0, stall_byte_delay=0.2),
        "retry-after-100s": FaultConfig(p_429=1.0, retry_after=100),
        "silent-server": FaultConfig(latency=30),
        "start-of-run": FaultConfig(),
    }[waiting_on]
    db = tmp_path / "m.db"
    with SimulatedAPI(sig_world, faults=faults) as api:
        # the default deadline (120 s) and retries: only the signal can end this run soon
        env = env_for(api.base_url)
        for k in ("MIRROR_REQUEST_DEADLINE", "MIRROR_RETRY_ATTEMPTS", "MIRROR_RETRY_CAP"):
            env.pop(k)
        if waiting_on == "start-of-run":  # during the wait for the next whole second
            for attempt in range(3):
                db = tmp_path / f"m{attempt}.db"
                o = run_cli(sync_args(db, "--since", "21h"), env, tmp_path / "out",
                            kill_after=0.05, sig=sig, timeout=60)  # fmt: skip
                # On a loaded machine this process can wake from its 50 ms sleep after the
                # whole run (~1 s): the signal then meets a finished command, which ignores
                # it by design and exits 0. That is where the signal landed, not what this
                # test is about: it is sent again to a new run.
                if not (o.signalled and o.code == 0 and o.stdout.startswith("synced")):
                    break
        elif waiting_on == "silent-server":  # (the server logs a call only once it answers)
            o = run_cli(sync_args(db, "--since", "21h", "--max-concurrency", "1"), env,
                        tmp_path / "out", kill_after=1.5, sig=sig, timeout=60,
                        no_second_wait=True)  # fmt: skip
        else:
            o = run_cli(sync_args(db, "--since", "21h", "--max-concurrency", "1"), env,
                        tmp_path / "out", kill_after=0.5, sig=sig, timeout=60,
                        after=lambda: len(api.log) > 0, no_second_wait=True)  # fmt: skip
    where = f"{signal.Signals(sig).name} while waiting on {waiting_on}"
    assert o.signalled, f"{where}: the run had ended before the signal ({o.code}: {o.stderr})"
    assert o.code == 130, f"{where}: exit {o.code}: {o.stderr[-1500:]}"
    assert o.stderr.strip() == INTERRUPTED, f"{where}: stderr {o.stderr[-1500:]!r}"
    check_consistent(db, listable(sig_world), sig_world.config.filter_field, context=where)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_with_mirror_debug_shows_the_traceback_and_still_exits_130(
    tmp_path, sig_world, sig: int
) -> None:
    """``MIRROR_DEBUG=1`` adds the traceback; the exit code and the last line stay the same."""

    def interrupt_first_write(notes: Path) -> None:
        from mirror.sync import Syncer

        write = Syncer._write

        def _write(self: Any, *a: Any, **kw: Any) -> None:
            note(notes, "point first write")
            die(sig)
            write(self, *a, **kw)

        Syncer._write = _write  # type: ignore[method-assign]

    db = tmp_path / "m.db"
    with SimulatedAPI(sig_world) as api:
        env = env_for(api.base_url, MIRROR_DEBUG="1")
        o = run_cli(sync_args(db, "--since", "21h"), env, tmp_path / "out",
                    patch=interrupt_first_write, no_second_wait=True)  # fmt: skip
    where = f"{signal.Signals(sig).name} with MIRROR_DEBUG=1"
    assert o.notes == ["point first write"], f"{where}: the run never wrote: {o.stderr[-1500:]}"
    assert o.code == 130, f"{where}: exit {o.code}, expected 130: {o.stderr[-1500:]}"
    lines = o.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "KeyboardInterrupt" in lines[-2], (
        f"{where}: expected the interrupt's traceback on stderr: {o.stderr[-1500:]!r}"
    )
    assert lines[-1] == INTERRUPTED, f"{where}: the last line is {lines[-1]!r}"
    assert runs(db) == [("interrupted", None)], f"{where}: the run is recorded as {runs(db)}"
    check_consistent(db, listable(sig_world), sig_world.config.filter_field, context=where)


def _signal_after(point: str, sig: int):  # type: ignore[no-untyped-def]
    """A patch: signal ourselves once the summary is printed, or once the command is over."""

    def patch(notes: Path) -> None:
        import click

        import mirror.cli

        if point == "after-summary":
            orig_echo = click.echo

            def echo(message: Any = None, *a: Any, **kw: Any) -> None:
                orig_echo(message, *a, **kw)
                if isinstance(message, str) and message.startswith("synced "):
                    note(notes, f"point {point}")
                    die(sig)

            click.echo = echo  # type: ignore[assignment]
        else:  # the command returned: only click's return path and the exit are left
            orig_invoke = mirror.cli.MirrorGroup.invoke

            def invoke(self: Any, ctx: Any) -> Any:
                rv = orig_invoke(self, ctx)
                note(notes, f"point {point}")
                die(sig)
                return rv

            mirror.cli.MirrorGroup.invoke = invoke  # type: ignore[method-assign]

    return patch


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("point", ["after-summary", "after-command"])
def test_signal_once_the_sync_is_over(tmp_path, sig_world, point: str, sig: int) -> None:
    """CI once saw a SIGTERM that landed after the summary was printed kill the process
    (exit -15): the sync's handler was gone and SIGTERM's default is to terminate."""
    db = tmp_path / "m.db"
    where = f"{signal.Signals(sig).name} {point}"
    with SimulatedAPI(sig_world) as api:
        o = run_cli(sync_args(db, "--since", "21h"), env_for(api.base_url), tmp_path / "out",
                    patch=_signal_after(point, sig), no_second_wait=True)  # fmt: skip
    assert o.notes == [f"point {point}"], f"{where}: never reached (exit {o.code}): {o.stderr}"
    assert o.stdout.startswith("synced "), f"{where}: stdout {o.stdout!r}"
    if point == "after-summary":  # still inside the command: Ctrl-C's meaning
        assert (o.code, o.stderr.strip()) == (130, INTERRUPTED), f"{where}: {o.code} {o.stderr!r}"
    else:  # the command is over: the signal cannot change how it ended
        assert (o.code, o.stderr) == (0, ""), f"{where}: exit {o.code}, stderr {o.stderr!r}"
    assert [r[0] for r in runs(db)] == ["ok"], f"{where}: runs {runs(db)}"
    assert_mirror_equals(db, listable(sig_world), context=where)


def _note_when_the_statement_starts(notes: Path) -> None:
    """A patch: note the moment `mirror sql` hands its statement to SQLite."""
    from mirror.readonly import ReadOnlyDatabase

    execute = ReadOnlyDatabase.execute

    def patched(self: Any, *a: Any, **kw: Any) -> Any:
        note(notes, "point statement")
        return execute(self, *a, **kw)

    ReadOnlyDatabase.execute = patched  # type: ignore[method-assign]


#: statements that run until stopped: many short VM steps, or few long ones (one printf call
#: of 100 MB is one step of half a second, and SQLite's progress handler, where Python code
#: runs, is reached only every ~1000 steps: more than a minute of work here)
RUNAWAYS = {
    "short-steps": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
    "SELECT max(i) FROM n",
    "long-calls": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200) "
    "SELECT sum(length(printf('%.*c', 100000000 + i, 'x'))) FROM n",
    "streaming-rows": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) "
    "SELECT i FROM n",
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("runaway", list(RUNAWAYS))
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_during_a_sql_statement_is_an_interrupt(tmp_path, sig: int, runaway: str) -> None:
    """Ctrl-C or SIGTERM while `mirror sql` runs a statement: exit 130 and the interrupt's
    line, as query and stats do, not the time limit's message (the limit is a minute off);
    and soon, not once the statement next reaches Python (the wait allows 20 s)."""
    from mirror.store import Store

    db = tmp_path / "m.db"
    Store.open(str(db)).close()
    out = tmp_path / "out"
    o = run_cli(["sql", RUNAWAYS[runaway], "--db", str(db), "--timeout", "60", "-f", "csv"],
                {"TZ": "UTC"},
                out, patch=_note_when_the_statement_starts, kill_after=0.3, sig=sig, timeout=20,
                after=lambda: any(p.read_text() for p in out.glob("*.notes")))  # fmt: skip
    where = f"{signal.Signals(sig).name} during mirror sql ({runaway})"
    assert o.signalled, f"{where}: the statement had ended before the signal ({o.code}: {o.stderr})"
    assert (o.code, o.stderr.strip()) == (130, INTERRUPTED), (
        f"{where}: exit {o.code}, stderr {o.stderr[-1500:]!r}"
    )
