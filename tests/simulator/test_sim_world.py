"""The data model: visibility over time, filters, ordering, endpoint matching, caching.

Most tests use a handful of hand-made requests whose expected answer can be written out;
the cache tests compare the indexed, cached query with a brute-force reference model at
many instants while the clock moves and the world changes, because a stale cache would
be exactly the kind of bug that makes a mirror look wrong when it is right.
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from support.sim import NOW, at, reference_ids, req, rid

from mirror.simulator import ManualClock, Query, SimRequest, World, WorldConfig, generate_world
from mirror.simulator.world import FULL_VIEW, ItemView


def _world(clock: ManualClock, *reqs: SimRequest, **switches: Any) -> World:
    return World(WorldConfig(clock=clock, **switches), reqs)


def _ids(world: World, q: Query) -> list[str]:
    return [r.request_id for r in world.query(q)]


def _n(ids: list[str]) -> list[int]:
    """Request numbers back from ids, so expected orders read as lists of small ints."""
    return [int(i.rsplit("-", 1)[1], 16) for i in ids]


# -- visibility ---------------------------------------------------------------------------


def test_a_request_is_invisible_then_running_then_finished_then_billed(clock: ManualClock) -> None:
    r = req(1, sent=10, started=12, ended=30, billing=45, units=2.5)
    world = _world(clock, r)
    item_base = {
        "request_id": rid(1),
        "endpoint_id": "acme/app",
        "runner_id": r.runner_id,
        "started_at": at(12),
        "sent_at": at(10),
        "json_input": {"prompt": "prompt 1"},
    }
    running = {
        **item_base,
        "ended_at": None,
        "status_code": None,
        "duration": None,
        "json_output": None,
        "billable_units": None,
    }
    finished = {
        **item_base,
        "ended_at": at(30),
        "status_code": 200,
        "duration": 18.0,
        "json_output": {"n": 1},
    }
    expected = [
        (9, None),
        (10, running),
        (29, running),
        (30, {**finished, "billable_units": None}),
        (44, {**finished, "billable_units": None}),
        (45, {**finished, "billable_units": 2.5}),
    ]
    for seconds, item in expected:
        clock.set(at(seconds))
        shown = world.query(Query(("acme/app",), start=at(-60), end=at(100)), now=None)
        view = world.server_view()
        if item is None:
            assert view == {}, (
                f"at +{seconds}s the request should be invisible, server_view: {view}"
            )
            continue
        assert world.item(r, view=FULL_VIEW) == item, f"at +{seconds}s"
        assert [s.request_id for s in shown] == ([rid(1)] if item["ended_at"] else []), (
            f"at +{seconds}s: filtering on ended_at must {'' if item['ended_at'] else 'not '}list it"
        )


def test_unfinished_requests_hidden_when_switched_off(clock: ManualClock) -> None:
    world = _world(
        clock,
        req(1, sent=-20, ended=60),
        req(2, sent=-50),
        filter_field="sent_at",
        unfinished_visible=False,
    )
    q = Query(("acme/app",))
    assert _n(_ids(world, q)) == [2], "a running request must stay hidden until it ends"
    assert list(world.server_view()) == [rid(2)]
    clock.advance(61)
    assert _n(_ids(world, q)) == [1, 2], "once ended it must appear"


def test_late_recorded_request_appears_only_when_recorded(clock: ManualClock) -> None:
    world = _world(clock, req(1, sent=-3600, recorded=120))
    q = Query(("acme/app",))
    assert _ids(world, q) == [], "recorded in the future: invisible now"
    clock.advance(120)
    assert _ids(world, q) == [rid(1)], "visible from recorded_at on, inside its old window"


def test_requests_keep_utc_and_reject_naive_times(clock: ManualClock) -> None:
    paris = timezone(timedelta(hours=1))
    r = replace(
        req(1, sent=-100),
        sent_at=at(-100).astimezone(paris),
        recorded_at=at(-100).astimezone(paris),
    )
    world = _world(clock, r)
    stored = world.get(rid(1))
    assert stored is not None and stored.sent_at.tzinfo is UTC and stored.sent_at == at(-100)
    with pytest.raises(ValueError, match="naive"):
        world.add(replace(req(2, sent=-5), sent_at=datetime(2026, 11, 28, 11, 0)))
    with pytest.raises(ValueError, match="sent_at <= started_at <= ended_at"):
        world.add(req(3, sent=-5, started=-10))
    with pytest.raises(ValueError, match="duplicate"):
        world.add(req(1, sent=-7))


# -- filters --------------------------------------------------------------------------------


@pytest.mark.parametrize("filter_field", ["ended_at", "sent_at", "started_at"])
def test_window_is_half_open_on_the_configured_field(clock: ManualClock, filter_field: str) -> None:
    """`start <= field < end`: a row exactly at start is in, exactly at end is out."""
    offsets = {"sent_at": 0, "started_at": 1, "ended_at": 11}  # req() defaults: +1 s, +10 s
    base = -1000 - offsets[filter_field]
    world = _world(
        clock,
        req(1, sent=base - 1),  # field just before start
        req(2, sent=base),  # field exactly at start
        req(3, sent=base + 50),
        req(4, sent=base + 100 - 0.000001),  # last microsecond inside
        req(5, sent=base + 100),  # field exactly at end
        filter_field=filter_field,
    )
    q = Query(("acme/app",), start=at(-1000), end=at(-900))
    assert sorted(_n(_ids(world, q))) == [2, 3, 4], f"window on {filter_field}"


def test_status_classes_and_unfinished_never_match(clock: ManualClock) -> None:
    codes = {1: 200, 2: 201, 3: 299, 4: 400, 5: 422, 6: 499, 7: 500, 8: 504, 9: 302}
    reqs = [req(n, sent=-500 + n, status=code) for n, code in codes.items()]
    reqs.append(req(10, sent=-5, ended=100))  # running: null status
    world = _world(clock, *reqs, filter_field="sent_at")
    start, end = at(-600), at(0)
    for status, expected in [("success", [1, 2, 3]), ("user_error", [4, 5, 6]), ("error", [7, 8])]:
        q = Query(("acme/app",), start=start, end=end, status=status)  # type: ignore[arg-type]
        assert sorted(_n(_ids(world, q))) == expected, f"status={status}"
    assert sorted(_n(_ids(world, Query(("acme/app",), start=start, end=end)))) == list(range(1, 11))


def test_default_windows_are_relative_to_now(clock: ManualClock) -> None:
    world = _world(
        clock, req(1, sent=-23 * 3600), req(2, sent=-25 * 3600), req(3, sent=-80 * 86400)
    )
    assert _n(_ids(world, Query(("acme/app",)))) == [1], "default start is now - 24 h"
    for n in (1, 2, 3):
        got = _ids(world, Query(("acme/app",), request_id=rid(n)))
        assert got == [rid(n)], f"request_id widens the default start to 90 days (request {n})"
    assert _ids(world, Query(("acme/app",), request_id=rid(3), start=at(-86400))) == []
    assert _ids(world, Query(("acme/other",), request_id=rid(1))) == [], (
        "request_id still needs its endpoint"
    )
    clock.advance(3600 + 12)
    assert _ids(world, Query(("acme/app",))) == [], "the default window slid past request 1"


def test_bare_app_id_covers_routes_and_route_id_is_exact(clock: ManualClock) -> None:
    world = _world(
        clock,
        req(1, endpoint_id="acme/flux", sent=-100),
        req(2, endpoint_id="acme/flux/turbo", sent=-90),
        req(3, endpoint_id="acme/flux/turbo/v2", sent=-80),
        req(4, endpoint_id="acme/flux-lora", sent=-70),
        req(5, endpoint_id="acme/fluxx", sent=-60),
    )
    cases = {
        ("acme/flux",): [1, 2, 3],
        ("acme/flux/turbo",): [2],
        ("acme/flux-lora",): [4],
        ("acme/flux/turbo", "acme/fluxx"): [2, 5],
        ("acme/nothing",): [],
    }
    for endpoints, expected in cases.items():
        assert sorted(_n(_ids(world, Query(endpoints)))) == expected, f"endpoint_id={endpoints}"
    items = world.page(Query(("acme/flux",)), offset=0, limit=10, view=ItemView())[0]
    assert sorted(i["endpoint_id"] for i in items) == [
        "acme/flux",
        "acme/flux/turbo",
        "acme/flux/turbo/v2",
    ], "rows keep the route-level endpoint_id they were recorded under"


# -- ordering -----------------------------------------------------------------------------


def _ordering_world(clock: ManualClock, **switches: Any) -> World:
    return _world(
        clock,
        req(1, sent=-100, started=-99, ended=-50),  # duration 49
        req(2, sent=-100, started=-90, ended=-50),  # same ended_at as 1, duration 40
        req(3, sent=-100, started=-80, ended=-20),  # duration 60
        req(4, sent=-100, started=-60, ended=-20),  # same ended_at as 3, duration 40 (= 2)
        req(5, sent=-30, started=-29, ended=100),  # running: null ended_at and duration
        req(6, sent=-20, started=-19, ended=200),  # running
        req(7, sent=-100, started=-95, ended=-70),  # duration 25
        filter_field="sent_at",
        **switches,
    )


@pytest.mark.parametrize(
    ("direction", "nulls", "sort_by", "expected"),
    [
        ("desc", "last", "ended_at", [4, 3, 2, 1, 7, 6, 5]),
        ("desc", "first", "ended_at", [6, 5, 4, 3, 2, 1, 7]),
        ("asc", "last", "ended_at", [7, 1, 2, 3, 4, 5, 6]),
        ("asc", "first", "ended_at", [5, 6, 7, 1, 2, 3, 4]),
        ("desc", "last", "duration", [3, 1, 4, 2, 7, 6, 5]),
        ("asc", "last", "duration", [7, 2, 4, 1, 3, 5, 6]),
        ("asc", "first", "duration", [5, 6, 7, 2, 4, 1, 3]),
    ],
)
def test_order_is_total_with_request_id_breaking_ties(
    clock: ManualClock, direction: str, nulls: str, sort_by: str, expected: list[int]
) -> None:
    world = _ordering_world(clock, sort_direction=direction, nulls=nulls)
    got = _n(_ids(world, Query(("acme/app",), sort_by=sort_by)))  # type: ignore[arg-type]
    assert got == expected, f"{direction} nulls-{nulls} by {sort_by}"


def test_paging_slices_the_order_without_dup_or_gap(clock: ManualClock) -> None:
    world = _ordering_world(clock)
    q = Query(("acme/app",))
    pages = [world.page(q, offset=k * 3, limit=3, view=ItemView()) for k in range(4)]
    assert [[_n([i["request_id"]])[0] for i in items] for items, _ in pages] == [
        [4, 3, 2],
        [1, 7, 6],
        [5],
        [],
    ]
    assert [more for _, more in pages] == [True, True, False, False]


# -- the cache follows time and mutations ---------------------------------------------------


SWITCHES = [
    {"filter_field": f, "sort_direction": d, "nulls": n, "unfinished_visible": u}
    for f, d, n, u in itertools.product(
        ("ended_at", "sent_at", "started_at"), ("desc", "asc"), ("last", "first"), (True, False)
    )
]


@pytest.fixture(scope="module")
def busy_world_requests() -> list[SimRequest]:
    """A small generated history with late records, running requests and future arrivals."""
    world = generate_world(
        WorldConfig(clock=ManualClock(NOW)),
        seed=3,
        now=NOW,
        days=1.2,
        requests_per_hour=60,
        future_minutes=30,
        running=8,
        big_tie_group=0,
        late_fraction=0.05,
    )
    return list(world)


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: "-".join(str(v) for v in s.values()))
def test_cached_answers_equal_a_fresh_scan_as_time_passes(
    busy_world_requests: list[SimRequest], switches: dict[str, Any]
) -> None:
    clock = ManualClock(NOW - timedelta(minutes=20))
    world = World(WorldConfig(clock=clock, **switches), busy_world_requests)
    queries = [
        Query(("acme/flux-lora",)),  # sliding default window
        Query(("acme/flux-lora", "acme/whisper-v3"), start=NOW - timedelta(hours=3)),  # open end
        Query(("acme/upscaler",), start=NOW - timedelta(hours=2), end=NOW + timedelta(minutes=40)),
        Query(("acme/flux-lora",), start=NOW - timedelta(hours=4), end=NOW, sort_by="duration"),
        Query(
            ("acme/flux-lora",),
            status="success",
            start=NOW - timedelta(hours=4),
            end=NOW + timedelta(hours=1),
        ),
    ]
    steps = [0, 1, 7, 30, 61, 200, 599, 600, 601, 1800, 2400, 3700]  # seconds; events in between
    for step in steps:
        clock.set(NOW - timedelta(minutes=20) + timedelta(seconds=step))
        now = clock()
        for q in queries:
            got = _ids(world, q)
            again = _ids(world, q)  # served from the cache this time
            want = reference_ids(world, q, now)
            assert got == want, f"{switches} at {now}: {q} differs from a fresh scan"
            assert again == want, f"{switches} at {now}: the cached answer to {q} is stale"


def test_cache_follows_mutations(clock: ManualClock) -> None:
    world = _world(clock, req(1, sent=-100), req(2, sent=-50, ended=60), filter_field="sent_at")
    q = Query(("acme/app",), start=at(-3600), end=at(3600))
    assert _n(_ids(world, q)) == [1, 2]
    world.add(req(3, sent=-70))
    assert _n(_ids(world, q)) == [3, 1, 2], "an added request must show up at once"
    world.update(rid(1), ended_at=at(-10), duration=89.0)
    assert _n(_ids(world, q)) == [1, 3, 2], "an updated end time must re-sort"
    assert world.finish_all() == 1
    assert _n(_ids(world, q)) == [2, 1, 3], "finished requests sort by their new end"
    with pytest.raises(ValueError, match="cannot change"):
        world.update(rid(1), endpoint_id="acme/else")


def test_switches_can_be_flipped_on_a_live_world(clock: ManualClock) -> None:
    world = _ordering_world(clock)
    q = Query(("acme/app",))
    assert _n(_ids(world, q)) == [4, 3, 2, 1, 7, 6, 5]
    world.config = replace(world.config, sort_direction="asc", nulls="first")
    assert _n(_ids(world, q)) == [5, 6, 7, 1, 2, 3, 4]
    world.config = replace(world.config, filter_field="ended_at")
    assert _n(_ids(world, q)) == [7, 1, 2, 3, 4], "filtering on ended_at drops running rows"


# -- test-side mutations ----------------------------------------------------------------


def test_finish_all_and_fill_billing_reach_a_quiet_state(clock: ManualClock) -> None:
    world = _world(
        clock,
        req(1, sent=-100, billing=500),  # billing pending
        req(2, sent=-30, started=-20, ended=100),  # running
        req(3, sent=-10, started=30, ended=100),  # queued: not started yet
        req(4, sent=100),  # future: not running
        req(5, sent=-100, units=None),  # never billed
    )
    assert world.finish_all() == 2
    view = world.server_view()
    assert {
        k: (v["ended_at"], v["duration"], v["started_at"])
        for k, v in view.items()
        if k in (rid(2), rid(3))
    } == {
        rid(2): ("2026-11-28T12:00:00Z", 20.0, "2026-11-28T11:59:40Z"),
        rid(3): ("2026-11-28T12:00:00Z", 0.0, "2026-11-28T12:00:00Z"),
    }
    assert world.fill_billing() == 3, "requests 1, 2, 3 billed now; 4 already bills when it ends"
    view = world.server_view()
    assert {k: v["billable_units"] for k, v in view.items()} == {
        rid(1): 1.0,
        rid(2): 1.0,
        rid(3): 1.0,
        rid(5): None,
    }
    assert world.get(rid(4)).billing_at == at(111), "a future request is billed when it ends"  # type: ignore[union-attr]


def test_backdate_adds_late_arrivals_inside_old_windows(clock: ManualClock) -> None:
    world = _world(clock, req(1, sent=-7200), filter_field="sent_at")
    old_window = Query(("acme/flux-lora",), start=at(-4 * 3600), end=at(-2 * 3600))
    assert _ids(world, old_window) == []
    added = world.backdate(25, hours_ago=3, endpoint_id="acme/flux-lora", spread_minutes=20, seed=4)
    assert len(added) == 25 and {r.recorded_at for r in added} == {NOW}
    assert all(
        at(-3 * 3600 - 600) <= r.sent_at <= at(-3 * 3600 + 600) and r.ended_at <= NOW for r in added
    )
    assert sorted(_ids(world, old_window)) == sorted(r.request_id for r in added)
    again = world.backdate(25, hours_ago=3, endpoint_id="acme/flux-lora", seed=4)
    assert not {r.request_id for r in again} & {r.request_id for r in added}, (
        "a second backdate adds new ids"
    )
