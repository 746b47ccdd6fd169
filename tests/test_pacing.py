"""Adaptive concurrency: halves on 429 storms, learns the rate, grows back when healthy;\ncomes down to one call in flight while the writer is behind."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from mirror.api import FalClient, RetryPolicy
from mirror.pacing import Pacer
from mirror.simulator import FaultConfig, SimulatedAPI, WorldConfig, generate_world
from mirror.store import Store
from mirror.sync import SyncOptions, sync


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_halves_once_per_storm_pauses_then_grows_back():
    clock = FakeClock()
    p = Pacer(8, clock=clock)
    for _ in range(3):  # three workers refused at once: one signal, one halving
        p.acquire()
    for _ in range(3):
        p.release("throttled", pause=2.0)
    assert p.limit == 4 and p.pause_until == 2.0
    clock.t = 2.5
    p.acquire()
    p.release("throttled", pause=1.0)
    assert p.limit == 2
    clock.t = 4.0
    for _ in range(200):
        p.acquire()
        p.release("ok", latency=0.05)
    assert p.limit == 8, f"did not grow back to the cap: {p.history}"
    assert [lim for _, lim in p.history] == [8, 4, 2, 3, 4, 5, 6, 7, 8]


def test_slow_answers_shrink_the_limit_once_a_second():
    clock = FakeClock()
    p = Pacer(8, initial=6, clock=clock)
    p.acquire()
    p.release("ok", latency=0.05)
    for i in range(30):  # 30 slow answers within 3 seconds
        clock.t = i * 0.1
        p.acquire()
        p.release("ok", latency=5.0)
    assert [lim for _, lim in p.history] == [6, 5, 4, 3], p.history
    for _ in range(100):  # healthy again: grows back
        p.acquire()
        p.release("ok", latency=0.05)
    assert p.limit == 8


def test_a_consumer_behind_brings_the_limit_down_and_holds_growth():
    """The writer reports a full queue: one fewer call in flight per BACKLOG_CUT_INTERVAL,
    down to one, and healthy answers do not grow it back until the writer waits again."""
    from mirror.pacing import BACKLOG_CUT_INTERVAL

    clock = FakeClock()
    p = Pacer(8, initial=4, clock=clock)
    for t in (0.0, 0.1, 1, 1.5, 2, 2.5, 3, 10):  # in units of the interval
        clock.t = t * BACKLOG_CUT_INTERVAL
        p.backlog(behind=True)
    assert [lim for _, lim in p.history] == [4, 3, 2, 1], p.history
    for _ in range(100):
        p.acquire()
        p.release("ok", latency=0.01)
    assert p.limit == 1, "grew while the writer was behind"
    p.backlog(behind=False)  # the writer waits for pages
    for _ in range(100):
        p.acquire()
        p.release("ok", latency=0.01)
    assert [lim for _, lim in p.history] == [4, 3, 2, 1, 2, 3, 4, 5, 6, 7, 8], p.history


def test_at_most_limit_workers_take_their_turn_at_once():
    """A turn spans a worker's page from its call to handing it over: with the limit at
    two, the third and fourth workers wait until a turn ends or the limit grows."""
    p = Pacer(4, initial=2)
    inside: list[int] = []
    release = threading.Event()
    lock = threading.Lock()

    def worker(i: int) -> None:
        with p.turn():
            with lock:
                inside.append(i)
            release.wait(5)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    assert len(inside) == 2 and p.active == 2, f"{len(inside)} workers in their turn at once"
    with p._cond:
        p._set(3)  # the limit grows: one more worker goes in at once
    time.sleep(0.3)
    assert len(inside) == 3, f"{len(inside)} workers in after the limit grew to 3"
    release.set()
    for t in threads:
        t.join(5)
    assert sorted(inside) == [0, 1, 2, 3] and p.active == 0


def test_sync_with_a_slow_writer_walks_with_one_walker_at_a_time(tmp_path, monkeypatch):
    """An API that answers at once and a writer that cannot keep up: the limit comes down
    to one walker at a time (more would only compete with the writer), and every request is
    stored once all the same."""
    now = datetime.now(UTC)
    world = generate_world(WorldConfig(), seed=5, now=now, days=1, endpoints=["acme/a"],
                           requests_per_hour=800, dense_hour=None)  # fmt: skip
    store = Store.open(str(tmp_path / "m.db"))
    upsert = Store.upsert

    def slow_upsert(self, conn, rows, **kw):
        time.sleep(len(rows) / 10_000)  # 10,000 rows/s: ~0.3 s per batch of 32 pages
        return upsert(self, conn, rows, **kw)

    monkeypatch.setattr(Store, "upsert", slow_upsert)
    pacer = Pacer(4, initial=4)
    finished = {rid for rid, it in world.server_view(now).items() if it["ended_at"] is not None}
    with SimulatedAPI(world) as api, httpx.Client() as http:
        client = FalClient(http, "sim-key-id:sim-key-secret", base_url=api.base_url, pacer=pacer)
        report = sync(
            store,
            client,
            SyncOptions(
                targets=["acme/a"], since=now - timedelta(days=1), max_concurrency=4, cost=False
            ),
        )
    with store.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT request_id FROM requests")]
    store.close()
    limits = [lim for _, lim in pacer.history]
    assert limits[:4] == [4, 3, 2, 1], f"the limit did not come down to one: {pacer.history}"
    assert finished <= set(stored) and len(stored) == len(set(stored)) == report.inserted
    assert report.outcome == "ok"


def test_acquire_blocks_during_a_pause():
    clock = FakeClock()
    p = Pacer(2, clock=clock)
    p.acquire()
    p.release("throttled", pause=10.0)
    got = threading.Event()
    t = threading.Thread(target=lambda: (p.acquire(), got.set()))
    t.start()
    assert not got.wait(0.3), "a worker went ahead during the pause"
    clock.t = 11.0
    with p._cond:
        p._cond.notify_all()
    assert got.wait(2), "the pause never ended"
    t.join()


def test_sync_backs_off_under_a_429_storm_and_recovers(tmp_path):
    now = datetime.now(UTC)
    world = generate_world(
        WorldConfig(),
        seed=9,
        now=now,
        days=1,
        endpoints=["acme/a"],
        requests_per_hour=900,
        dense_hour=None,
    )
    storm = FaultConfig(seed=1, p_429=1.0, max_faults=12, latency=0.01)
    store = Store.open(str(tmp_path / "m.db"))
    pacer = Pacer(8, initial=8)
    finished = {rid for rid, it in world.server_view(now).items() if it["ended_at"] is not None}
    with SimulatedAPI(world, faults=storm) as api, httpx.Client() as http:
        client = FalClient(http, "sim-key-id:sim-key-secret", base_url=api.base_url, pacer=pacer,
                           retry=RetryPolicy(attempts=20, base=0.01, cap=0.05))  # fmt: skip
        report = sync(
            store,
            client,
            SyncOptions(
                targets=["acme/a"], since=now - timedelta(days=1), max_concurrency=8, cost=False
            ),
        )
        refused = sum(1 for e in api.log if e.status == 429)
    with store.engine.connect() as conn:
        stored = {r[0] for r in conn.exec_driver_sql("SELECT request_id FROM requests")}
    store.close()
    limits = [lim for _, lim in pacer.history]
    assert refused == 12, f"the storm should have refused 12 calls, saw {refused}"
    assert min(limits) <= 2, f"concurrency did not back off under the storm: {limits}"
    low = limits.index(min(limits))
    assert max(limits[low:]) > min(limits), f"concurrency never recovered after the storm: {limits}"
    assert finished <= stored, f"{len(finished - stored)} requests lost in the storm"
    assert report.outcome == "ok" and report.inserted == len(stored)


def test_learned_rate_caps_and_spaces_calls_after_a_429():
    clock = FakeClock()
    p = Pacer(8, clock=clock, learn_rate=True)
    for i in range(50):  # 100 answers a second for half a second
        clock.t = i * 0.01
        p.acquire()
        p.release("ok", latency=0.05)
    assert p.rate is None
    clock.t = 0.5
    p.acquire()
    p.release("throttled", pause=0.1)
    assert p.limit == 8, "with a learned rate a 429 cuts the rate, not the concurrency"
    assert p.rate is not None and 80 <= p.rate < 100, p.rate
    clock.t = 0.6
    p.acquire()
    first_slot = p._next_slot
    p.release("ok", latency=0.05)
    # the next call may start only one interval later: with the clock stopped, it waits
    got = threading.Event()
    t = threading.Thread(target=lambda: (p.acquire(), got.set()))
    t.start()
    assert not got.wait(0.3), "a call went ahead of the learned rate"
    clock.t = first_slot
    with p._cond:
        p._cond.notify_all()
    assert got.wait(2), "the spaced call was never admitted"
    t.join()
    before = p.rate
    for _ in range(20):
        p.release("ok", latency=0.05)
        p.in_flight += 1
    assert p.rate > before, "healthy answers raise the learned rate again"


def _steady_then_refused(*, told: bool) -> tuple[Pacer, FakeClock]:
    """A pacer after half a second of 100 answers a second, then a 429 at 0.5 s whose
    refused call waits 0.1 s (its backoff, or the server's ``Retry-After`` when ``told``)."""
    clock = FakeClock()
    p = Pacer(8, clock=clock, learn_rate=True)
    for i in range(50):
        clock.t = i * 0.01
        p.acquire()
        p.release("ok", latency=0.05)
    clock.t = 0.5
    p.acquire()
    p.release("throttled", pause=0.1, told=told)
    return p, clock


def _admitted_within(p: Pacer, seconds: float, *, retry: bool = False) -> bool:
    got = threading.Event()
    t = threading.Thread(target=lambda: (p.acquire(retry=retry), got.set()), daemon=True)
    t.start()
    return got.wait(seconds)


def test_after_a_429_the_others_pause_two_slots_not_the_refused_calls_backoff():
    """A 429 without ``Retry-After`` pauses the other calls ``PAUSE_SLOTS`` intervals of
    the rate just learned (a token bucket refills that much meanwhile), not the 0.1 s the
    refused call waits: the allowed rate is not left unused. A ``Retry-After`` pauses every
    call for its length."""
    from mirror.pacing import PAUSE_SLOTS

    p, clock = _steady_then_refused(told=False)
    assert p.pause_until == pytest.approx(0.5 + PAUSE_SLOTS / p.rate), (p.pause_until, p.rate)
    clock.t = p.pause_until + 1e-6
    p._next_slot = clock.t  # the rate's next slot is due: only the pause could hold a call
    assert _admitted_within(p, 2), "a new call waited for the refused call's backoff"

    told, clock = _steady_then_refused(told=True)
    assert told.pause_until == pytest.approx(0.6)
    clock.t = 0.59
    assert not _admitted_within(told, 0.3), "a call went ahead of the server's Retry-After"


def test_a_refused_call_is_admitted_before_new_calls_when_it_comes_back():
    """Once its backoff is over, the refused call takes the next admission, ahead of new
    calls already waiting for it, so it is not refused twice in a row."""
    p, clock = _steady_then_refused(told=False)
    clock.t = 0.61  # the pause and the backoff are over; the next slot is still ahead
    slot = p._next_slot = 0.62
    order: list[str] = []
    newcomer = threading.Thread(target=lambda: (p.acquire(), order.append("new")))
    newcomer.start()
    newcomer.join(0.2)
    retried = threading.Thread(target=lambda: (p.acquire(retry=True), order.append("retry")))
    retried.start()
    retried.join(0.2)
    assert order == [], "a call went ahead of the learned rate"
    clock.t = slot
    with p._cond:
        p._cond.notify_all()
    retried.join(2)
    assert order == ["retry"], "the refused call did not take the first admission"
    clock.t = p._next_slot
    with p._cond:
        p._cond.notify_all()
    newcomer.join(2)
    assert order == ["retry", "new"]


def test_slow_start_doubles_each_round_until_a_429_then_grows_by_one():
    """With ``slow_start`` (sync's pacer) the limit grows by one per healthy answer, from 4
    to the ceiling of 16 in 12 answers; a 429 ends that, and afterwards it grows by one per
    ``2 x limit`` healthy answers, as without it."""
    clock = FakeClock()
    p = Pacer(16, initial=4, clock=clock, slow_start=True)
    for _ in range(12):
        p.acquire()
        p.release("ok", latency=0.05)
    assert [lim for _, lim in p.history] == list(range(4, 17)), p.history
    p.acquire()
    p.release("throttled", pause=0.1)
    assert (p.limit, p.slow_start) == (8, False), f"a 429 did not halve it: {p.history}"
    clock.t = 1.0
    for _ in range(2 * 8 - 1):
        p.acquire()
        p.release("ok", latency=0.05)
    assert p.limit == 8, f"grew before 2 x 8 healthy answers after the 429: {p.history}"
    p.acquire()
    p.release("ok", latency=0.05)
    assert p.limit == 9, f"did not grow by one after 2 x 8 healthy answers: {p.history}"


def test_slow_start_ends_at_the_first_sign_of_strain():
    """A slow answer, or the consumer behind, ends the slow start as a 429 does; without
    ``slow_start`` (verify, media) the limit grows by one per ``2 x limit`` answers."""
    clock = FakeClock()
    slow = Pacer(16, initial=4, clock=clock, slow_start=True)
    slow.acquire()
    slow.release("ok", latency=0.05)
    slow.acquire()
    slow.release("ok", latency=5.0)  # over four times the fastest plus half a second
    behind = Pacer(16, initial=4, clock=clock, slow_start=True)
    behind.backlog(behind=True)
    behind.backlog(behind=False)
    plain = Pacer(16, initial=4, clock=clock)
    for p in (slow, behind, plain):
        for _ in range(5):  # fewer than 2 x limit: no growth without a slow start
            p.acquire()
            p.release("ok", latency=0.05)
    got = [(p.slow_start, p.limit) for p in (slow, behind, plain)]
    assert got == [(False, 4), (False, 3), (False, 4)], got


def test_a_429_during_the_slow_start_halves_the_limit_the_next_one_learns_the_rate():
    """A refusal while the slow start ramps up says the burst was too much, not what rate
    the API allows (the rate answered so far is the ramp's): it halves the limit. The next
    429, after healthy answers at a steady pace, caps the rate at 97% of the rate answered."""
    from mirror.pacing import RATE_CUT

    clock = FakeClock()
    p = Pacer(16, initial=4, clock=clock, learn_rate=True, slow_start=True)
    for i in range(12):
        clock.t = i * 0.01
        p.acquire()
        p.release("ok", latency=0.05)
    assert p.limit == 16, p.history
    p.acquire()
    p.release("throttled", pause=0.05)
    assert (p.limit, p.rate, p.slow_start) == (8, None, False), (p.history, p.rate)
    for i in range(80):  # 80 answers a second, one every 12.5 ms
        clock.t = 1.0 + i * 0.0125
        p.acquire()
        p.release("ok", latency=0.05)
    p.acquire()
    p.release("throttled", pause=0.05)
    assert p.rate == pytest.approx(RATE_CUT * 80, rel=0.05), p.rate
