"""Cutting the rest of a dense window mid-walk (mirror.cuts): where the cut falls under
either sort order, that no row is lost or read again beyond the cut's own second, the
estimate revised as pages arrive, the readings under which there is no cut, and the probe
of which timestamp the API's windows filter on."""

from __future__ import annotations

import itertools
import logging
import math
from datetime import timedelta, timezone

import httpx
import pytest
from support.sim import DEFAULT_KEY, NOW, req

from mirror.api import FalClient, RetryPolicy
from mirror.cuts import CUT_SLACK, MIN_PIECE_ROWS, NEAR_PIECES, FilterProbe, Reach, plan_cut
from mirror.records import Row
from mirror.simulator import ManualClock, SimulatedAPI, World, WorldConfig
from mirror.sync import estimate_parts
from mirror.timeparse import from_text, to_text
from mirror.walk import Lister, Notes, Stop
from mirror.windows import Window

START = NOW - timedelta(hours=10)
END = NOW
WINDOW = Window(START, END)
WALK_ROWS = 2_000


def row(n: int, ended: float | None, *, sent: float | None = None) -> Row:
    """Request ``n`` that ended ``ended`` seconds after START (None: unfinished)."""
    at = to_text(START + timedelta(seconds=ended)) if ended is not None else None
    sent_at = to_text(START + timedelta(seconds=sent if sent is not None else (ended or 0) - 5))
    return Row(f"r{n:06d}", "acme/app", None, sent_at, sent_at, at, 200 if at else None,
               5.0, None, None, None, "success" if at else "unfinished")  # fmt: skip


def world_rows() -> list[Row]:
    """A sparse window (one request every 2 minutes) hiding a dense stretch of 6,000 in
    20 minutes (5 a second) from 6 h on, with ties on whole seconds at the dense stretch's
    edges and inside it."""
    rows = [row(n, 60.0 + 120 * n) for n in range(300)]
    dense_from = 6 * 3600
    rows += [row(1000 + n, dense_from + n * 0.2) for n in range(6_000)]
    rows += [row(9000 + n, dense_from + 600.0) for n in range(40)]  # a tie group
    return rows


def server_order(rows: list[Row], order: str) -> list[Row]:
    """How the list call orders them: by ended_at, the request id breaking ties."""
    return sorted(rows, key=lambda r: (r.ended_at, r.request_id), reverse=order == "desc")


def first_cut(rows: list[Row], order: str):
    """Walk the window in pages of 100 until the first cut: (the cut, the rows read, pages)."""
    listed = server_order(rows, order)
    reach = Reach(WINDOW)
    read: list[Row] = []
    for i in range(0, len(listed), 100):
        page = listed[i : i + 100]
        read += page
        reach.add(page)
        cut = plan_cut(reach, WALK_ROWS)
        if cut is not None:
            return cut, read, i // 100 + 1
    return None, read, len(listed) // 100


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_the_rest_is_cut_without_gap_or_overlap_and_nothing_unread_is_outside_it(
    order: str,
) -> None:
    rows = world_rows()
    cut, read, pages = first_cut(rows, order)
    assert cut is not None, f"{order}: never cut although 6,000 requests lie in 20 minutes"
    assert pages >= 2, f"{order}: cut after {pages} pages, before the pages showed the density"
    # done and the pieces tile the window exactly, in whole seconds
    tiles = sorted([cut.done, *cut.rest], key=lambda w: w.start)
    bounds = [(w.start, w.end) for w in tiles]
    assert tiles[0].start == START and tiles[-1].end == END, f"{order}: {bounds}"
    gaps = [(a.end, b.start) for a, b in itertools.pairwise(tiles) if a.end != b.start]
    assert not gaps, f"{order}: gaps or overlaps between the cut's parts: {gaps}"
    assert all(w.start.microsecond == 0 == w.end.microsecond for w in tiles), bounds
    # every row not read lies in the rest; every row in the part called done was read
    read_ids = {r.request_id for r in read}

    def spans(ws: list[Window]) -> list[tuple[str, str]]:
        return [(to_text(w.start), to_text(w.end)) for w in ws]

    def inside(r: Row, ws: list[tuple[str, str]]) -> bool:
        return any(a <= (r.ended_at or "") < b for a, b in ws)

    rest, done = spans(cut.rest), spans([cut.done])

    lost = [r.request_id for r in rows if r.request_id not in read_ids and not inside(r, rest)]
    assert not lost, f"{order}: {len(lost)} rows neither read nor in the rest, e.g. {lost[:3]}"
    unread_done = [r.request_id for r in rows if inside(r, done) and r.request_id not in read_ids]
    assert not unread_done, f"{order}: the part marked done holds unread rows {unread_done[:3]}"
    # read again: only those of the cut's own second
    again = [r for r in read if inside(r, rest)]
    seconds = {r.ended_at[:19] for r in again}
    assert len(seconds) <= 1, f"{order}: rows of {sorted(seconds)} would be read twice"


@pytest.mark.parametrize("order", ["desc", "asc"])
def test_a_cut_on_a_tie_keeps_the_rows_of_that_second_not_yet_read(order: str) -> None:
    """The page ends inside a group of requests that ended in the same instant, on a whole
    second: the rest starts (desc: ends) so that the group's unread rows are in it."""
    tie = 5 * 3600.0
    rows = [row(n, tie + (-1 if order == "asc" else 1) * (1 + n * 0.05)) for n in range(150)]
    rows += [row(500 + n, tie) for n in range(150)]  # the tie, on a whole second
    reach = Reach(WINDOW)
    listed = server_order(rows, order)
    reach.add(listed[:100])
    reach.add(listed[100:200])  # ends 50 rows into the tie group
    cut = plan_cut(reach, 10)  # a small walk, so that these few rows are worth a cut
    assert cut is not None, "no cut although the rest looks like many walks"
    edge = START + timedelta(seconds=tie)
    if order == "desc":
        assert cut.done == Window(edge + timedelta(seconds=1), END), cut.done
        assert cut.rest[0].end == edge + timedelta(seconds=1), cut.rest[0]
    else:
        assert cut.done == Window(START, edge), cut.done
        assert cut.rest[0].start == edge, cut.rest[0]


def test_the_estimate_is_revised_as_pages_arrive_and_the_pieces_follow_it() -> None:
    """Sparse pages (one request a minute over 10 h) ask for no cut, nor does one dense page
    after them (the last two pages together are still sparse); the second dense page (one
    request a second) does, and the pieces next to the cut are sized to one walk at that
    density, the farther ones doubling."""
    reach = Reach(WINDOW)
    sparse = [row(n, 36_000 - 60.0 * (n + 1)) for n in range(200)]
    reach.add(sparse[:100])
    assert plan_cut(reach, WALK_ROWS) is None, "a sparse page asked for a cut"
    reach.add(sparse[100:])
    assert plan_cut(reach, WALK_ROWS) is None, "a second sparse page asked for a cut"
    edge = 36_000 - 60.0 * 200
    dense = [row(1000 + n, edge - 1.0 * (n + 1)) for n in range(200)]
    reach.add(dense[:100])
    assert plan_cut(reach, WALK_ROWS) is None, f"one dense page after sparse ones: {reach.rate}"
    reach.add(dense[100:])
    assert reach.rate == pytest.approx(200 / 199), reach.rate
    cut = plan_cut(reach, WALK_ROWS)
    assert cut is not None, "two dense pages with 6 hours left did not ask for a cut"
    lengths = [int(w.length.total_seconds()) for w in cut.rest]
    size = math.ceil(WALK_ROWS / (200 / 199))  # seconds of one walk at 200 requests in 199 s
    assert lengths[:NEAR_PIECES] == [size] * NEAR_PIECES, lengths
    far = lengths[NEAR_PIECES:]
    assert far[:-1] == [size * 2 ** (i + 1) for i in range(len(far) - 1)], lengths
    assert 0 < far[-1] <= size * 2 ** len(far), lengths
    left = int((cut.rest[0].end - START).total_seconds())
    assert cut.near == NEAR_PIECES and sum(lengths) == left, (cut.near, sum(lengths), left)


def test_timestamps_in_another_shape_read_as_the_stored_text_and_garbage_gives_no_cut() -> None:
    """``Reach`` compares the stored text (whose order is time order): rows whose
    ``ended_at`` comes in another RFC 3339 shape (an offset, other fractions) say the same
    as the stored shape, and one that is no time makes the pages unusable for a cut."""
    sparse = [row(n, 36_000 - 60.0 * (n + 1)) for n in range(100)]
    dense = [row(1000 + n, 36_000 - 6_000 - 1.0 * (n + 1)) for n in range(200)]

    def other_shape(r: Row) -> Row:
        assert r.ended_at is not None
        at = from_text(r.ended_at).astimezone(timezone(timedelta(hours=5, minutes=30)))
        return r._replace(ended_at=at.isoformat())

    stored, other = Reach(WINDOW), Reach(WINDOW)
    for page in (sparse, dense[:100], dense[100:]):
        stored.add(page)
        other.add([other_shape(r) for r in page])
        seen = (other.usable, other.order, other.edge, other.rate)
        assert seen == (stored.usable, stored.order, stored.edge, stored.rate), seen
    assert plan_cut(other, WALK_ROWS) == plan_cut(stored, WALK_ROWS) is not None, "cuts differ"
    broken = Reach(WINDOW)
    broken.add([*sparse[:50], sparse[50]._replace(ended_at="2026-13-45T00:00:00.000000Z")])
    assert not broken.usable and plan_cut(broken, WALK_ROWS) is None, "a non-time was cut on"


def test_a_page_of_one_tie_group_is_not_taken_for_a_dense_stretch() -> None:
    """A page whose 100 rows ended in the same instant, after a sparse page: the two pages
    together set the density, and no cut follows."""
    reach = Reach(WINDOW)
    reach.add([row(n, 36_000 - 60.0 * (n + 1)) for n in range(100)])
    tie = 36_000 - 60.0 * 101
    reach.add([row(500 + n, tie) for n in range(100)])
    assert plan_cut(reach, WALK_ROWS) is None, f"a tie group asked for a cut: {reach.rate}"


def test_a_first_page_of_one_tie_group_does_not_split_its_window() -> None:
    """Newest first, a page of 100 rows that ended in one second, then a sparse page: the
    first says nothing of the window (split by it, ten sparse hours would be 64 near-empty
    walks); with the second the estimate is about a walk, so the window is walked whole."""
    tie = [row(n, 35_990.0) for n in range(100)]
    sparse = [row(100 + n, 35_990.0 - 60.0 * (n + 1)) for n in range(100)]
    assert estimate_parts(tie, WINDOW, WALK_ROWS) is None, "a tie group alone sized the window"
    assert estimate_parts(tie + sparse, WINDOW, WALK_ROWS) == 1, "a sparse window was split"
    dense = [row(n, 35_990.0 - n) for n in range(100)]
    assert estimate_parts(dense, WINDOW, WALK_ROWS) > 1, "100 rows in 110 s of 10 h: not split"


def test_no_cut_when_what_is_left_is_about_one_walk() -> None:
    reach = Reach(WINDOW)
    edge = 36_000.0 - 300
    reach.add([row(n, 36_000 - 1.0 * (n + 1)) for n in range(100)])  # 1/s, ~10 h left
    assert plan_cut(reach, WALK_ROWS) is not None, "control: 10 h at 1/s is many walks"
    near_start = Window(START, START + timedelta(seconds=edge + 3_000))
    reach = Reach(near_start)
    # 1 a second with ~2,000 s left: CUT_SLACK walks or fewer
    rows = [row(n, 2 * WALK_ROWS * CUT_SLACK // 4 - n * 1.0) for n in range(100)]
    reach.add(rows)
    assert plan_cut(reach, WALK_ROWS) is None, "cut although what is left is about one walk"


@pytest.mark.parametrize(
    ("why", "rows"),
    [
        ("unfinished row listed", [row(n, 30_000 - n * 0.1) for n in range(99)] + [row(99, None)]),
        ("ended after the window", [row(0, 36_001.0)] + [row(n, 30_000 - n * 0.1) for n in range(1, 100)]),
        ("not in any order", [row(n, 30_000 - (n % 7) * 0.1 - n * 0.01) for n in range(100)]),
    ],
)  # fmt: skip
def test_no_cut_under_a_reading_the_pages_contradict(why: str, rows: list[Row]) -> None:
    reach = Reach(WINDOW)
    reach.add(rows)
    reach.add([row(500 + n, 20_000 - n * 0.1) for n in range(100)])
    assert not reach.usable, f"{why}: the pages were taken as sorted and filtered by ended_at"
    assert plan_cut(reach, WALK_ROWS) is None, f"{why}: cut anyway"


def test_pages_out_of_order_with_each_other_give_no_cut() -> None:
    reach = Reach(WINDOW)
    reach.add([row(n, 30_000 - n * 0.1) for n in range(100)])
    reach.add([row(500 + n, 31_000 - n * 0.1) for n in range(100)])  # goes back up
    assert not reach.usable and plan_cut(reach, WALK_ROWS) is None, reach.__dict__


@pytest.mark.parametrize(
    ("filter_field", "expected"), [("ended_at", True), ("sent_at", False), ("started_at", False)]
)
def test_the_probe_finds_which_time_windows_filter_on_in_two_calls_once(
    filter_field: str, expected: bool
) -> None:
    clock = ManualClock(NOW)
    # sent 100 s ago, started 1 s later, ended 10 s after that
    world = World(WorldConfig(clock=clock, filter_field=filter_field), [req(1, sent=-100)])
    calls: list[httpx.Request] = []
    with SimulatedAPI(world) as api:
        http = httpx.Client(event_hooks={"request": [calls.append]})
        client = FalClient(http, DEFAULT_KEY, base_url=api.base_url, retry=RetryPolicy(attempts=1))
        lister = Lister(client, payloads=False, billing=False, stop=Stop(),
                        notes=Notes(logging.getLogger("test")), without_billing="")  # fmt: skip
        probe = FilterProbe(lister)
        seen = [
            Row(
                "0190a000-0000-7000-8000-000000000001", "acme/app", None,
                to_text(NOW - timedelta(seconds=100)), to_text(NOW - timedelta(seconds=99)),
                to_text(NOW - timedelta(seconds=89)), 200, 10.0, None, None, None, "success",
            )
        ]  # fmt: skip
        first = probe.on_ended_at("acme/app", seen)
        second = probe.on_ended_at("acme/app", seen)
        http.close()
    assert (first, second) == (expected, expected), f"{filter_field}: {first}, {second}"
    asked = [(c.url.params["start"], c.url.params["end"]) for c in calls]
    assert len(asked) == 2, f"{filter_field}: the probe made {len(asked)} calls: {asked}"


def test_with_walkers_idle_a_rest_of_a_few_pages_is_shared_among_them() -> None:
    """About 1,300 rows left (13 pages, under two walks): one walker would page through
    them alone; with 15 walkers idle they are cut into pieces of MIN_PIECE_ROWS or more."""
    reach = Reach(WINDOW)
    reach.add([row(n, 1_300 - 1.0 * n) for n in range(100)])  # 1 a second, from 1,300 s
    reach.add([row(200 + n, 1_200 - 1.0 * n) for n in range(100)])
    assert plan_cut(reach, WALK_ROWS) is None, "cut with no walker idle"
    cut = plan_cut(reach, WALK_ROWS, idle=15)
    assert cut is not None, "not cut although 15 walkers are idle"
    lengths = [int(w.length.total_seconds()) for w in cut.rest]
    size = math.ceil(MIN_PIECE_ROWS / reach.rate)  # about 300 rows each
    assert lengths[:-1] == [size] * (len(lengths) - 1) and 0 < lengths[-1] <= size, lengths
    assert cut.done == Window(START + timedelta(seconds=1_102), END), cut.done
