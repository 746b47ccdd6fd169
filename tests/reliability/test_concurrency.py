"""One writer at a time; readers never hurt and are never hurt.

- 2, 5 and 10 syncs started at the same instant (real processes, released by one gate
  after their imports): one syncs, every other exits 75 with one line while it still runs;
  with ``--wait`` they all succeed, one after the other.
- The lock frees itself when its holder dies (SIGKILL), and holds while its holder is
  merely stopped (SIGSTOP).
- An idle reader holding a transaction open across a whole sync neither fails the sync nor
  loses its view; a competing writer that takes the write lock for a while only delays it.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from support.cli import assert_one_line, gated_syncs, run_cli, wait_for
from support.cli import mirror as mirror_subprocess
from support.compare import assert_mirror_equals, check_consistent, query, runs
from support.figures import count
from support.sim import env_for, listable, static_world, sync_args

from mirror.simulator import FaultConfig, SimulatedAPI

LIST = "/v1/serverless/requests/by-endpoint"


@pytest.fixture(scope="module")
def cc_world():
    return static_world(seed=61, hours=14, per_hour=40)


@pytest.mark.parametrize("n", [2, 5, 10])
def test_syncs_started_at_once_one_writes_the_rest_exit_75(tmp_path, cc_world, n: int) -> None:
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.25)) as api:
        env = env_for(api.base_url)
        procs = gated_syncs(n, lambda i: sync_args(db, "--since", "15h", "--max-concurrency", "1"),
                            env, tmp_path / "gate")  # fmt: skip
        done: dict[int, tuple[int, str, str]] = {}
        deadline = time.monotonic() + 120
        while len(done) < n - 1 and time.monotonic() < deadline:
            for i, p in enumerate(procs):
                if i not in done and p.poll() is not None:
                    out, err = p.communicate()
                    done[i] = (p.returncode, out, err)
            time.sleep(0.01)
        running = [i for i, p in enumerate(procs) if i not in done]
        assert len(running) == 1, (
            f"{n} syncs at once: expected one still writing while the others gave up, "
            f"but {len(running)} are running and exits so far are {[d[0] for d in done.values()]}"
        )
        (winner,) = running
        assert procs[winner].poll() is None, "the writer finished before the others gave up"
        for i, (code, out, err) in done.items():
            assert code == 75, f"sync {i} of {n}: exit {code}, expected 75: {err[-1500:]}"
            line = assert_one_line(err, "busy", context=f"sync {i} of {n}")
            assert f"pid {procs[winner].pid}" in line and "--wait" in line, line
            assert out == ""
        out, err = procs[winner].communicate(timeout=120)
        assert procs[winner].returncode == 0, f"the writer failed: {err[-1500:]}"
    count("syncs started at once", n)
    assert_mirror_equals(db, expected, context=f"{n} syncs at once")
    check_consistent(db, expected, cc_world.config.filter_field)
    assert [r[0] for r in runs(db)] == ["ok"], runs(db)


@pytest.mark.parametrize("n", [3, 6])
def test_syncs_started_at_once_with_wait_all_succeed(tmp_path, cc_world, n: int) -> None:
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.01)) as api:
        env = env_for(api.base_url)
        procs = gated_syncs(n, lambda i: sync_args(db, "--since", "15h", "--wait", "-q"), env,
                            tmp_path / "gate")  # fmt: skip
        results = [(*p.communicate(timeout=180), p.returncode) for p in procs]
    for i, (out, err, code) in enumerate(results):
        assert code == 0, f"sync {i} of {n} with --wait: exit {code}: {err[-1500:]}"
        assert (out, err) == ("", ""), f"sync {i}: -q printed {out!r} {err!r}"
    count("syncs started at once", n)
    assert [r[0] for r in runs(db)] == ["ok"] * n, runs(db)
    assert_mirror_equals(db, expected, context=f"{n} syncs with --wait")
    check_consistent(db, expected, cc_world.config.filter_field)


def test_lock_frees_itself_when_its_holder_is_sigkilled(tmp_path, cc_world) -> None:
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.2)) as api:
        env = env_for(api.base_url)
        args = sync_args(db, "--since", "15h", "--max-concurrency", "1")
        killed = run_cli(args, env, tmp_path / "out", kill_after=0.3, no_second_wait=True,
                         after=lambda: len(api.log) > 0)  # fmt: skip
        assert killed.code == -signal.SIGKILL, "the first sync was not killed mid-run"
        assert (tmp_path / "m.db.lock").exists()
        api.faults = None
        nxt = run_cli(args, env, tmp_path / "out", no_second_wait=True)
    assert nxt.code == 0, f"after its holder was SIGKILLed the lock still held: {nxt.stderr}"
    assert_mirror_equals(db, expected)


def test_a_stopped_holder_still_holds_the_lock(tmp_path, cc_world) -> None:
    """SIGSTOP is not death: the lock must hold, and the stopped sync finish after SIGCONT."""
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.05)) as api:
        env = env_for(api.base_url)
        holder = subprocess.Popen(
            [sys.executable, "-m", "mirror", *sync_args(db, "--since", "15h", "--max-concurrency", "1")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            wait_for(lambda: len(api.log) > 0, 60, "the first sync's first call")
            holder.send_signal(signal.SIGSTOP)
            other = run_cli(sync_args(db, "-e", "acme/upscaler"), env, tmp_path / "out")
            assert other.code == 75, f"a stopped holder lost its lock: {other.code} {other.stderr}"
            assert_one_line(other.stderr, "busy")
        finally:
            holder.send_signal(signal.SIGCONT)
        _out, err = holder.communicate(timeout=120)
    assert holder.returncode == 0, err[-1500:]
    assert_mirror_equals(db, expected)


def test_sigterm_while_waiting_for_the_lock_exits_130(tmp_path, cc_world) -> None:
    db = tmp_path / "m.db"
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.3)) as api:
        env = env_for(api.base_url)
        holder = threading.Thread(
            target=run_cli,
            args=(sync_args(db, "--since", "15h", "--max-concurrency", "1"), env, tmp_path / "o1"),
        )
        holder.start()
        wait_for(lambda: len(api.log) > 0, 60, "the holder's first call")
        waiter = run_cli(sync_args(db, "--wait"), env, tmp_path / "o2", kill_after=0.5,
                         sig=signal.SIGTERM)  # fmt: skip
        holder.join(120)
    assert waiter.code == 130, f"exit {waiter.code}: {waiter.stderr[-1500:]}"
    assert waiter.stderr.strip() == "mirror: interrupted; everything committed so far is kept"


# --------------------------------------------------------------------------- readers and writers
# (the sync runs as a real `python -m mirror` here, not forked: this process keeps SQLite
# connections open, and a forked child would inherit their per-process lock bookkeeping)


def test_idle_reader_in_a_transaction_neither_fails_the_sync_nor_loses_its_view(
    tmp_path, cc_world
) -> None:
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    with SimulatedAPI(cc_world) as api:
        env = env_for(api.base_url)
        first = run_cli(sync_args(db, "--since", "6h"), env, tmp_path / "out", no_second_wait=True)
        assert first.code == 0, first.stderr
        reader = sqlite3.connect(db, isolation_level=None)
        reader.execute("BEGIN")
        view = reader.execute("SELECT request_id, ended_at FROM requests ORDER BY 1").fetchall()
        n0 = len(view)
        # the sync that follows adds the other 9 hours while the reader sits in its snapshot
        o = mirror_subprocess(sync_args(db, "--since", "15h"), env)
        assert o.code == 0, f"the sync failed with a reader in a transaction: {o.stderr}"
        assert o.stderr == ""
        again = reader.execute("SELECT request_id, ended_at FROM requests ORDER BY 1").fetchall()
        assert again == view, "the reader's snapshot changed under it"
        reader.execute("COMMIT")
        (n1,) = reader.execute("SELECT count(*) FROM requests").fetchone()
        reader.close()
    assert n1 > n0, "the second sync added nothing: the scenario proves nothing"
    assert_mirror_equals(db, expected)
    check_consistent(db, expected, cc_world.config.filter_field)


def test_reader_polling_throughout_a_sync_always_sees_a_consistent_file(tmp_path, cc_world) -> None:
    """Each read transaction sees whole transactions: never a window complete without its rows."""
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    ff = cc_world.config.filter_field
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.02)) as api:
        env = env_for(api.base_url)
        seen: list[int] = []
        errors: list[str] = []
        stop = threading.Event()

        def poll() -> None:
            while not stop.is_set():
                if not db.exists() or not query(db, "SELECT 1 FROM requests LIMIT 1"):
                    time.sleep(0.005)
                    continue
                con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)
                try:
                    con.execute("BEGIN")
                    rows = {r[0] for r in con.execute("SELECT request_id FROM requests")}
                    wins = con.execute(
                        "SELECT target, window_start, window_end FROM sync_windows"
                    ).fetchall()
                    con.execute("COMMIT")
                except sqlite3.Error as e:
                    errors.append(str(e))
                    continue
                finally:
                    con.close()
                seen.append(len(rows))
                for target, a, b in wins:
                    need = [rid for rid, rec in expected.items()
                            if (rec["endpoint_id"] == target or rec["endpoint_id"].startswith(target + "/"))
                            and rec[ff] is not None and a <= rec[ff].strftime("%Y-%m-%dT%H:%M:%S.%fZ") < b]  # fmt: skip
                    lacking = [rid for rid in need if rid not in rows]
                    if lacking:
                        errors.append(
                            f"window {target} {a}..{b} complete, {len(lacking)} rows absent"
                        )

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        o = mirror_subprocess(sync_args(db, "--since", "15h", "--max-concurrency", "2"), env)
        stop.set()
        t.join(10)
    assert o.code == 0, o.stderr
    assert not errors, f"a reader saw an inconsistent or failing file: {errors[:3]}"
    assert len(set(seen)) >= 2, f"the reader saw only {set(seen)}: the scenario proves nothing"
    assert_mirror_equals(db, expected)


def test_competing_writer_only_delays_the_sync(tmp_path, cc_world) -> None:
    """Another program writes its own table in the file, holding the write lock 1.5 s at a
    time, all through the sync: the sync waits for it (busy timeout) and completes."""
    db = tmp_path / "m.db"
    expected = listable(cc_world)
    with SimulatedAPI(cc_world, faults=FaultConfig(latency=0.02)) as api:
        env = env_for(api.base_url)
        first = run_cli(sync_args(db, "--since", "2h"), env, tmp_path / "out", no_second_wait=True)
        assert first.code == 0, first.stderr
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 30000")
        con.execute("CREATE TABLE IF NOT EXISTS my_notes (n INTEGER)")
        stop = threading.Event()
        held = [0]

        def write() -> None:
            w = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
            w.execute("PRAGMA busy_timeout = 30000")
            while not stop.is_set():
                w.execute("BEGIN IMMEDIATE")
                w.execute("INSERT INTO my_notes VALUES (?)", (held[0],))
                held[0] += 1
                stop.wait(1.5)
                w.execute("COMMIT")
                time.sleep(0.05)
            w.close()

        t = threading.Thread(target=write, daemon=True)
        t.start()
        wait_for(lambda: held[0] > 0, 10, "the competing writer")
        o = mirror_subprocess(sync_args(db, "--since", "15h", "--max-concurrency", "2"), env)
        stop.set()
        t.join(10)
        (notes,) = con.execute("SELECT count(*) FROM my_notes").fetchone()
        con.close()
    assert o.code == 0, f"the sync failed next to a competing writer: {o.stderr[-1500:]}"
    assert held[0] >= 2, "the competing writer never held the lock during the sync"
    assert notes == held[0], "the competing writer's rows were lost"
    assert_mirror_equals(db, expected)
    check_consistent(db, expected, cc_world.config.filter_field)
