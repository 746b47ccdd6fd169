"""Scale-out pieces on PostgreSQL, one at a time: target locks, a held target is left to
its holder (not a failure), and a writer transaction the server aborts on a deadlock is
run again."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime

import httpx
import sqlalchemy as sa
from support.cli import mirror as mirror_subprocess
from support.compare import assert_mirror_equals, db_query
from support.pg import pg_engine
from support.sim import IdentifyingAPI, env_for, listable, static_world

from mirror.api import FalClient
from mirror.records import Row
from mirror.simulator import FaultConfig
from mirror.store import Store
from mirror.sync import Rows, Syncer, SyncOptions, SyncReport, TargetLocks, target_lock_key

LIST = "/v1/serverless/requests/by-endpoint"
PINNED = -3191431495286835754  # blake2b-64 of the salted name, signed


def test_target_lock_keys_are_stable_distinct_64_bit() -> None:
    # the same on every machine and Python run (not hash()): a fixed value pins it
    assert target_lock_key("acme/flux-lora") == target_lock_key("acme/flux-lora")
    keys = {target_lock_key(f"acme/app-{i}") for i in range(10_000)}
    assert len(keys) == 10_000, "two of 10,000 target names share a lock key"
    assert all(-(2**63) <= k < 2**63 for k in keys), "a key does not fit a bigint"
    assert target_lock_key("acme/flux-lora") == PINNED, "the key of a target name changed: "
    "processes of different versions would no longer exclude each other"


def test_a_target_lock_is_exclusive_and_freed_on_close(pg_url) -> None:
    store = Store.open(pg_url)
    a, b = TargetLocks(store), TargetLocks(store)
    try:
        assert a.try_take("acme/x"), "a free target could not be taken"
        assert not b.try_take("acme/x"), "a target held by another session was taken again"
        assert b.try_take("acme/y"), "holding one target blocked another"
        a.close()
        assert b.try_take("acme/x"), "closing the holder did not free its target"
    finally:
        a.close()
        b.close()
        store.close()


def test_a_held_target_is_left_to_its_holder_and_the_rest_synced(tmp_path, pg_url) -> None:
    targets = ("acme/held", "acme/free")
    world = static_world(seed=3, hours=6, per_hour=60, endpoints=targets, running=0,
                         big_tie_group=0, late_fraction=0.0)  # fmt: skip
    expected = {r: v for r, v in listable(world).items() if v["endpoint_id"] == "acme/free"}
    store = Store.open(pg_url)
    holder = TargetLocks(store)  # "another machine" walking acme/held
    try:
        assert holder.try_take("acme/held")
        with IdentifyingAPI(world, faults=FaultConfig(latency=0.01)) as api:
            args = ["sync", "--db", pg_url, "--since", "7h", "--no-recheck"]
            run = mirror_subprocess(
                args + list(itertools.chain(*(("-e", t) for t in targets))), env_for(api.base_url)
            )
            asked = {c.endpoint_ids for c in api.calls if c.path == LIST}
    finally:
        holder.close()
        store.close()
    assert run.code == 0, f"a held target made the sync fail: exit {run.code}: {run.stderr}"
    assert asked == {("acme/free",)}, f"the held target was walked anyway: {asked}"
    assert "synced 1 target:" in run.stdout and (
        "1 target left to other mirror sync processes that were syncing it (acme/held)"
        in run.stdout
    ), f"the summary does not say what was left: {run.stdout!r}"
    assert_mirror_equals(pg_url, expected)
    windows = db_query(pg_url, "SELECT DISTINCT target FROM sync_windows")
    assert windows == [("acme/free",)], f"window state of a target never walked: {windows}"


def _row(rid: str, ended: str, code: int) -> Row:
    return Row(rid, "acme/app", None, "2026-01-01T00:00:00.000000Z", "2026-01-01T00:00:01.000000Z",
            ended, code, 1.0, None, None, None, "success" if code < 400 else "error")  # fmt: skip


def test_a_write_aborted_by_a_deadlock_is_run_again(pg_url) -> None:
    """Another session locks B, our writer's upsert locks A and waits for B, the other asks
    for A: PostgreSQL aborts one of the two. The other session's deadlock check is put off
    (deadlock_timeout 20 s), so the server aborts ours; the writer must run it again and
    count its rows once."""
    store = Store.open(pg_url)
    a_ended, b_ended = "2026-01-01T00:00:02.000000Z", "2026-01-01T00:00:03.000000Z"
    with store.engine.begin() as conn:
        store.upsert(conn, [_row("A", a_ended, 200), _row("B", b_ended, 200)],
                     payloads=True, billing=True, now="2026-01-01T00:00:04.000000Z")  # fmt: skip
    now = datetime(2026, 1, 2, tzinfo=UTC)
    # a client that is never called: this writer only writes what it is handed
    http = httpx.Client()
    client = FalClient(http, "unused-id:unused-secret", base_url="http://127.0.0.1:9/v1")
    syncer = Syncer(store, client, SyncOptions(targets=["acme/app"], cost=False))
    attempts: list[str] = []
    real_once = syncer._write_once

    def once(*args, **kw):  # type: ignore[no-untyped-def]
        try:
            out = real_once(*args, **kw)
        except sa.exc.DBAPIError as e:
            attempts.append(getattr(e.orig, "sqlstate", "?"))
            raise
        attempts.append("committed")
        return out

    syncer._write_once = once  # type: ignore[method-assign]

    b_locked = threading.Event()
    other_error: list[BaseException] = []
    other = pg_engine(pg_url)

    def other_session() -> None:
        try:
            with other.begin() as conn:
                conn.exec_driver_sql("SET LOCAL deadlock_timeout = '20s'")
                conn.exec_driver_sql("SELECT 1 FROM requests WHERE request_id = 'B' FOR UPDATE")
                b_locked.set()
                # until our writer waits for a lock (it holds A then)
                deadline = time.monotonic() + 30
                while not conn.exec_driver_sql(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
                ).scalar():
                    assert time.monotonic() < deadline, "our writer never waited for a lock"
                    time.sleep(0.02)
                conn.exec_driver_sql(
                    "UPDATE requests SET first_seen_at = '2000-01-01T00:00:00Z' "
                    "WHERE request_id = 'A'"
                )
        except BaseException as e:
            other_error.append(e)

    t = threading.Thread(target=other_session)
    t.start()
    try:
        assert b_locked.wait(30), "the other session never locked B"
        report = SyncReport(run_id=0, targets=["acme/app"], started_at=now)
        batch = [Rows("acme/app", [_row("A", a_ended, 500), _row("B", b_ended, 500)], True)]
        syncer._write(batch, report, now)  # type: ignore[arg-type]
    finally:
        t.join(60)
        other.dispose()
    assert not other_error, f"the other session failed, not ours: {other_error[0]!r}"
    assert attempts == ["40P01", "committed"], (
        f"expected one deadlock abort (40P01), then a commit; got {attempts}"
    )
    assert (report.inserted, report.updated) == (0, 2), (
        f"rows counted {report.inserted} new / {report.updated} updated, expected 0 / 2 once"
    )
    got = db_query(
        pg_url,
        "SELECT request_id, status_code, to_char(first_seen_at AT TIME ZONE 'UTC', 'YYYY') "
        "FROM requests ORDER BY 1",
    )
    # the other session's change to A committed, then ours was applied over it
    assert got == [("A", 500, "2000"), ("B", 500, "2026")], f"after the retry: {got}"
    store.close()
    http.close()
